"""Retrieval and QA metrics.

Retrieval: for every query, the rank of its best-ranked correct gallery item, where the gallery is
ordered by score (descending) and ties are broken by gallery index (lower index first), so results
are deterministic. From the ranks: R@1/5/10, median and mean rank. Scores are computed in query
chunks, so a 100k-item gallery never needs the full matrix at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["qa_accuracy", "recall_summary", "retrieval_ranks"]


def retrieval_ranks(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    positive: Callable[[torch.Tensor], torch.Tensor],
    chunk: int = 1024,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Ranks of the best correct gallery item for each query, computed in query chunks.

    Args:
        queries: [Q, D] embeddings; gallery: [G, D] embeddings.
        positive: maps query indices [q] to the [q, G] bool mask of their correct items.
        chunk: queries per chunk.
        score: similarity function (default: dot product).
    """
    score = score or (lambda a, b: a @ b.t())
    out = []
    for start in range(0, queries.shape[0], chunk):
        idx = torch.arange(start, min(start + chunk, queries.shape[0]), device=queries.device)
        s = score(queries[idx], gallery)
        mask = positive(idx)
        # The best correct item is the highest-scoring one, the lowest index among equals.
        target = torch.where(mask, s, torch.full_like(s, float("-inf"))).amax(1, keepdim=True)
        first = torch.where(mask & (s == target), torch.arange(s.shape[1], device=s.device), s.shape[1]).amin(1)
        higher = (s > target).sum(1)
        ties_before = ((s == target) & (torch.arange(s.shape[1], device=s.device)[None] < first[:, None])).sum(1)
        out.append(1 + higher + ties_before)
    return torch.cat(out)


def recall_summary(ranks: torch.Tensor, ks: Sequence[int] = (1, 5, 10), prefix: str = "") -> dict[str, float]:
    """R@k, median and mean rank of a [Q] rank vector."""
    r = ranks.double()
    out = {f"{prefix}R@{k}": float((r <= k).double().mean()) for k in ks}
    out[f"{prefix}MdR"] = float(r.quantile(0.5))  # the usual median: the mean of the two middle ranks
    out[f"{prefix}MnR"] = float(r.mean())
    return out


def qa_accuracy(scores: torch.Tensor, answers: torch.Tensor, types: Sequence[str] | None = None) -> dict[str, float]:
    """Accuracy of argmax over candidates, overall and per question type.

    Args:
        scores: [B, K] candidate scores; answers: [B] correct indices; types: [B] type codes.
    """
    correct = (scores.argmax(1) == answers).double()
    out = {"acc": float(correct.mean())}
    if types is not None:
        for t in sorted(set(types)):
            sel = torch.tensor([x == t for x in types])
            out[f"acc_{t}"] = float(correct[sel].mean())
    return out
