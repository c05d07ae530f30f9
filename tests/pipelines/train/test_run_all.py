"""make train's driver on tiny prepared data: the table, the QA probe column, reusing earlier runs."""

import json

from pipelines.train import run_all
from tests.pipelines.train.test_tasks import recipe, shards  # noqa: F401 (a fixture)


def test_run_all_reuses_the_retrieval_runs_of_an_earlier_call(tmp_path, shards, monkeypatch, capsys):  # noqa: F811
    for task in ("retrieval", "qa"):
        (tmp_path / task).mkdir()
        monkeypatch.setitem(run_all.RECIPES, task, recipe(tmp_path / task, shards, task))
    root = tmp_path / "all"
    # mean pooling: run_all copies only HSA models to runs/default (not touched by this test)
    common = ["--mixers", "mean", "--max-epochs", "1", "--root", str(root)]
    assert run_all.main(["--tasks", "retrieval", *common]) == 0
    first = json.loads((root / "results.json").read_text())["results"]
    assert [(r["task"], r["mixer"]) for r in first] == [("retrieval", "mean")]
    assert run_all.main(["--tasks", "qa", *common]) == 0
    out = capsys.readouterr().out
    assert "(the retrieval rows are an earlier run's" in out
    assert "| qa | acc |" in out and "acc_other_video" in out and "| retrieval | t2v_R@1 |" in out
    summary = json.loads((root / "results.json").read_text())
    assert [(r["task"], r["mixer"]) for r in summary["results"]] == [("retrieval", "mean"), ("qa", "mean")]
    assert summary["results"][0] == first[0] and summary["earlier_seconds"] == first[0]["seconds"]
    qa = summary["results"][1]
    assert 0.0 <= qa["metrics"]["acc_other_video"] <= 1.0
    assert any(k.startswith("acc_other_video_") for k in qa["metrics"])  # per question type too
    config = next((tmp_path / "qa").rglob("config.yaml")).read_text()  # where the recipe logs
    assert first[0]["best_checkpoint"] in config  # QA started from the earlier retrieval model
