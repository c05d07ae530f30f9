"""Position vectors e(A) per node, from the domain of the family the node belongs to.

Every node carries a domain (set, index, grid, time, key) and coordinates (see
:data:`mmhsa.DOMAINS`). Coordinates become fixed sinusoidal features (index, grid row/col, time in
seconds) or a learned embedding (named keys); a learned linear map per domain turns them into the
per-head vectors ``pos: [M, H, C]`` that HSA adds as ``e(A).e(B)`` to sibling logits. Unordered sets
get ``e = 0``. Only siblings are ever compared, so coordinates need only be meaningful within a family.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..hierarchy import DOMAINS, Hierarchy

__all__ = ["PathEmbedding", "PositionEncoder", "sinusoid"]


def sinusoid(x: torch.Tensor, features: int, max_period: float, min_period: float = 1.0) -> torch.Tensor:
    """[...] coordinates -> [..., features] sin/cos at geometric frequencies from 1/min_period to 1/max_period
    (radians per unit)."""
    half = features // 2
    steps = torch.arange(half, device=x.device, dtype=torch.float32) / half
    freqs = torch.exp(-math.log(min_period) - math.log(max_period / min_period) * steps)
    angles = x.float()[..., None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class PositionEncoder(nn.Module):
    """Domain-aware node positions for one attention layer.

    Args:
        heads: attention heads H.
        dim: position channels C per head.
        keys: the vocabulary of named keys ("video", "question", "answer_0", ...); a hierarchy key
            outside it raises ``ValueError`` naming it.
        features: sinusoidal features per coordinate.
        max_index: longest period for index and grid coordinates; ``max_seconds`` for time;
            ``min_seconds`` the shortest period for time.
        relative_time: time as seconds since the node's first sibling (a frame's place in its clip),
            not since the start of the video.
        init_std: the maps' initial weights' standard deviation (None: PyTorch's default for linear layers).
    """

    def __init__(
        self,
        heads: int,
        dim: int,
        keys: Sequence[str] = (),
        features: int = 16,
        max_index: float = 1000.0,
        max_seconds: float = 3600.0,
        min_seconds: float = 1.0,
        relative_time: bool = False,
        init_std: float | None = 0.02,
    ):
        super().__init__()
        self.heads, self.dim, self.features = heads, dim, features
        self.max_index, self.max_seconds, self.min_seconds = max_index, max_seconds, min_seconds
        self.relative_time = relative_time
        self.keys = {k: i for i, k in enumerate(keys)}
        out = heads * dim
        self.index = nn.Linear(features, out, bias=False)
        self.grid = nn.Linear(2 * features, out, bias=False)
        self.time = nn.Linear(features, out, bias=False)
        self.key = nn.Embedding(max(1, len(self.keys)), out)
        if init_std is not None:
            for layer in (self.index, self.grid, self.time):
                nn.init.normal_(layer.weight, std=init_std)
            nn.init.normal_(self.key.weight, std=init_std)

    def forward(self, hierarchy: Hierarchy) -> torch.Tensor:
        """pos: [M, H, C] (zeros for unordered sets and roots)."""
        domain, coord = hierarchy.domain, hierarchy.coord
        out = torch.zeros(
            hierarchy.num_nodes, self.heads * self.dim, device=coord.device, dtype=self.index.weight.dtype
        )
        for name in ("index", "grid", "time", "key"):
            nodes = torch.nonzero(domain == DOMAINS.index(name)).flatten()
            if len(nodes) == 0:
                continue
            c = coord[nodes]
            if name == "time" and self.relative_time:
                c = torch.stack([c[:, 0] - _first_sibling(hierarchy, nodes, c[:, 0]), c[:, 1]], 1)
            if name == "index":
                value = self.index(sinusoid(c[:, 0], self.features, self.max_index))
            elif name == "grid":
                feats = torch.cat(
                    [
                        sinusoid(c[:, 0], self.features, self.max_index),
                        sinusoid(c[:, 1], self.features, self.max_index),
                    ],
                    -1,
                )
                value = self.grid(feats)
            elif name == "time":
                value = self.time(sinusoid(c[:, 0], self.features, self.max_seconds, self.min_seconds))
            else:
                value = self.key(self._key_ids(hierarchy, c[:, 0]))
            out = out.index_put((nodes,), value.to(out.dtype))
        return out.view(-1, self.heads, self.dim)

    def _key_ids(self, hierarchy: Hierarchy, local: torch.Tensor) -> torch.Tensor:
        """Map the hierarchy's key ids (into its key_names) onto this encoder's vocabulary."""
        table = []
        for name in hierarchy.key_names:
            if name not in self.keys:
                raise ValueError(f"position key {name!r} is not in the model's key vocabulary {sorted(self.keys)}")
            table.append(self.keys[name])
        table = torch.tensor(table or [0], dtype=torch.long, device=local.device)
        return table[local.long()]


def _first_sibling(hierarchy: Hierarchy, nodes: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per node of ``nodes``, the smallest ``t`` among its siblings in ``nodes`` (a root: its own)."""
    parent = hierarchy.parent[nodes]
    group = torch.where(parent >= 0, parent, hierarchy.num_nodes + torch.arange(len(nodes), device=t.device))
    first = t.new_full((hierarchy.num_nodes + len(nodes),), float("inf"))
    first = first.scatter_reduce(0, group, t, "amin")
    return first[group]


class PathEmbedding(nn.Module):
    """Absolute leaf positions: the sum, over a leaf and all its ancestors, of a learned map of each
    node's position among its siblings ([N, dim]; e.g. patch (row, col) + frame time + clip time + key).

    HSA's ``e(A).e(B)`` only biases which siblings attend to each other; values carry no position. Added
    to the leaf inputs, this lets values say *where* a feature is (which frame, which cell), which
    motion and order need. The baselines (flat attention, mean pooling) get the same inputs.

    Defaults chosen so that motion is learnable (with video-absolute times, a 1 s shortest period and 0.02
    initial weights a clip-level direction read-out stayed at chance; docs/benchmarks.md, the motion
    probe): time is counted from
    the first sibling (a frame's place in its clip, whatever the clip's start), periods reach down to
    0.1 s (frames are ~0.1-1 s apart), and the maps start at the usual scale of a linear layer, so the
    positions are as loud as the content from the first step.
    """

    def __init__(self, dim: int, keys: Sequence[str] = (), **position):
        super().__init__()
        position = {"features": 32, "min_seconds": 0.1, "relative_time": True, "init_std": None, **position}
        self.nodes = PositionEncoder(1, dim, keys, **position)

    def forward(self, hierarchy: Hierarchy) -> torch.Tensor:
        e = self.nodes(hierarchy)[:, 0]  # [M, dim]
        node = hierarchy.leaf_node
        out = e[node]
        for _ in range(hierarchy.max_depth):  # climb one level per step, all leaves at once
            node = hierarchy.parent[node]
            live = node >= 0
            out = out + e[node.clamp(min=0)] * live[:, None]
        return out
