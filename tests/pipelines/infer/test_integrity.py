"""What an index reads back is checked: records against their shards, one model and one featurization per
index, one entry per video, the model that ``index.json`` names, and every input a run does not take."""

import copy
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from data_prep.clips import WindowConfig
from data_prep.featurize import VideoConfig
from data_prep.shards import file_sha256
from pipelines.cli import main
from pipelines.infer.index import Index, IndexMismatch, build_index
from pipelines.infer.search import Searcher
from tests.pipelines.infer.conftest import FEATURIZATION
from tests.pipelines.infer.test_reliability import Payload, _altered

VIDEOS = 5  # the corpus's good videos (and empty.mp4, notes.mp4 that fail)


def _build(corpus, models, out, **kw):
    checkpoint = str(models["retrieval"])
    return build_index([corpus / "videos"], out, checkpoint=checkpoint, batch_size=2, progress=False, **kw)


@pytest.fixture
def built(corpus, models, index, tmp_path):
    """A private copy of the shared index."""
    out = tmp_path / "ix"
    shutil.copytree(index[0], out)
    return out


def _records(out: Path) -> list[Path]:
    return sorted(p for p in (out / "shards").glob("*.json"))


def _with_videos(out: Path) -> Path:
    return next(p for p in _records(out) if len(json.loads(p.read_text())["videos"]) == 2)


def _vectors(index: Index) -> dict[str, torch.Tensor]:
    return {v["path"]: index.video_vectors[i] for i, v in enumerate(index.videos)}


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda r: r["videos"].pop(0), "the record's 1 video paths are not the shard's 2"),
        (lambda r: r["videos"].reverse(), "the record's 2 video paths are not the shard's 2"),
        (lambda r: r.update(model="RetrievalModule:0123456789abcdef"), "written by model RetrievalModule:0123"),
        (lambda r: r.update(featurization="0" * 16), "written with featurization 0000"),
    ],
    ids=["a video removed", "two paths swapped", "another model", "another featurization"],
)
def test_an_edited_record_is_set_aside_and_its_videos_indexed_again(corpus, models, index, built, edit, problem):
    expected = _vectors(Index.open(index[0]))
    record = _with_videos(built)
    content = json.loads(record.read_text())
    edit(content)
    record.write_text(json.dumps(content))
    damaged = Index.open(built)
    assert any(problem in c and record.with_suffix(".pt").name in c for c in damaged.corrupt), damaged.corrupt
    assert len(damaged.videos) == VIDEOS - 2  # no video has another's vectors
    for path, vector in _vectors(damaged).items():
        assert torch.equal(vector, expected[path])
    report = _build(corpus, models, built)
    assert len(report["corrupt_set_aside"]) == 1 and report["written"]["videos"] == 2
    redone = _vectors(Index.open(built))
    assert redone.keys() == expected.keys()
    for path, vector in redone.items():
        assert torch.allclose(vector, expected[path], atol=1e-5)


def test_a_record_that_is_not_json_is_named_and_the_rest_searched(built, capsys):
    record = _with_videos(built)
    record.write_text("{ not json")
    assert main(["search", str(built), "a red circle", "--json"]) == 0
    captured = capsys.readouterr()
    assert f"{record.with_suffix('.pt').name}: {record}: not a readable shard record" in captured.err
    assert len(json.loads(captured.out)["hits"]) == VIDEOS - 2


def test_an_index_json_that_is_not_json_is_named(built, capsys):
    (built / "index.json").write_text("garbage")
    assert main(["search", str(built), "a red circle"]) == 2
    err = capsys.readouterr().err
    assert "index.json: not a readable index manifest" in err and "Traceback" not in err


def test_copied_records_give_no_duplicate_hits(built):
    for record in _records(built):
        for suffix in (".pt", ".json"):
            shutil.copy(record.with_suffix(suffix), record.with_name(f"copy-{record.stem}{suffix}"))
    index = Index.open(built)
    paths = [v["path"] for v in index.videos]
    assert len(paths) == len(set(paths)) == VIDEOS
    hits = Searcher(str(built)).search("a red circle", k=20)["hits"]
    assert len(hits) == VIDEOS and len({h["video"] for h in hits}) == VIDEOS


