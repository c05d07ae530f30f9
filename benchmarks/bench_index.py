"""Batch-inference benchmark: indexing throughput per stage, and exact search latency at scale.

1. Indexing: ``mmhsa index`` (Lightning predict, the real featurization of the checkpoint: decode,
   TransNetV2 shots, EfficientNet-Lite0 patches, the HSA dual encoder) over ``--videos`` videos of the
   embedded corpus; videos/min, frames/s per stage, and the model's share (the rest of the wall time).
2. Search: an index of synthetic unit embeddings (10k and 100k clips, 128-d, 8 clips per video),
   exact top-10 by chunked matrix products (:func:`pipelines.infer.exact.top_k`) against the plain
   alternative in the same run (the full score matrix, then a full sort); plus the latency of one real
   query end to end on the index of step 1 (query text -> MiniLM -> HSA text tower -> search).

    python benchmarks/bench_index.py [--videos 100] [--ckpt runs/default/retrieval.ckpt] [--prepared DIR]

Prints tables and writes ``runs/bench_index/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.infer.index import build_index  # noqa: E402
from pipelines.infer.search import Searcher, top_k  # noqa: E402


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_indexing(videos: list[Path], ckpt: str | None, prepared: str | None, batch_size: int) -> tuple[dict, str]:
    root = Path(tempfile.mkdtemp(prefix="mmhsa-bench-index-"))
    listing = root / "videos.txt"
    listing.write_text("\n".join(str(v.resolve()) for v in videos))
    report = build_index(
        [listing], root / "ix", checkpoint=ckpt, prepared=prepared, batch_size=batch_size, progress=False
    )
    stage_seconds = sum(r["seconds"] for r in report["stages"])
    frames = (
        next(r for r in report["stages"] if r["stage"] == "shots")["count"]
        or next(r for r in report["stages"] if r["stage"] == "decode")["count"]
    )
    report["frames_per_second"] = round(frames / report["seconds"], 1)
    report["other_seconds"] = round(report["seconds"] - stage_seconds, 1)
    return report, str(root / "ix")


def bench_search(clips: int, dim: int = 128, clips_per_video: int = 8, k: int = 10, repeats: int = 20) -> dict:
    g = torch.Generator().manual_seed(0)
    gallery = torch.nn.functional.normalize(torch.randn(clips, dim, generator=g), dim=1)
    videos = torch.nn.functional.normalize(torch.randn(clips // clips_per_video, dim, generator=g), dim=1)
    query = torch.nn.functional.normalize(torch.randn(1, dim, generator=g), dim=1)

    def full_sort():
        return (query @ gallery.T).argsort(dim=1, descending=True)[:, :k]

    chunked = timed(lambda: top_k(query, gallery, k), repeats)
    plain = timed(full_sort, repeats)
    video_level = timed(lambda: top_k(query, videos, k), repeats)
    assert torch.equal(top_k(query, gallery, k)[1], full_sort())
    return {
        "clips": clips,
        "videos": len(videos),
        "dim": dim,
        "clip_topk_ms": round(chunked * 1e3, 3),
        "full_sort_ms": round(plain * 1e3, 3),
        "ratio_full_sort_over_topk": round(plain / chunked, 2),
        "video_topk_ms": round(video_level * 1e3, 3),
        "index_mb": round(gallery.numel() * 4 / 2**20, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=100, help="videos of the embedded corpus to index")
    parser.add_argument("--corpus", default="data/synthetic/videos")
    parser.add_argument("--ckpt", default=None, help="retrieval checkpoint (default: runs/default/retrieval.ckpt)")
    parser.add_argument("--prepared", default=None, help="featurization source for checkpoints without one")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default="runs/bench_index")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    videos = sorted(Path(args.corpus).glob("*.mp4"))[: args.videos]
    if not videos:
        raise SystemExit(f"no videos in {args.corpus}: run `make prepare` first")
    meta = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }

    indexing, index_dir = bench_indexing(videos, args.ckpt, args.prepared, args.batch_size)
    print(
        f"\nIndexing {indexing['written']['videos']} videos ({indexing['written']['clips']} clips) on "
        f"{meta['threads']} CPU threads: {indexing['seconds']} s, {indexing['videos_per_minute']} videos/min, "
        f"{indexing['frames_per_second']} video frames/s"
    )
    print("| stage | seconds | count | per second |\n|---|---:|---:|---:|")
    for row in indexing["stages"]:
        if row["count"]:
            print(f"| {row['stage']} | {row['seconds']:.1f} | {row['count']} {row['unit']} | {row['per_second']} |")
    print(f"| model, writing, Lightning | {indexing['other_seconds']:.1f} | | |")

    searcher = Searcher(index_dir, args.ckpt, args.prepared)

    def query():
        searcher.model.texts.cache.clear()  # time the text encoder too, not its per-sentence cache
        searcher.search("a red circle moves up", k=10)

    query_ms = timed(query, 10) * 1e3

    def embed():
        searcher.model.texts.cache.clear()
        searcher.embed(["a red circle moves up"])

    embed_ms = timed(embed, 10) * 1e3
    q = searcher.embed(["a red circle moves up"])[0]
    bare_ms = timed(lambda: top_k(q, searcher.index.video_vectors, 10), 10) * 1e3
    overhead_ms = query_ms - embed_ms - bare_ms  # checks, best clip per hit, missing-file checks, the dicts
    print(f"\nOne real query end to end on that index (embed the text + exact search): {query_ms:.1f} ms; "
          f"embedding alone {embed_ms:.1f} ms, the bare top-k {bare_ms:.2f} ms, the command's own work "
          f"{overhead_ms:.2f} ms")  # fmt: skip

    rows = [bench_search(n) for n in (10_000, 100_000)]
    print("\n| clips | videos | top-10 clips (ms) | full score + sort (ms) | ratio | top-10 videos (ms) | index MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['clips']:,} | {r['videos']:,} | {r['clip_topk_ms']} | {r['full_sort_ms']} | "
            f"{r['ratio_full_sort_over_topk']}x | {r['video_topk_ms']} | {r['index_mb']} |"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "indexing": indexing,
                "query_ms": round(query_ms, 1),
                "embed_ms": round(embed_ms, 2),
                "bare_topk_ms": round(bare_ms, 3),
                "overhead_ms": round(overhead_ms, 2),
                "search": rows,
            },
            indent=1,
        )
    )
    shutil.rmtree(Path(index_dir).parent, ignore_errors=True)
    print(f"\nwrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
