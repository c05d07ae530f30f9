"""Replace the softmax attention of chosen layers of a pretrained model with HSA, reversibly."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..attention import hsa
from ..hierarchy import Hierarchy
from .hierarchies import TokenHierarchy
from .sites import SUPPORTED, find_attention_sites

__all__ = ["HSAInjection", "HierarchySource", "hsa_attention"]

#: Where a replaced layer gets each sample's hierarchy: a function of the sample's token count (called
#: once per distinct count, then cached), or one hierarchy per sample of the next batch.
HierarchySource = Callable[[int], Hierarchy | TokenHierarchy] | Sequence[Hierarchy | TokenHierarchy]


@dataclass
class _Forest:
    """The packed forest of one batch and where its leaves sit in the flattened ``[B * L]`` tokens."""

    source: tuple  # the source's function, or its hierarchies (identity compared: a list may be refilled)
    valid: torch.Tensor | None
    shape: tuple[int, int]
    hierarchy: Hierarchy
    index: torch.Tensor  # [N] flat token position of each leaf of the forest


class HSAInjection:
    """HSA (include_self) in place of softmax attention in some layers of a model; reversible.

    Each sample's real tokens (padding removed, special tokens kept) are the leaves of its hierarchy,
    in token order unless a :class:`TokenHierarchy` says otherwise. A batch runs as one forest, so
    samples never interact and padding neither receives attention nor changes a real token's output;
    padded positions output zeros. There is no attention dropout in replaced layers.

    Use :func:`hsa_attention` to create one; ``restore()`` (or leaving the ``with`` block) puts back the
    original attention, bit for bit.

    Attributes:
        layers: the replaced layers (indices into the model's attention layers, non-negative).
        names: their module names.
        hierarchy: the :data:`HierarchySource`; assign a new one between batches (e.g. each batch's
            text structures).
    """

    def __init__(self, model: nn.Module, layers: Sequence[int], hierarchy: HierarchySource, *, backend: str = "auto"):
        sites = find_attention_sites(model)
        if not sites:
            raise TypeError(
                f"{type(model).__name__}: no supported self-attention modules found (supported: {SUPPORTED})"
            )
        self.layers = _resolve_layers(layers, len(sites))
        self.names = [sites[i].name for i in self.layers]
        self.backend = backend
        self.hierarchy = hierarchy
        self._restores: list[Callable[[], None]] = []
        try:
            for i in self.layers:
                self._restores.append(sites[i].install(self._attend_fn(i, sites[i].name)))
        except Exception:
            self.restore()
            raise

    @property
    def hierarchy(self) -> HierarchySource:
        return self._source

    @hierarchy.setter
    def hierarchy(self, source: HierarchySource) -> None:
        if not callable(source) and not isinstance(source, Sequence):
            raise TypeError(
                f"hierarchy must be a function of the token count or a sequence of hierarchies, "
                f"got {type(source).__name__}"
            )
        self._source = source
        self._by_count: dict[int, TokenHierarchy] = {}
        self._forest: _Forest | None = None

    @property
    def active(self) -> bool:
        return bool(self._restores)

    def restore(self) -> None:
        """Put back the original attention of every replaced layer (idempotent)."""
        while self._restores:
            self._restores.pop()()

    def __enter__(self) -> HSAInjection:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def __repr__(self) -> str:
        return f"HSAInjection(layers={self.layers}, active={self.active}, backend={self.backend!r})"

    # -------------------------------------------------------------- the replaced attention
    def _attend_fn(self, layer: int, name: str):
        def attend(q, k, v, key_valid, scale):
            return self._attend(q, k, v, key_valid, scale, f"layer {layer} ({name})")

        return attend

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_valid: torch.Tensor | None,
        scale: float,
        where: str,
    ) -> torch.Tensor:
        """q, k: [B, H, L, D], v: [B, H, L, Dv], key_valid: [B, L] bool or None -> [B, L, H, Dv]."""
        batch, heads, length, _ = q.shape
        forest = self._forest_for(key_valid, batch, length, where, q.device)

        def leaves(x: torch.Tensor) -> torch.Tensor:  # [B, H, L, C] -> [N, H, C] in the forest's leaf order
            return x.transpose(1, 2).reshape(batch * length, heads, x.shape[-1])[forest.index]

        out = hsa(
            leaves(q), leaves(k), leaves(v), forest.hierarchy, include_self=True, scale=scale, backend=self.backend
        )
        full = out.new_zeros(batch * length, heads, v.shape[-1]).index_copy_(0, forest.index, out)
        return full.view(batch, length, heads, v.shape[-1])

    def _forest_for(self, key_valid, batch: int, length: int, where: str, device) -> _Forest:
        """The batch's forest, reused across the replaced layers of one forward (same mask, same source)."""
        cached = self._forest
        source = (self._source,) if callable(self._source) else tuple(self._source)
        if (
            cached is not None
            and cached.shape == (batch, length)
            and len(cached.source) == len(source)
            and all(a is b for a, b in zip(cached.source, source))
            and (cached.valid is None) == (key_valid is None)
            and (key_valid is None or torch.equal(cached.valid, key_valid))
        ):
            return cached
        if key_valid is None:
            positions = [torch.arange(length)] * batch
        else:
            positions = [torch.nonzero(row).flatten().cpu() for row in key_valid]
        if not callable(self._source) and len(self._source) != batch:
            raise ValueError(f"{where}: {len(self._source)} hierarchies given for a batch of {batch} samples")
        trees, index = [], []
        for b, pos in enumerate(positions):
            tree = self._tree(b, len(pos))
            if tree.num_leaves != len(pos):
                padded = " real (unpadded)" if key_valid is not None else ""
                raise ValueError(
                    f"{where}, sample {b}: the hierarchy has {tree.num_leaves} leaves but the sequence "
                    f"has {len(pos)}{padded} tokens"
                )
            trees.append(tree.hierarchy)
            index.append(b * length + (pos if tree.order is None else pos[tree.order]))
        forest = _Forest(
            source,
            None if key_valid is None else key_valid.clone(),
            (batch, length),
            Hierarchy.batch(trees).to(device),
            torch.cat(index).to(device),
        )
        self._forest = forest
        return forest

    def _tree(self, sample: int, count: int) -> TokenHierarchy:
        if not callable(self._source):
            return TokenHierarchy.of(self._source[sample])
        if count not in self._by_count:
            self._by_count[count] = TokenHierarchy.of(self._source(count))
        return self._by_count[count]


def hsa_attention(
    model: nn.Module, layers: Sequence[int], hierarchy: HierarchySource, *, backend: str = "auto"
) -> HSAInjection:
    """Replace the softmax attention of ``layers`` of ``model`` with HSA; a context manager too.

        with hsa_attention(model, layers=[-2, -1], hierarchy=window_hierarchy):
            out = model(**batch)          # the last two layers attend through HSA
        # the original attention is back

    Args:
        model: a Hugging Face BERT-family encoder, a timm ViT, or an open_clip tower/transformer (for a
            whole CLIP model the layers count its image tower first, then the causal text tower, which
            HSA cannot replace).
        layers: indices into the model's self-attention layers in forward order (negative from the end).
        hierarchy: a :data:`HierarchySource`, e.g. ``lambda n: window_hierarchy(n, (2, 4, 8, 16))``, or a
            list with each sample's :func:`~mmhsa.inject.text_hierarchy`.
        backend: the :func:`mmhsa.hsa` backend.

    Raises:
        TypeError: the model has no supported attention modules, or a chosen one is causal.
        ValueError: a layer index out of range or repeated, or a layer already replaced. During the
            forward: a hierarchy whose leaf count differs from the sample's real token count.
    """
    return HSAInjection(model, layers, hierarchy, backend=backend)


def _resolve_layers(layers: Sequence[int], count: int) -> list[int]:
    if isinstance(layers, int):
        layers = [layers]
    if len(layers) == 0:
        raise ValueError("layers: no layer given")
    resolved = []
    for layer in layers:
        if not -count <= int(layer) < count:
            raise ValueError(
                f"layers: index {layer} is out of range for a model with {count} attention layers "
                f"(valid: {-count}..{count - 1})"
            )
        resolved.append(int(layer) % count)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"layers: {list(layers)} names a layer twice")
    return sorted(resolved)
