"""Attention cost of one layer: HSA over a hierarchy versus the flat softmax it replaces."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..hierarchy import Hierarchy
from .hierarchies import TokenHierarchy

__all__ = ["AttentionFlops", "attention_flops"]


@dataclass(frozen=True)
class AttentionFlops:
    """FLOPs (2 per multiply-add) of one attention layer, all heads, summed over the trees given."""

    softmax: int
    hsa: int

    @property
    def saved(self) -> float:
        """Fraction of the softmax FLOPs that HSA saves (negative when it costs more)."""
        return 1.0 - self.hsa / self.softmax


def attention_flops(
    tree: Hierarchy | TokenHierarchy, heads: int, head_dim: int, value_dim: int | None = None
) -> AttentionFlops:
    """Attention FLOPs of a layer for a hierarchy, HSA (include_self) versus flat softmax attention.

    Counted: the multiply-adds of the attention itself (x2 for FLOPs), per head, with d = ``head_dim``,
    dv = ``value_dim`` (default d); the q/k/v and output projections are the same on both sides and
    not counted. For a tree with N leaves, M nodes and families F of sizes b_F (a forest sums its trees):

        softmax = 2 H N^2 (d + dv)                       QK^T and AV

        hsa     = 2 H [ sum_F b_F^2 (d + dv)             family attention: rho_q.rho_k logits and the
                                                         weighted rho_v, as computed (a dense b x b
                                                         block; the diagonal is masked, not skipped)
                      + (M - 1)(2d + dv)                 rho_q, rho_k, rho_v: each non-root node adds
                                                         its weighted statistics into its parent
                      + (M - 1) dv                       top-down output O(A) = O(parent) + c u(A)
                      + N (d + dv) ]                     include_self: q_i.k_i and exp(R_i) v_i

    The scalar per-node work (lam, mu, R: a few operations per node and head, no d factor) is left
    out, as softmax's exp and normalisation are. This is docs/operator.md's cost, sum_F b^2 d for the family
    attentions plus O((N + M) d), written out.

    Args:
        tree: one sample's hierarchy (or a forest of several).
        heads, head_dim: the layer's H and d; ``value_dim`` dv if it differs from d.
    """
    h = TokenHierarchy.of(tree).hierarchy
    d = head_dim
    dv = head_dim if value_dim is None else value_dim
    leaves_per_tree = (h.tree_leaf_ptr[1:] - h.tree_leaf_ptr[:-1]).to(torch.int64)
    softmax = int((leaves_per_tree**2).sum()) * (d + dv)
    edges = h.num_nodes - h.num_trees
    families = int((h.plan.family_size.to(torch.int64) ** 2).sum()) * (d + dv)
    hsa = families + edges * (2 * d + dv) + edges * dv + h.num_leaves * (d + dv)
    return AttentionFlops(softmax=2 * heads * softmax, hsa=2 * heads * hsa)
