"""Exact top-k inner-product search, in chunks: the default search, and what ANN recall is measured against."""

from __future__ import annotations

import torch

__all__ = ["top_k"]


def top_k(
    queries: torch.Tensor, gallery: torch.Tensor, k: int, chunk: int = 65536
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k cosine scores of unit ``queries`` [Q, E] against unit ``gallery`` [G, E].

    Returns:
        scores [Q, min(k, G)] (descending) and their gallery rows; the gallery is read in chunks so the
        full [Q, G] matrix never exists.
    """
    k = min(k, len(gallery))
    best_scores = queries.new_full((len(queries), 0), float("-inf"))
    best_rows = torch.zeros(len(queries), 0, dtype=torch.long)
    for at in range(0, len(gallery), chunk):
        scores = queries @ gallery[at : at + chunk].T
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        best_scores = torch.cat([best_scores, top.values], 1)
        best_rows = torch.cat([best_rows, top.indices + at], 1)
        keep = best_scores.topk(min(k, best_scores.shape[1]), dim=1)
        best_scores, best_rows = keep.values, best_rows.gather(1, keep.indices)
    return best_scores, best_rows
