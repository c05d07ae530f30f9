"""Search at corpus scale: exact chunked top-k against FAISS IVF (:mod:`pipelines.infer.ann`) in one run.

For each size, an index of unit embeddings around 1,024 centres (noise as large as a centre, so that
clusters overlap; ``--dim`` wide, 30 clips per video) is searched with 200 held-out queries of the same
distribution:

- exact: :func:`pipelines.infer.exact.top_k` (chunked matrix products; the default search);
- faiss flat: ``IndexFlatIP``, FAISS's exact search (the reference for speed);
- ivf: the IVF-Flat index ``mmhsa index --ann`` builds, with the nprobe its build tuned; build seconds,
  the recall@10 the build measured, and the recall@10 on the held-out queries against exact.

Latency is the median per query at batch 1 and per batch of 64; memory is the resident size of the
vectors (exact) and of the FAISS index. Sizes past the machine's memory are skipped with a note.

    python benchmarks/bench_search.py [--sizes 100000 1000000] [--dim 256]

Prints a table and writes ``runs/bench_search/results.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.infer.ann import AnnIndex, ivf_index, recall_at, tune_nprobe  # noqa: E402
from pipelines.infer.exact import top_k  # noqa: E402

CLIPS_PER_VIDEO = 30


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """[n, dim] float32 unit vectors around 1,024 centres (drawn in blocks to bound memory)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1024, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for at in range(0, n, 1 << 20):
        m = min(1 << 20, n - at)
        block = centres[rng.integers(0, 1024, m)] + rng.standard_normal((m, dim)).astype(np.float32) / dim**0.5
        out[at : at + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def per_query(fn, queries: torch.Tensor, batch: int, repeats: int = 20) -> float:
    """Median milliseconds per call of ``fn`` on batches of ``batch`` queries."""
    fn(queries[:batch])  # warm-up
    times = []
    for r in range(repeats):
        q = queries[(r * batch) % len(queries) :][:batch]
        start = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def bench_size(n: int, dim: int) -> dict:
    import faiss

    gallery = clustered(n, dim, seed=1)
    queries = torch.from_numpy(clustered(200, dim, seed=2))
    g = torch.from_numpy(gallery)
    row = {"clips": n, "videos": n // CLIPS_PER_VIDEO, "dim": dim}
    exact_rows = top_k(queries, g, 10)[1].numpy()
    row["exact_ms_b1"] = round(per_query(lambda q: top_k(q, g, 10), queries, 1, repeats=10), 2)
    row["exact_ms_b64"] = round(per_query(lambda q: top_k(q, g, 10), queries, 64, repeats=5), 2)
    row["exact_mb"] = round(gallery.nbytes / 2**20, 1)
    flat = faiss.IndexFlatIP(dim)
    flat.add(gallery)
    row["flat_ms_b1"] = round(per_query(lambda q: flat.search(q.numpy(), 10), queries, 1, repeats=10), 2)
    started = time.perf_counter()
    ivf = ivf_index(gallery)
    nprobe, build_recall = tune_nprobe(ivf, gallery)
    row["ivf_build_s"] = round(time.perf_counter() - started, 1)
    ann = AnnIndex(ivf, {"nprobe": nprobe, "vectors": n})
    row.update(nlist=int(ivf.nlist), nprobe=nprobe, ivf_build_recall10=round(build_recall, 3))
    row["ivf_recall10"] = round(recall_at(ann.search(queries, 10)[1].numpy(), exact_rows), 3)
    row["ivf_ms_b1"] = round(per_query(lambda q: ann.search(q, 10), queries, 1, repeats=50), 3)
    row["ivf_ms_b64"] = round(per_query(lambda q: ann.search(q, 10), queries, 64, repeats=10), 2)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "ivf.faiss")
        faiss.write_index(ivf, path)
        row["ivf_mb"] = round(Path(path).stat().st_size / 2**20, 1)
    row["ivf_speedup_b1"] = round(row["exact_ms_b1"] / row["ivf_ms_b1"], 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--out", default="runs/bench_search")
    args = parser.parse_args()
    import faiss

    rows, skipped = [], []
    available = _available_bytes()
    for n in args.sizes:
        need = n * args.dim * 4 * 3  # the gallery, FAISS's flat copy and the IVF lists
        if available is not None and need > 0.8 * available:
            skipped.append(f"{n:,} clips: needs ~{need / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available")
            continue
        rows.append(bench_size(n, args.dim))
        print(json.dumps(rows[-1]), flush=True)
    columns = ["clips", "exact_ms_b1", "flat_ms_b1", "ivf_ms_b1", "ivf_speedup_b1", "exact_ms_b64", "ivf_ms_b64",
               "ivf_recall10", "ivf_build_recall10", "nlist", "nprobe", "ivf_build_s",
               "exact_mb", "ivf_mb"]  # fmt: skip
    print("\n" + " | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))
    for note in skipped:
        print(f"skipped: {note}")
    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads()}  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"machine": machine, "rows": rows, "skipped": skipped}, indent=1))
    print(f"wrote {out / 'results.json'}")


def _available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


if __name__ == "__main__":
    main()
