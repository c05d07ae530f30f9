"""`hsa(...)`: pick a backend and run the operator."""

from __future__ import annotations

import torch

from ..hierarchy import Hierarchy
from .dynamic import hsa_torch
from .reference import hsa_reference

BACKENDS = ("auto", "torch", "reference")


def hsa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    hierarchy: Hierarchy,
    *,
    pos: torch.Tensor | None = None,
    include_self: bool = False,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Hierarchical Self-Attention (hsa-math.md).

    Args:
        q, k: [N, H, D] leaf queries and keys, leaves packed in hierarchy order.
        v: [N, H, Dv] leaf values.
        hierarchy: a :class:`~mmhsa.Hierarchy` (a forest for a batch) on the tensors' device.
        pos: optional node position vectors e(A), [num_nodes, H, C] or [num_nodes, C] (pre-order).
        include_self: let each leaf attend to itself (the flat case is then softmax attention with
            the diagonal, as in pretrained transformers).
        scale: logit scale (default 1/sqrt(D)).
        backend: "torch" (exact dynamic program, any device), "reference" (dense theta, slow),
            "auto" (the fastest available).

    Returns:
        [N, H, Dv] in the dtype of ``v``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown HSA backend {backend!r}; expected one of {BACKENDS}")
    fn = hsa_reference if backend == "reference" else hsa_torch
    return fn(q, k, v, hierarchy, pos=pos, include_self=include_self, scale=scale)