def test_one_featurization_per_index(corpus, models, built, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    config = copy.deepcopy(FEATURIZATION)
    config["video"] = asdict(VideoConfig(clips="windows", windows=WindowConfig(0.7, min_clip_seconds=0.3),
                                         frames_per_clip=2))  # fmt: skip
    (other / "manifest.json").write_text(json.dumps({"config": config, "shards": []}))
    with pytest.raises(IndexMismatch, match="featurized with .*; this run's featurization is .* one featurization"):
        _build(corpus, models, built, prepared=str(other))


def test_an_index_without_its_manifest_takes_no_other_model(corpus, models, built):
    (built / "index.json").unlink()
    with pytest.raises(IndexMismatch, match="holds shards but no index.json"):
        build_index([corpus / "videos"], built, checkpoint=str(models["other"]), progress=False)


def test_runs_over_failing_files_keep_one_failures_record(corpus, models, tmp_path):
    out = tmp_path / "ix"
    _build(corpus, models, out)
    for _ in range(3):
        report = _build(corpus, models, out)
        assert sorted(Path(p).name for p in report["failed"]) == ["empty.mp4", "notes.mp4"]
    records = [json.loads(p.read_text()) for p in _records(out)]
    only_failures = [r for r in records if not r["videos"] and not r.get("removed")]
    assert len(only_failures) == 1 and len(only_failures[0]["failures"]) == 2
    assert len(Index.open(out).failures) == 2


def test_every_skipped_input_is_reported_once(corpus, models, tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(corpus / "videos" / "video0000.mp4", folder / "good.mp4")
    shutil.copy(corpus / "videos" / "video0001.mp4", folder / "no_extension")
    os.symlink(tmp_path / "nowhere.mp4", folder / "dangling.mp4")
    (folder / "folder.mp4").mkdir()
    argv = ["index", "--videos", str(folder), "--out", str(tmp_path / "ix"), "--ckpt", str(models["retrieval"])]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for name, reason in [
        ("no_extension", "not a video file extension (none;"),
        ("dangling.mp4", f"is a dangling symlink (to '{tmp_path / 'nowhere.mp4'}')"),
        ("folder.mp4", "is a directory, not a video file"),
    ]:
        assert out.count(f"skipped {folder / name}: {reason}") == 1, out
    assert "1 videos (" in out


def test_search_loads_only_the_checkpoint_that_built_the_index(corpus, models, tmp_path, capsys):
    """index.json names a checkpoint; search loads it only when its sha256 is the recorded one, and says
    which file it loads. A payload checkpoint put there is refused before it is read."""
    checkpoint = tmp_path / "model.ckpt"
    shutil.copy(models["retrieval"], checkpoint)
    out = tmp_path / "ix"
    build_index([corpus / "videos" / "video0000.mp4"], out, checkpoint=str(checkpoint), progress=False)
    assert main(["search", str(out), "a red circle"]) == 0
    assert f"model: {Index.open(out).version} from {checkpoint}" in capsys.readouterr().err
    marker = tmp_path / "ran"
    _altered(models["retrieval"], checkpoint, extra=Payload(marker))
    assert main(["search", str(out), "a red circle"]) == 2
    err = capsys.readouterr().err
    assert f"the index's model file {checkpoint} has changed since the index was built" in err
    assert not marker.exists()
    manifest = json.loads((out / "index.json").read_text())  # a crafted index.json vouching for the payload
    manifest["model"]["sha256"] = file_sha256(checkpoint)
    (out / "index.json").write_text(json.dumps(manifest))
    assert main(["search", str(out), "a red circle"]) == 2
    assert "holds io.open, not only tensors and plain values; refused" in capsys.readouterr().err
    assert not marker.exists()


def test_an_index_from_before_the_later_options_is_still_this_featurization(corpus, models, built):
    """An index written before options such as ``shots.detector`` existed records no value for them; at
    their defaults they do not count, so the same model keeps adding to it."""
    manifest = json.loads((built / "index.json").read_text())
    featurization = manifest["featurization"]
    for part, key in [(featurization["video"]["shots"], "detector"), (featurization["video"]["shots"],
                      "adaptive_threshold"), (featurization["frames"], "output"), (featurization["frames"],
                      "partial_weights")]:  # fmt: skip
        part.pop(key)
    (built / "index.json").write_text(json.dumps(manifest))
    assert Index.open(built).corrupt == []
    report = _build(corpus, models, built)
    assert report["corrupt_set_aside"] == [] and report["already_indexed"] == VIDEOS
