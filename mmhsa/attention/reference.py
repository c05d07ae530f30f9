"""Reference HSA: the dense attention matrix theta, straight from the formulas (docs/operator.md section 2).

Slow (O(M^2) memory) and meant for checking the fast paths and for plots; works in float64. Written
independently of the dynamic program: block logits for every sibling pair, then theta assembled
pair by pair through the leaf-membership matrix.
"""

from __future__ import annotations

import torch

from ..hierarchy import Hierarchy
from .inputs import accumulation_dtype, check_inputs


def hsa_matrix(
    q: torch.Tensor,
    k: torch.Tensor,
    hierarchy: Hierarchy,
    *,
    pos: torch.Tensor | None = None,
    include_self: bool = False,
    scale: float | None = None,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Dense HSA attention matrix.

    Args:
        q, k: [N, H, D] leaf queries and keys in hierarchy leaf order.
        hierarchy: the forest.
        pos: optional [M, H, C] or [M, C] node position vectors e(A) (pre-order).
        include_self: let a leaf attend to itself (flat case = softmax with the diagonal).
        scale: logit scale t (default 1/sqrt(D)).
        compute_dtype: arithmetic dtype (default fp32, fp64 for fp64 inputs); tests set fp16/bf16
            to measure what a naive low-precision computation loses.

    Returns:
        theta: [H, N, N], row i = leaf i's attention weights (rows sum to 1, or 0 if nothing to attend).
    """
    t, pos = check_inputs(q, k, None, hierarchy, pos, scale)
    acc = compute_dtype or accumulation_dtype(q.dtype)
    h = hierarchy
    mem = h.membership(acc)  # [M, N]
    n = mem.sum(1)  # [M]
    rho_q = torch.einsum("mn,nhd->hmd", mem, q.to(acc)) / n[None, :, None]
    rho_k = torch.einsum("mn,nhd->hmd", mem, k.to(acc)) / n[None, :, None]
    s = t * rho_q @ rho_k.transpose(1, 2)  # [H, M, M] block logits s(A, B)
    if pos is not None:
        e = pos.to(acc).transpose(0, 1)  # [H, M, C]
        s = s + e @ e.transpose(1, 2)
    parent = h.parent
    m = h.num_nodes
    sib = (parent[:, None] == parent[None, :]) & (parent[:, None] >= 0) & ~torch.eye(m, dtype=torch.bool)
    neg_inf = torch.tensor(float("-inf"), dtype=acc)
    eta = torch.logsumexp(torch.where(sib, s + n.log()[None, None, :], neg_inf), dim=-1)  # [H, M]

    # lam bottom-up: children have larger pre-order ids than their parent.
    is_leaf = h.num_children == 0
    children = [[] for _ in range(m)]
    for c, p in enumerate(parent.tolist()):
        if p >= 0:
            children[p].append(c)
    lam = [None] * m
    for a in range(m - 1, -1, -1):
        if is_leaf[a]:
            lam[a] = s[:, a, a] if include_self else torch.full_like(s[:, a, a], float("-inf"))
        else:
            terms = [(n[c] / n[a]) * torch.logaddexp(lam[c], eta[:, c]) for c in children[a]]
            lam[a] = torch.stack(terms).sum(0)
    lam = torch.stack(lam, dim=1)  # [H, M]
    log_z = torch.logaddexp(lam, eta)  # log partition of everything a leaf of A can attend from A's level
    has_sib = sib.any(1)
    # mu(A): probability of staying inside A; 1 when A has no sibling to leave for.
    mu = torch.where(has_sib[None], torch.exp(lam - torch.where(has_sib[None], log_z, 0.0)), 1.0)
    reach = [torch.ones_like(lam[:, 0])] * m  # product of mu over proper ancestors below the root
    for a in range(m):
        p = int(parent[a])
        if p >= 0 and int(parent[p]) >= 0:
            reach[a] = reach[p] * mu[:, p]
    reach = torch.stack(reach, dim=1)  # [H, M]
    block = torch.where(
        sib[None], reach[:, :, None] * torch.exp(s - torch.where(sib[None], log_z[:, :, None], 0.0)), 0.0
    )
    theta = mem.t() @ block @ mem  # [H, N, N]
    if include_self:
        leaf = h.leaf_node
        theta = theta + torch.diag_embed(reach[:, leaf] * mu[:, leaf])
    return theta


def hsa_reference(q, k, v, hierarchy, *, pos=None, include_self=False, scale=None, compute_dtype=None) -> torch.Tensor:
    """``theta @ v`` with the dense matrix; returns [N, H, Dv] in the dtype of ``v``."""
    theta = hsa_matrix(q, k, hierarchy, pos=pos, include_self=include_self, scale=scale, compute_dtype=compute_dtype)
    out = theta @ v.to(theta.dtype).transpose(0, 1)  # [H, N, Dv]
    return out.transpose(0, 1).to(v.dtype)
