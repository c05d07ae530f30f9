"""Hierarchical Transformer Encoder: modality adapters, a stack of HTE blocks, leaf-mean node pooling."""

from __future__ import annotations

import torch
from torch import nn

from ..hierarchy import Hierarchy
from .attention import HTEBlock
from .position import PathEmbedding

__all__ = ["HierarchicalEncoder", "pool_nodes", "previous_leaf"]


def pool_nodes(x: torch.Tensor, hierarchy: Hierarchy, nodes: torch.Tensor) -> torch.Tensor:
    """Leaf-mean features of ``nodes``: [N, C] leaf features -> [K, C] (the natural HSA statistic rho).

    Prefix sums in float64 make every node an O(1) difference, whatever its size.
    """
    prefix = torch.cat([x.new_zeros(1, x.shape[1], dtype=torch.float64), x.double().cumsum(0)])
    start, end = hierarchy.leaf_start[nodes], hierarchy.leaf_end[nodes]
    return ((prefix[end] - prefix[start]) / (end - start)[:, None]).to(x.dtype)


def previous_leaf(hierarchy: Hierarchy) -> torch.Tensor:
    """[N] per leaf, the leaf at the same place in the previous sibling of its parent, or -1.

    The previous sibling must hold as many leaves and end where the parent's leaves start (as frames of
    one clip do); a leaf under the first such family (the first frame of a clip) has none.
    """
    h = hierarchy
    leaf = torch.arange(h.num_leaves, device=h.leaf_start.device)
    parent = h.parent[h.leaf_node]
    size = (h.leaf_end - h.leaf_start)[parent.clamp(min=0)]
    partner = leaf - size
    ok = (parent >= 0) & (partner >= 0)
    partner_parent = h.parent[h.leaf_node[partner.clamp(min=0)]]
    ok &= (partner_parent >= 0) & (partner_parent != parent)
    ok &= h.parent[partner_parent.clamp(min=0)] == h.parent[parent.clamp(min=0)]  # siblings
    ok &= (h.leaf_end - h.leaf_start)[partner_parent.clamp(min=0)] == size  # same number of leaves
    ok &= h.leaf_end[partner_parent.clamp(min=0)] == h.leaf_start[parent.clamp(min=0)]  # adjacent
    return torch.where(ok, partner, torch.full_like(partner, -1))


def _changes(values: torch.Tensor, rows: torch.Tensor, hierarchy: Hierarchy) -> torch.Tensor:
    """values [R, C] of the leaves ``rows`` -> their change since :func:`previous_leaf` (0 without one, or
    when that leaf is of another modality)."""
    where = torch.full((hierarchy.num_leaves,), -1, dtype=torch.long, device=rows.device)
    where[rows] = torch.arange(len(rows), device=rows.device)
    before = previous_leaf(hierarchy)[rows]
    before_row = torch.where(before >= 0, where[before.clamp(min=0)], before)
    change = values - values[before_row.clamp(min=0)]
    return change * (before_row >= 0)[:, None].to(values.dtype)


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
        difference_modalities: modalities whose leaves also get their change since the previous
            sibling family (:func:`previous_leaf`; for video: the same cell of the previous frame in
            the clip), through an adapter of its own. With the content x position term a clip's mean
            then holds where things appeared and vanished, motion, as a function of the cell alone.
        **attention: passed to every :class:`~mmhsa.nn.HSAAttention` (pos_dim, keys, include_self,
            qk_norm, backend).
    """

    def __init__(
        self,
        input_dims: dict[str, int],
        dim: int = 256,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        path_positions: bool = True,
        content_position: bool = False,
        difference_modalities: tuple[str, ...] = (),
        **attention,
    ):
        super().__init__()
        unknown = sorted(set(difference_modalities) - set(input_dims))
        if unknown:
            raise ValueError(f"difference_modalities {unknown} are not among the inputs {sorted(input_dims)}")
        self.differences = nn.ModuleDict({m: nn.Linear(input_dims[m], dim) for m in difference_modalities})
        self.modalities = list(input_dims)
        self.path = PathEmbedding(dim, attention.get("keys", ())) if path_positions else None
        self.where = (
            nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
            if path_positions and content_position
            else None
        )
        self.adapters = nn.ModuleDict({m: nn.Linear(c, dim) for m, c in input_dims.items()})
        self.blocks = nn.ModuleList(
            HTEBlock(dim, heads, mlp_ratio, dropout, modalities=len(input_dims), **attention) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.dim = dim

    def forward(
        self, features: dict[str, torch.Tensor], leaf_modality: torch.Tensor, hierarchy: Hierarchy
    ) -> torch.Tensor:
        """features[m]: [N_m, C_m] rows of modality m's leaves in leaf order; leaf_modality: [N] -> [N, dim]."""
        x = None
        for m, name in enumerate(self.modalities):
            rows = torch.nonzero(leaf_modality == m).flatten()
            if len(rows) == 0:
                continue
            if name not in features or features[name].shape[0] != len(rows):
                got = None if name not in features else features[name].shape[0]
                raise ValueError(f"modality {name!r}: {len(rows)} leaves but {got} feature rows")
            rows_features = features[name].to(self.adapters[name].weight.dtype)
            value = self.adapters[name](rows_features)
            if name in self.differences:
                value = value + self.differences[name](_changes(rows_features, rows, hierarchy))
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
