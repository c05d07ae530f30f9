"""Multi-head HSA attention layer and the Hierarchical Transformer Encoder block built on it.

The layer projects leaves to queries, keys and values with projections chosen by the leaf's
modality (patches and word pieces live in different spaces), normalises q and k per head (the
paper's LayerNorm after the Q/K projections, which also keeps the logits well scaled), runs
:func:`mmhsa.hsa` over the hierarchy with domain position vectors, and projects back.
"""

from __future__ import annotations

import torch
from torch import nn

from ..attention import hsa, hsa_matrix
from ..hierarchy import Hierarchy
from .position import PositionEncoder

__all__ = ["HSAAttention", "HTEBlock"]


class HSAAttention(nn.Module):
    """Multi-head HSA over a forest of leaves.

    Args:
        dim: model width.
        heads: attention heads.
        modalities: number of leaf modalities, each with its own Q/K/V projection.
        qk_norm: LayerNorm on q and k per head.
        pos_dim: channels of the position vectors per head (0: no positions).
        keys: named-key vocabulary for the position encoder.
        include_self: HSA variant (see :func:`mmhsa.hsa`).
        backend: HSA backend ("auto": Triton on CUDA, torch elsewhere).
        mixer: "hsa"; or the paper's baselines over the same leaves: "flat" (softmax attention over
            all leaves of each tree, via ``scaled_dot_product_attention``; positions unused) and
            "mean" (attention-free: every leaf gets the mean value of its tree, a DeepSet).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        modalities: int = 1,
        qk_norm: bool = True,
        pos_dim: int = 8,
        keys=(),
        include_self: bool = False,
        backend: str = "auto",
        mixer: str = "hsa",
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if mixer not in ("hsa", "flat", "mean"):
            raise ValueError(f"mixer must be 'hsa', 'flat' or 'mean', got {mixer!r}")
        self.mixer = mixer
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.ModuleList(nn.Linear(dim, 3 * dim) for _ in range(modalities))
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.position = PositionEncoder(heads, pos_dim, keys) if pos_dim else None
        self.include_self, self.backend = include_self, backend

    def _qkv(self, x: torch.Tensor, modality: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[N, dim] -> normalised q, k and v, each [N, heads, head_dim]."""
        n, dim = x.shape
        if len(self.qkv) == 1 or modality is None:
            qkv = self.qkv[0](x)
        else:
            qkv = x.new_empty(n, 3 * dim)
            for m, layer in enumerate(self.qkv):
                rows = torch.nonzero(modality == m).flatten()
                if len(rows):
                    qkv = qkv.index_put((rows,), layer(x[rows]))
        q, k, v = qkv.view(n, 3, self.heads, self.head_dim).unbind(1)
        return self.q_norm(q), self.k_norm(k), v

    @torch.no_grad()
    def weights(self, x: torch.Tensor, hierarchy: Hierarchy, modality: torch.Tensor | None = None) -> torch.Tensor:
        """The attention matrix this layer applies to ``x``: [heads, N, N], row i = leaf i's weights over
        the leaves (dense: for plots and inspection of small forests, not for training)."""
        q, k, _ = self._qkv(x, modality)
        if self.mixer == "hsa":
            pos = None if self.position is None else self.position(hierarchy)
            return hsa_matrix(q, k, hierarchy, pos=pos, include_self=self.include_self)
        tree = torch.repeat_interleave(
            torch.arange(hierarchy.num_trees, device=x.device),
            hierarchy.tree_leaf_ptr[1:] - hierarchy.tree_leaf_ptr[:-1],
        )
        same_tree = tree[:, None] == tree[None, :]
        if self.mixer == "flat":
            logits = torch.einsum("ihd,jhd->hij", q, k) / self.head_dim**0.5
            return logits.masked_fill(~same_tree, float("-inf")).softmax(-1)
        return (same_tree / same_tree.sum(1, keepdim=True)).expand(self.heads, -1, -1)

    def forward(self, x: torch.Tensor, hierarchy: Hierarchy, modality: torch.Tensor | None = None) -> torch.Tensor:
        """x: [N, dim] leaf features in hierarchy order; modality: [N] ids (None: all 0) -> [N, dim]."""
        n, dim = x.shape
        q, k, v = self._qkv(x, modality)
        if self.mixer == "hsa":
            pos = None if self.position is None else self.position(hierarchy)
            out = hsa(q, k, v, hierarchy, pos=pos, include_self=self.include_self, backend=self.backend)
        elif self.mixer == "flat":
            out = _flat_attention(q, k, v, hierarchy)
        else:
            out = _tree_mean(v, hierarchy)
        return self.proj(out.reshape(n, dim))


def _flat_attention(q, k, v, hierarchy: Hierarchy) -> torch.Tensor:
    """Softmax attention among all leaves of each tree, trees apart: [N, H, D].

    Trees are padded to the longest one and run as one batched call with a key-padding mask, so the
    cost is T * L_max^2, not (sum of L)^2 as with one block-diagonal mask over the whole forest.
    """
    import torch.nn.functional as F

    ptr = hierarchy.tree_leaf_ptr
    sizes = ptr[1:] - ptr[:-1]
    longest = int(sizes.max())
    tree = torch.repeat_interleave(torch.arange(len(sizes), device=q.device), sizes)
    slot = torch.arange(q.shape[0], device=q.device) - ptr[tree]

    def padded(x):  # [N, H, D] -> [T, H, L, D]
        out = x.new_zeros(len(sizes), longest, *x.shape[1:])
        out[tree, slot] = x
        return out.transpose(1, 2)

    keep = torch.arange(longest, device=q.device)[None, :] < sizes[:, None]  # [T, L]
    out = F.scaled_dot_product_attention(padded(q), padded(k), padded(v), attn_mask=keep[:, None, None, :])
    return out.transpose(1, 2)[tree, slot]


def _tree_mean(v, hierarchy: Hierarchy) -> torch.Tensor:
    """Every leaf gets the mean value of its tree: [N, H, D]."""
    ptr = hierarchy.tree_leaf_ptr
    sizes = (ptr[1:] - ptr[:-1]).tolist()
    return torch.cat([part.mean(0, keepdim=True).expand_as(part) for part in v.split(sizes)])


class HTEBlock(nn.Module):
    """Pre-norm Hierarchical Transformer Encoder block: x + HSA(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, **attention):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = HSAAttention(dim, heads, **attention)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, hierarchy: Hierarchy, modality: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), hierarchy, modality))
        return x + self.drop(self.mlp(self.norm2(x)))
