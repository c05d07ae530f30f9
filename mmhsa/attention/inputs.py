"""Shape checks and dtype policy shared by every HSA backend."""

from __future__ import annotations

import math

import torch

from ..hierarchy import Hierarchy


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64 (for checking); everything else accumulates in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_inputs(q, k, v, hierarchy: Hierarchy, pos, scale) -> tuple[float, torch.Tensor | None]:
    """Validate the operator's inputs; return the scale and ``pos`` as ``[num_nodes, H, C]`` (or None).

    Shapes: q, k [N, H, D]; v [N, H, Dv] (or None for matrix-only callers); pos [M, H, C] or [M, C].
    """
    if not isinstance(hierarchy, Hierarchy):
        raise TypeError(f"hierarchy must be an mmhsa.Hierarchy, got {type(hierarchy).__name__}")
    if q.dim() != 3 or k.dim() != 3:
        raise ValueError(f"q and k must be [N, H, D], got {list(q.shape)} and {list(k.shape)}")
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape, got {list(q.shape)} and {list(k.shape)}")
    n, h, d = q.shape
    if n != hierarchy.num_leaves:
        raise ValueError(f"q has {n} tokens but the hierarchy has {hierarchy.num_leaves} leaves")
    if v is not None and (v.dim() != 3 or v.shape[:2] != q.shape[:2]):
        raise ValueError(f"v must be [N, H, Dv] with N={n}, H={h}, got {list(v.shape)}")
    for name, t in (("q", q), ("k", k), ("v", v), ("pos", pos)):
        if t is not None and not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t is not None and t.device != hierarchy.device:
            raise ValueError(
                f"{name} is on {t.device} but the hierarchy is on {hierarchy.device} (use hierarchy.to(...))"
            )
    if pos is not None:
        if pos.dim() == 2:
            pos = pos[:, None, :].expand(pos.shape[0], h, pos.shape[1])
        if pos.dim() != 3 or pos.shape[0] != hierarchy.num_nodes or pos.shape[1] != h:
            raise ValueError(
                f"pos must be [num_nodes={hierarchy.num_nodes}, H={h}, C] or [num_nodes, C], got {list(pos.shape)}"
            )
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    return scale, pos
