"""Approximate search (FAISS IVF) beside exact search: measured recall, rebuilds, staleness, batch queries."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines.cli import main
from pipelines.infer.ann import build_ann, load_ann, recall_at
from pipelines.infer.exact import top_k
from pipelines.infer.index import Index


def clustered(n: int, dim: int = 32) -> torch.Tensor:
    """[n, dim] unit vectors around 64 fixed centres (as embeddings cluster), drawn in order: the first m of
    clustered(n) are clustered(m)."""
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(64, dim, generator=g), dim=1)
    rows = []
    for _ in range(n):
        rows.append(
            centres[int(torch.randint(0, 64, (1,), generator=g))] + 0.3 * torch.randn(dim, generator=g) / dim**0.5
        )
    return torch.nn.functional.normalize(torch.stack(rows), dim=1)


def clustered_index(root: Path, videos: int, clips_per_video: int, vectors: torch.Tensor) -> Index:
    """An index over the first videos x clips_per_video ``vectors``, in the layout Index.open gives."""
    dim = vectors.shape[1]
    clips = vectors[: videos * clips_per_video]
    per_video = clips.reshape(videos, clips_per_video, dim)
    return Index(
        root,
        {},
        videos=[{"path": f"v{i}.mp4", "clips": [[0, 1]] * clips_per_video} for i in range(videos)],
        video_vectors=torch.nn.functional.normalize(per_video.mean(1), dim=1),
        clip_vectors=clips,
        clip_video=torch.arange(videos).repeat_interleave(clips_per_video),
        clip_times=torch.zeros(videos * clips_per_video, 2),
    )


def test_ivf_recall_is_measured_and_holds_on_other_queries(tmp_path):
    vectors = clustered(21_300)
    index = clustered_index(tmp_path, 2_000, 10, vectors)
    record = build_ann(index, tmp_path)
    clips = record["galleries"]["clips"]
    assert clips["vectors"] == 20_000 and clips["nlist"] > 100 and clips["recall_at_10"] >= 0.95
    ann, warning = load_ann(index, tmp_path)
    assert warning is None and set(ann) == {"clips", "videos"}
    queries = vectors[21_000:]  # from the same distribution, not in the gallery
    _, exact = top_k(queries, index.clip_vectors, 10)
    scores, found = ann["clips"].search(queries, 10)
    assert recall_at(found.numpy(), exact.numpy()) >= 0.9
    assert torch.all(scores[:, :-1] >= scores[:, 1:])  # descending, as exact search returns them

    bigger = clustered_index(tmp_path, 2_100, 10, vectors)  # the index grew
    assert load_ann(bigger, tmp_path)[1].startswith(f"{tmp_path / 'ann'} was built for other contents")
    rebuilt = build_ann(bigger, tmp_path)["galleries"]["clips"]
    assert rebuilt["reused_lists"] and rebuilt["vectors"] == 21_000 and rebuilt["nlist"] == clips["nlist"]


def test_index_and_search_with_ann(corpus, models, tmp_path, capsys):
    out = tmp_path / "ix"
    videos = [str(corpus / "videos" / f"video000{i}.mp4") for i in range(4)]
    ckpt = ["--ckpt", str(models["retrieval"])]
    assert main(["index", "--videos", *videos[:3], "--out", str(out), "--ann", "--json", *ckpt]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ann"]["galleries"]["videos"]["vectors"] == 3
    assert main(["search", str(out), "a red circle moves up", "--json", "--level", "clip"]) == 0
    with_ann = json.loads(capsys.readouterr().out)
    (out / "ann" / "ann.json").rename(out / "ann" / "off.json")
    assert main(["search", str(out), "a red circle moves up", "--json", "--level", "clip"]) == 0
    exact = json.loads(capsys.readouterr().out)
    assert with_ann["level"] == "clip" and len(with_ann["hits"]) == len(exact["hits"]) > 0
    for a, e in zip(with_ann["hits"], exact["hits"]):  # a handful of clips: the IVF probes every list
        assert (a["video"], a["clip"]) == (e["video"], e["clip"]) and abs(a["score"] - e["score"]) <= 2e-4
        assert a["score"] == a["clip_score"]
    (out / "ann" / "off.json").rename(out / "ann" / "ann.json")
    assert main(["index", "--videos", *videos, "--out", str(out), "--json", *ckpt]) == 0  # grows: rebuilt by itself
    assert json.loads(capsys.readouterr().out)["ann"]["galleries"]["videos"]["vectors"] == 4
    index = Index.open(out)
    assert load_ann(index, out)[1] is None
    record = json.loads((out / "ann" / "ann.json").read_text())
    (out / "ann" / "ann.json").write_text(json.dumps({**record, "content": "something else"}))
    assert main(["search", str(out), "a red circle"]) == 0
    assert "searching exactly" in capsys.readouterr().err


def test_a_file_of_queries_is_one_call(index, tmp_path, capsys):
    queries = ["a red circle moves up", "a blue square", "東京の赤い円"]
    (tmp_path / "q.txt").write_text("\n".join(queries) + "\n\n", encoding="utf-8")
    assert main(["search", str(index[0]), "--queries", str(tmp_path / "q.txt"), "--top-k", "3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["query"] for r in lines] == queries
    for query, batched in zip(queries, lines):
        assert main(["search", str(index[0]), query, "--top-k", "3", "--json"]) == 0
        single = json.loads(capsys.readouterr().out)["hits"]
        assert [(h["video"], h["clip"]) for h in single] == [(h["video"], h["clip"]) for h in batched["hits"]]
        assert all(abs(a["score"] - b["score"]) <= 2e-4 for a, b in zip(single, batched["hits"]))  # batch padding


@pytest.mark.slow
def test_the_search_benchmark_runs(tmp_path):
    """`make bench-search` at a toy size: it prints its table and writes the JSON the docs quote."""
    done = subprocess.run([sys.executable, "benchmarks/bench_search.py", "--sizes", "3000", "--dim", "16",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert row["clips"] == 3000 and row["ivf_recall10"] >= 0.9 and row["ivf_build_recall10"] >= 0.95
