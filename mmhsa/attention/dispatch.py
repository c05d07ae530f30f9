"""`hsa(...)`: pick a backend and run the operator."""

from __future__ import annotations

import os

import torch

from ..hierarchy import Hierarchy
from .dynamic import hsa_torch
from .reference import hsa_reference

HSA_BACKENDS = ("auto", "torch", "triton", "reference")


def triton_available(device: torch.device) -> bool:
    """Whether the Triton kernels can run on ``device`` (CUDA, or CPU under TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def auto_backend(device: torch.device, dtype: torch.dtype) -> str:
    """What ``backend="auto"`` runs: the Triton kernels on CUDA, except for float64 inputs (the kernels
    compute in fp32, and float64 is what one asks for when checking), the torch backend elsewhere."""
    if device.type == "cuda" and dtype != torch.float64 and triton_available(device):
        return "triton"
    return "torch"


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
    """Hierarchical Self-Attention (docs/operator.md).

    Args:
        q, k: [N, H, D] leaf queries and keys, leaves packed in hierarchy order.
        v: [N, H, Dv] leaf values.
        hierarchy: a :class:`~mmhsa.Hierarchy` (a forest for a batch) on the tensors' device.
        pos: optional node position vectors e(A), [num_nodes, H, C] or [num_nodes, C] (pre-order).
        include_self: let each leaf attend to itself (the flat case is then softmax attention with
            the diagonal, as in pretrained transformers).
        scale: logit scale (default 1/sqrt(D)).
        backend: "torch" (exact dynamic program, any device), "triton" (the family pass as Triton
            kernels: CUDA, or CPU under TRITON_INTERPRET=1), "reference" (dense theta, slow),
            "auto" (triton on CUDA unless the inputs are float64, torch elsewhere).

    Returns:
        [N, H, Dv] in the dtype of ``v``.
    """
    if backend not in HSA_BACKENDS:
        raise ValueError(f"unknown HSA backend {backend!r}; expected one of {HSA_BACKENDS}")
    if backend == "auto":
        backend = auto_backend(q.device, q.dtype)
    kwargs = dict(pos=pos, include_self=include_self, scale=scale)
    if backend == "reference":
        return hsa_reference(q, k, v, hierarchy, **kwargs)
    if backend == "triton":
        if not triton_available(q.device):
            raise RuntimeError(
                f"backend='triton' needs CUDA tensors (got {q.device}) or TRITON_INTERPRET=1 set before import"
            )
        from .triton import family_pass_triton

        return hsa_torch(q, k, v, hierarchy, family_pass=family_pass_triton, **kwargs)
    return hsa_torch(q, k, v, hierarchy, **kwargs)
