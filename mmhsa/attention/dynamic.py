"""The exact HSA operator as a vectorised two-pass dynamic program in PyTorch (hsa-math.md section 3).

Works on any device and dtype (fp16/bf16 inputs accumulate in fp32; fp64 stays fp64). All arrays are
kept heads-first in *level order* (see :class:`mmhsa.hierarchy.LevelPlan`), so a level is a slice
and a family a contiguous segment. Python loops run over tree depth and over family-size buckets,
never over nodes or families:

1. bottom-up: leaf-count-weighted means rho_q, rho_k, rho_v of every node;
2. all families of all levels at once: each child's attention over its siblings gives eta and u;
3. bottom-up: lam (log "stay inside" partition);
4. top-down: R (log-probability of reaching a node's inside) and O (accumulated output);
5. out_i = O(leaf i) (+ exp(R(leaf i)) v_i under include_self).

``-inf`` is structural here (no sibling: eta; nothing inside: lam), so it is handled with masks and
finite placeholders, which keeps values *and gradients* free of NaN on degenerate trees.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..hierarchy import Hierarchy, LevelPlan
from .family import family_attention
from .inputs import accumulation_dtype, check_inputs


def _reduce_up(
    plan: LevelPlan,
    leaf_values: torch.Tensor,
    child_term: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Bottom-up weighted mean: node value = sum over children of (n(child)/n(node)) * term(child).

    Args:
        leaf_values: [H, N, C] values of the leaves.
        child_term: maps a finished level's values [H, M_d, C] (and d) to what its parents average;
            identity by default.

    Returns:
        [H, M, C] values of all nodes in level order.
    """
    heads, _, channels = leaf_values.shape
    weight = plan.child_weight.to(leaf_values.dtype)
    levels: list[torch.Tensor] = [None] * plan.num_levels  # type: ignore[list-item]
    for d in reversed(range(plan.num_levels)):
        first = plan.level_leaf_first[d]
        size = plan.level_ptr[d + 1] - plan.level_ptr[d]
        if first is not None:  # a level made of consecutive leaves only: a slice, no scatter
            levels[d] = leaf_values[:, first:first + size]
            continue
        out = leaf_values.new_zeros(heads, size, channels)
        leaf_ids, local = plan.level_leaves(d)
        if len(leaf_ids):
            out = out.index_add(1, local, leaf_values[:, leaf_ids])
        if d + 1 < plan.num_levels:
            below = plan.level(d + 1)
            child = levels[d + 1] if child_term is None else child_term(levels[d + 1], d + 1)
            out = out.index_add(1, plan.parent_local[below], child * weight[below][None, :, None])
        levels[d] = out
    return torch.cat(levels, dim=1)


def _family_pass(plan: LevelPlan, rq, rk, rv) -> tuple[torch.Tensor, torch.Tensor]:
    """eta [H, M] and u [H, M, Dv] of every node (level order); roots get 0, as do lone children."""
    heads, dv = rq.shape[0], rv.shape[-1]
    log_n = plan.n.to(rq.dtype).log()
    neg_inf = torch.tensor(float("-inf"), dtype=rq.dtype, device=rq.device)
    etas, us = [], []
    for _, members, valid in plan.buckets:
        bias = torch.where(valid, log_n[members], neg_inf)  # key bias log n(B); padding masked
        eta, u = family_attention(rq[:, members], rk[:, members], rv[:, members], bias)
        etas.append(eta.reshape(heads, -1))
        us.append(u.reshape(heads, -1, dv))
    roots = plan.level_ptr[1]
    eta = torch.cat([rq.new_zeros(heads, roots)] + ([torch.cat(etas, 1)[:, plan.bucket_gather]] if etas else []), 1)
    u = torch.cat([rv.new_zeros(heads, roots, dv)] + ([torch.cat(us, 1)[:, plan.bucket_gather]] if us else []), 1)
    return eta, u


def hsa_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    hierarchy: Hierarchy,
    *,
    pos: torch.Tensor | None = None,
    include_self: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """HSA output by the dynamic program. Shapes as :func:`mmhsa.hsa`: q, k [N,H,D], v [N,H,Dv] -> [N,H,Dv]."""
    t, pos = check_inputs(q, k, v, hierarchy, pos, scale)
    plan = hierarchy.plan
    acc = accumulation_dtype(q.dtype)
    d, dv = q.shape[-1], v.shape[-1]
    qh = (q.to(acc) * t).transpose(0, 1)  # [H, N, D], the scale folded into the queries
    kh = k.to(acc).transpose(0, 1)
    vh = v.to(acc).transpose(0, 1)

    # 1. rho_q, rho_k, rho_v for every node, in one bottom-up pass.
    rho = _reduce_up(plan, torch.cat([qh, kh, vh], dim=-1))
    rq, rk, rv = rho.split([d, d, dv], dim=-1)
    e = None
    if pos is not None:  # s(A, B) = e(A).e(B) + t rho_q(A).rho_k(B): one dot product of [q, e].[k, e]
        e = pos.to(acc)[plan.node].transpose(0, 1)  # [H, M, C] in level order
        rq, rk = torch.cat([rq, e], -1), torch.cat([rk, e], -1)

    # 2. Family attention of all levels.
    eta, u = _family_pass(plan, rq, rk, rv)
    sib = plan.has_sibling  # [M]: eta finite
    stays = torch.ones_like(sib) if include_self else plan.n >= 2  # [M]: lam finite
    eta = torch.where(sib, eta, 0.0)

    # 3. lam, bottom-up; placeholders (0) where it is -inf never reach a finite parent.
    if include_self:
        leaf_lam = (qh * kh).sum(-1)
        if e is not None:
            ee = (e * e).sum(-1)  # [H, M]
            leaf_lam = leaf_lam + ee[:, plan.leaf_pos]
    else:
        leaf_lam = qh.new_zeros(qh.shape[:2])

    def stay_or_leave(lam_d: torch.Tensor, depth: int) -> torch.Tensor:
        sl = plan.level(depth)
        eta_d = eta[:, sl, None]
        both = torch.logaddexp(lam_d, eta_d)
        return torch.where(sib[sl, None], torch.where(stays[sl, None], both, eta_d), lam_d)

    lam = _reduce_up(plan, leaf_lam[..., None], stay_or_leave)[..., 0]  # [H, M]

    # 4. Top-down: log mu(A) and w(A) = 1 - mu(A), then R and O level by level.
    log_mu = torch.where(sib, torch.where(stays, F.logsigmoid(lam - eta), float("-inf")), 0.0)
    leave = torch.where(sib, torch.where(stays, torch.sigmoid(eta - lam), 1.0), 0.0)
    roots = plan.level_ptr[1]
    reach = [lam.new_zeros(lam.shape[0], roots)]
    # Roots output nothing; multiplying (not new_zeros) keeps even an all-lone-leaf batch in the graph.
    out = [rv[:, :roots] * 0.0]
    for depth in range(1, plan.num_levels):
        sl = plan.level(depth)
        up = plan.parent_local[sl]
        r_parent = reach[-1][:, up]
        reach.append(r_parent + log_mu[:, sl])
        out.append(out[-1][:, up] + (r_parent.exp() * leave[:, sl])[..., None] * u[:, sl])
    out_nodes = torch.cat(out, 1)

    # 5. Leaves.
    result = out_nodes[:, plan.leaf_pos]
    if include_self:
        result = result + torch.cat(reach, 1)[:, plan.leaf_pos].exp()[..., None] * vh
    return result.transpose(0, 1).to(v.dtype)
