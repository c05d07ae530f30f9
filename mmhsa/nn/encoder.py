"""Hierarchical Transformer Encoder: modality adapters, a stack of HTE blocks, leaf-mean node pooling."""

from __future__ import annotations

import torch
from torch import nn

from ..hierarchy import Hierarchy
from .attention import HTEBlock
from .position import PathEmbedding

__all__ = ["HierarchicalEncoder", "pool_nodes"]


def pool_nodes(x: torch.Tensor, hierarchy: Hierarchy, nodes: torch.Tensor) -> torch.Tensor:
    """Leaf-mean features of ``nodes``: [N, C] leaf features -> [K, C] (the natural HSA statistic rho).

    Prefix sums in float64 make every node an O(1) difference, whatever its size.
    """
    prefix = torch.cat([x.new_zeros(1, x.shape[1], dtype=torch.float64), x.double().cumsum(0)])
    start, end = hierarchy.leaf_start[nodes], hierarchy.leaf_end[nodes]
    return ((prefix[end] - prefix[start]) / (end - start)[:, None]).to(x.dtype)


class HierarchicalEncoder(nn.Module):
    """Leaf features of several modalities -> contextual leaf features over one hierarchy.

    Args:
        input_dims: feature width per modality, in modality-id order (e.g. {"video": 1280, "text": 384}).
        dim, depth, heads, mlp_ratio, dropout: transformer sizes.
        path_positions: add :class:`~mmhsa.nn.PathEmbedding` (absolute leaf positions) to the inputs.
        content_position: also add ``content * g(position)`` per leaf, g a small MLP of the path
            embedding. Node statistics are leaf-means; with only ``content + position`` a clip's mean
            keeps what is in it and where on average, never *where when* (motion: the object's place
            late minus early). The product makes those means linear in the content at each
            (time, place), which is exactly what a linear read-out of motion needs.
        **attention: passed to every :class:`~mmhsa.nn.HSAAttention` (pos_dim, keys, include_self,
            qk_norm, backend).
    """

    def __init__(self, input_dims: dict[str, int], dim: int = 256, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, path_positions: bool = True,
                 content_position: bool = False, **attention):
        super().__init__()
        self.modalities = list(input_dims)
        self.path = PathEmbedding(dim, attention.get("keys", ())) if path_positions else None
        self.where = (nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
                      if path_positions and content_position else None)
        self.adapters = nn.ModuleDict({m: nn.Linear(c, dim) for m, c in input_dims.items()})
        self.blocks = nn.ModuleList(
            HTEBlock(dim, heads, mlp_ratio, dropout, modalities=len(input_dims), **attention) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.dim = dim

    def forward(self, features: dict[str, torch.Tensor], leaf_modality: torch.Tensor, hierarchy: Hierarchy) -> torch.Tensor:
        """features[m]: [N_m, C_m] rows of modality m's leaves in leaf order; leaf_modality: [N] -> [N, dim]."""
        x = None
        for m, name in enumerate(self.modalities):
            rows = torch.nonzero(leaf_modality == m).flatten()
            if len(rows) == 0:
                continue
            if name not in features or features[name].shape[0] != len(rows):
                got = None if name not in features else features[name].shape[0]
                raise ValueError(f"modality {name!r}: {len(rows)} leaves but {got} feature rows")
            value = self.adapters[name](features[name].to(self.adapters[name].weight.dtype))
            x = value.new_zeros(len(leaf_modality), self.dim) if x is None else x
            x = x.index_put((rows,), value)
        if x is None:
            raise ValueError("no leaves of a known modality")
        if self.path is not None:
            path = self.path(hierarchy).to(x.dtype)
            x = x + path if self.where is None else x + path + x * self.where(path)
        for block in self.blocks:
            x = block(x, hierarchy, leaf_modality)
        return self.norm(x)
