"""Approximate search for large indexes: a FAISS inverted-file index (IVF, inner product) per gallery.

Exact search (:func:`pipelines.infer.exact.top_k`) stays the default. ``mmhsa index --ann`` (or an index
past :data:`AUTO_VECTORS` clips) also writes, under ``INDEX/ann/``:

    clips.faiss, videos.faiss   FAISS IVF-Flat indexes over the clip and video embeddings (row ids = the rows
                                of :class:`~pipelines.infer.index.Index`)
    ann.json                    per gallery: vectors, nlist, nprobe, recall@10 against exact search measured at
                                build time, and the index content it was built from (``content``)

``nlist`` is about 4 sqrt(N) lists; ``nprobe`` is the smallest power of two whose recall@10 on 256 sampled
gallery vectors (each one's own row left out) reaches :data:`TARGET_RECALL`: the recorded recall is
measured, not assumed. A later
``mmhsa index`` run that changes the index rebuilds them, reusing the trained lists (adding vectors to an
IVF needs no new training); a search whose ANN files do not match the index content falls back to exact
search and says so. The files are read memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from data_prep.shards import atomic_write

from .exact import top_k

__all__ = [
    "AUTO_VECTORS",
    "TARGET_RECALL",
    "AnnIndex",
    "build_ann",
    "content_signature",
    "ivf_index",
    "load_ann",
    "recall_at",
    "tune_nprobe",
]

AUTO_VECTORS = 1_000_000  # clips past which `mmhsa index` builds the ANN indexes without being asked
TARGET_RECALL = 0.95
SAMPLE_QUERIES = 256
GALLERIES = ("clips", "videos")


def content_signature(index) -> str:
    """What the index holds, in row order: the paths and sizes of its videos and the count of its clips."""
    h = hashlib.sha256(str(len(index.clip_vectors)).encode())
    for video in index.videos:
        h.update(f"{video['path']}\0{len(video['clips'])}\0{video.get('fingerprint', '')}\n".encode())
    return h.hexdigest()[:32]


def recall_at(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k found by the approximate top-k."""
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


class AnnIndex:
    """One gallery's FAISS IVF index and its build record."""

    def __init__(self, faiss_index, record: dict):
        self.faiss, self.record = faiss_index, record
        self.faiss.nprobe = record["nprobe"]

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k inner products of unit ``queries`` [Q, E]: scores [Q, k'] (descending) and rows."""
        k = min(k, self.record["vectors"])
        scores, rows = self.faiss.search(np.ascontiguousarray(queries.float().numpy()), k)
        return torch.from_numpy(scores), torch.from_numpy(rows.astype(np.int64))


def ivf_index(vectors: np.ndarray, previous=None):
    """An IVF-Flat index over ``vectors`` [N, E]: the previous one's trained lists reused when it fits."""
    import faiss

    n, dim = vectors.shape
    if previous is not None and previous.d == dim:
        index = previous
        index.reset()  # keep the trained coarse quantizer; only the lists are filled again
    else:
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39 or 1))  # FAISS wants >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        # 64 training vectors per list: the k-means cost stays bounded, as FAISS's own guidance allows
        train = vectors[rng.choice(n, size=64 * nlist, replace=False)] if n > 64 * nlist else vectors
        index.train(train)
    index.add(vectors)
    return index


def _without(rows: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Each row's first ``k`` entries other than its query's own row."""
    return np.stack([[r for r in row if r != o][:k] for row, o in zip(rows, own)])


def tune_nprobe(index, vectors: np.ndarray) -> tuple[int, float]:
    """The smallest power-of-two nprobe reaching the target recall@10 on sampled gallery vectors, each
    query's own row left out of both answers (so that it stands for a query from outside the gallery)."""
    rng = np.random.default_rng(1)
    own = rng.choice(len(vectors), size=min(SAMPLE_QUERIES, len(vectors)), replace=False)
    queries = vectors[own]
    k = min(10, len(vectors) - 1)
    if k < 1:
        return 1, 1.0
    exact = _without(top_k(torch.from_numpy(queries), torch.from_numpy(vectors), k + 1)[1].numpy(), own, k)
    nprobe, recall = 1, 0.0
    while True:
        index.nprobe = nprobe
        found = index.search(queries, k + 1)[1]
        recall = recall_at(_without(found, own, k), exact)
        if recall >= TARGET_RECALL or nprobe >= index.nlist:
            return nprobe, recall
        nprobe = min(nprobe * 2, index.nlist)


def build_ann(index, root: Path) -> dict:
    """Build (or rebuild) the ANN files of ``index`` under ``root/ann``; returns the build record."""
    import faiss

    folder = root / "ann"
    folder.mkdir(exist_ok=True)
    old = _read_record(folder)
    record = {"content": content_signature(index), "built": time.strftime("%Y-%m-%dT%H:%M:%S"), "galleries": {}}
    for name, vectors in (("clips", index.clip_vectors), ("videos", index.video_vectors)):
        started = time.perf_counter()
        data = np.ascontiguousarray(vectors.float().numpy())
        path = folder / f"{name}.faiss"
        previous = faiss.read_index(str(path)) if name in old.get("galleries", {}) and path.is_file() else None
        ivf = ivf_index(data, previous)
        nprobe, recall = tune_nprobe(ivf, data)
        atomic_write(path, faiss.serialize_index(ivf).tobytes())
        record["galleries"][name] = {
            "vectors": int(ivf.ntotal),
            "nlist": int(ivf.nlist),
            "nprobe": nprobe,
            "recall_at_10": round(recall, 4),
            "seconds": round(time.perf_counter() - started, 2),
            "reused_lists": previous is not None,
        }
    atomic_write(folder / "ann.json", json.dumps(record, indent=1).encode())
    return record


def _read_record(folder: Path) -> dict:
    path = folder / "ann.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def load_ann(index, root: Path) -> tuple[dict[str, AnnIndex], str | None]:
    """The ANN indexes that match ``index`` (memory-mapped), and a warning when some exist but are stale."""
    import faiss

    folder = root / "ann"
    record = _read_record(folder)
    if not record:
        return {}, None
    if record.get("content") != content_signature(index):
        return {}, (
            f"{folder} was built for other contents of the index: searching exactly; `mmhsa index` with --ann "
            "rebuilds it"
        )
    loaded = {}
    for name, info in record["galleries"].items():
        loaded[name] = AnnIndex(faiss.read_index(str(folder / f"{name}.faiss"), faiss.IO_FLAG_MMAP), info)
    return loaded, None
