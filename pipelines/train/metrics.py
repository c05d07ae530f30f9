"""Retrieval and QA metrics.

Retrieval: for every query, the rank of its best-ranked correct gallery item, where the gallery is
ordered by score (descending) and ties are broken by gallery index (lower index first), so results
are deterministic. From the ranks: R@1/5/10, median and mean rank. Scores are computed in query
chunks, so a 100k-item gallery never needs the full matrix at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["NEXTQA_TYPES", "nextqa_accuracy", "qa_accuracy", "recall_summary", "retrieval_ranks"]

# NExT-QA's question types with the column names its official eval_mc.py prints (github.com/doc-doc/NExT-QA);
# TP (previous) is scored with TN (next) as "Bef&Aft". The groups are the types' first letters: causal (C),
# temporal (T), descriptive (D), each pooled over its questions.
NEXTQA_TYPES = {"CW": "Why", "CH": "How", "TN": "Bef&Aft", "TP": "Bef&Aft", "TC": "When", "DC": "Cnt",
                "DL": "Loc", "DO": "Other"}  # fmt: skip


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
        if types and all(t in NEXTQA_TYPES for t in types):
            out |= nextqa_accuracy(correct, types)
    return out


def nextqa_accuracy(correct: torch.Tensor, types: Sequence[str]) -> dict[str, float]:
    """NExT-QA's columns as its paper and eval_mc.py report them: ``Acc@C``, ``Acc@T``, ``Acc@D`` (each over
    the questions of its group) and per type Why, How, Bef&Aft (TN with TP), When, Cnt, Loc, Other.

    Args:
        correct: [B] 1 for a right answer, 0 for a wrong one; types: [B] NExT-QA type codes (CW, TN, ...).
    """
    out = {}
    for name, select in [(f"Acc@{g}", lambda t, g=g: t[0] == g) for g in "CTD"] + [
        (column, lambda t, c=column: NEXTQA_TYPES[t] == c) for column in dict.fromkeys(NEXTQA_TYPES.values())
    ]:
        sel = torch.tensor([select(t) for t in types])
        if sel.any():
            out[name] = float(correct[sel].mean())
    return out
