"""The exact HSA operator as a vectorised two-pass dynamic program in PyTorch (docs/operator.md section 3).

Works on any device and dtype (fp16/bf16 inputs accumulate in fp32; fp64 stays fp64). Arrays are
node-major like the inputs (``[nodes, H, C]``) and kept per level in *level order* (see
:class:`mmhsa.hierarchy.LevelPlan`), so a level is a slice and a family a contiguous segment. Python
loops run over tree depth and over family-size buckets, never over nodes or families:

1. bottom-up: leaf-count-weighted means rho_q, rho_k, rho_v of every node;
2. all families (per level here; in one launch with the Triton pass): each child's attention over
   its siblings gives eta and u;
3. bottom-up: lam (log "stay inside" partition);
4. top-down: R (log-probability of reaching a node's inside) and O (accumulated output);
5. out_i = O(leaf i) (+ exp(R(leaf i)) v_i under include_self).

``-inf`` is structural here (no sibling: eta; nothing inside: lam), so it is handled with masks and
finite placeholders, which keeps values *and gradients* free of NaN on degenerate trees.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..hierarchy import FamilyLayout, Hierarchy, LevelPlan
from .family_torch import family_attention
from .inputs import accumulation_dtype, check_inputs


def _children_per_node(plan: LevelPlan, d: int) -> int:
    """S if every node of level d-1 has exactly S children (level d is a [M_{d-1}, S] grid), else 0."""
    layout = plan.families[d]
    above = plan.level_ptr[d] - plan.level_ptr[d - 1]
    if layout.size is not None and above * layout.size == plan.level_ptr[d + 1] - plan.level_ptr[d]:
        return layout.size
    return 0


def _reduce_up(
    plan: LevelPlan,
    leaf_values: torch.Tensor,
    child_term: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Bottom-up weighted mean: node value = sum over children of (n(child)/n(node)) * term(child).

    Args:
        leaf_values: [N, H, C] values of the leaves.
        child_term: maps a finished level's values [M_d, H, C] (and d) to what its parents average;
            identity by default.

    Returns:
        per level d, [M_d, H, C] values of its nodes (level order).
    """
    _, heads, channels = leaf_values.shape
    weight = plan.child_weight.to(leaf_values.dtype)
    levels: list[torch.Tensor] = [None] * plan.num_levels  # type: ignore[list-item]
    for d in reversed(range(plan.num_levels)):
        first = plan.level_leaf_first[d]
        size = plan.level_ptr[d + 1] - plan.level_ptr[d]
        if first is not None:  # a level made of consecutive leaves only: a slice, no scatter
            levels[d] = leaf_values[first : first + size]
            continue
        s = _children_per_node(plan, d + 1) if d + 1 < plan.num_levels else 0
        if s:  # every node has S children (so no leaf): [F, 1, S] @ [F, S, H*C], a batched weighted sum
            below = plan.level(d + 1)
            child = levels[d + 1] if child_term is None else child_term(levels[d + 1], d + 1)
            w = weight[below].view(size, 1, s)
            levels[d] = torch.bmm(w, child.reshape(size, s, heads * channels)).view(size, heads, channels)
            continue
        out = leaf_values.new_zeros(size, heads, channels)
        leaf_ids, local = plan.level_leaves(d)
        if len(leaf_ids):
            out = out.index_add(0, local, leaf_values[leaf_ids])
        if d + 1 < plan.num_levels:
            below = plan.level(d + 1)
            child = levels[d + 1] if child_term is None else child_term(levels[d + 1], d + 1)
            out = out.index_add(0, plan.parent_local[below], child * weight[below][:, None, None])
        levels[d] = out
    return levels


def _family_level(layout: FamilyLayout, log_n, rq, rk, rv) -> tuple[torch.Tensor, torch.Tensor]:
    """eta [M_d, H] and u [M_d, H, Dv] for the families of one level (lone children: -inf and 0).

    Args:
        log_n: [M_d] log leaf counts (the key bias); rq, rk: [M_d, H, Dk]; rv: [M_d, H, Dv].
    """
    size_d, heads, dv = rv.shape
    if layout.size is not None:  # families tile the level: views, no copies
        f, s = size_d // layout.size, layout.size
        bias = None if layout.single_leaf_keys else log_n.view(f, s)
        eta, u = family_attention(rq.view(f, s, heads, -1), rk.view(f, s, heads, -1), rv.view(f, s, heads, dv), bias)
        return eta.view(size_d, heads), u.view(size_d, heads, dv)
    etas, us = [], []
    for _, members, valid in layout.buckets:
        bias = torch.where(valid, log_n[members], float("-inf"))  # padded keys masked
        eta, u = family_attention(rq[members], rk[members], rv[members], bias)
        etas.append(eta.flatten(0, 1))
        us.append(u.flatten(0, 1))
    return torch.cat(etas)[layout.gather], torch.cat(us)[layout.gather]


def family_pass_torch(plan: LevelPlan, rq: list, rk: list, rv: list, log_n: torch.Tensor, kernel_dtype=None):
    """Family attention of every level, level by level (all families of a level batched).

    Args:
        rq, rk, rv: per level [M_d, H, C] node statistics (scale and positions folded into rq, rk).
        log_n: [M] log leaf counts (level order).
        kernel_dtype: unused here (the Triton pass reads its inputs in this dtype).

    Returns:
        per level: eta [M_d, H] (-inf for roots and only children) and u [M_d, H, Dv].
    """
    eta, u = [torch.full(rv[0].shape[:2], float("-inf"), dtype=rv[0].dtype, device=rv[0].device)], [rv[0] * 0.0]
    for d in range(1, plan.num_levels):
        eta_d, u_d = _family_level(plan.families[d], log_n[plan.level(d)], rq[d], rk[d], rv[d])
        eta.append(eta_d)
        u.append(u_d)
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
    family_pass: Callable = family_pass_torch,
) -> torch.Tensor:
    """HSA output by the dynamic program. Shapes as :func:`mmhsa.hsa`: q, k [N,H,D], v [N,H,Dv] -> [N,H,Dv].

    ``family_pass`` computes step 2 (the Triton backend passes its kernels here).

    Under autocast (``bf16-mixed`` training) the operator keeps its own precision policy (fp32 accumulation,
    output in the dtype of ``v``): autocast is off inside. Otherwise autocast would run its matmuls in
    bf16/fp16 next to the fp32 accumulators, and the family attention's backward, which runs outside
    autocast, would meet fp32 and bf16 operands in one matmul (an error).
    """
    if torch.is_autocast_enabled(q.device.type):
        with torch.autocast(q.device.type, enabled=False):
            return hsa_torch(
                q, k, v, hierarchy, pos=pos, include_self=include_self, scale=scale, family_pass=family_pass
            )
    t, pos = check_inputs(q, k, v, hierarchy, pos, scale)
    plan = hierarchy.plan
    levels = plan.num_levels
    acc = accumulation_dtype(q.dtype)
    dv = v.shape[-1]
    q_leaf = q.to(acc) * t  # the scale folded into the queries
    k_leaf, v_leaf = k.to(acc), v.to(acc)

    # 1. rho_q, rho_k, rho_v for every node, bottom-up.
    rq, rk, rv = (_reduce_up(plan, x) for x in (q_leaf, k_leaf, v_leaf))
    if pos is not None:  # s(A, B) = e(A).e(B) + t rho_q(A).rho_k(B): one dot product of [q, e].[k, e]
        e_all = pos.to(acc)[plan.node]  # [M, H, C] in level order
        e = [e_all[plan.level(d)] for d in range(levels)]
        rq = [torch.cat([x, y], -1) for x, y in zip(rq, e)]
        rk = [torch.cat([x, y], -1) for x, y in zip(rk, e)]

    # 2. Family attention; no sibling (eta = -inf): placeholder 0, masked below.
    eta, u = family_pass(plan, rq, rk, rv, plan.n.to(acc).log(), q.dtype)
    eta = [torch.where(plan.has_sibling[plan.level(d), None], x, 0.0) for d, x in enumerate(eta)]

    # 3. lam, bottom-up; placeholders (0) where it is -inf never reach a finite parent.
    sib = plan.has_sibling[:, None]  # [M, 1]: eta finite
    stays = torch.ones_like(sib) if include_self else (plan.n >= 2)[:, None]  # [M, 1]: lam finite
    if include_self:
        leaf_lam = (q_leaf * k_leaf).sum(-1)
        if pos is not None:
            leaf_lam = leaf_lam + (e_all * e_all).sum(-1)[plan.leaf_pos]
    else:
        leaf_lam = q_leaf.new_zeros(q_leaf.shape[:2])

    def stay_or_leave(lam_d: torch.Tensor, depth: int) -> torch.Tensor:
        sl = plan.level(depth)
        eta_d = eta[depth][..., None]
        both = torch.logaddexp(lam_d, eta_d)
        return torch.where(sib[sl, :, None], torch.where(stays[sl, :, None], both, eta_d), lam_d)

    lam = [x[..., 0] for x in _reduce_up(plan, leaf_lam[..., None], stay_or_leave)]

    # 4. Top-down: log mu(A) and w(A) = 1 - mu(A), then R and O level by level. Where eta or lam is -inf
    # they are constants: no sibling, mu = 1 (log 0) and w = 0; a sibling but nothing inside, mu = 0, w = 1.
    both = sib & stays  # [M, 1]
    log_mu_else = torch.where(sib, float("-inf"), 0.0).to(lam[0].dtype)
    leave_else = sib.to(lam[0].dtype)
    reach = [lam[0].new_zeros(lam[0].shape)]
    out = [u[0]]  # roots output nothing (the pass gives them u = 0, kept in the graph)
    for d in range(1, levels):
        sl = plan.level(d)
        x = lam[d] - eta[d]
        log_mu = torch.where(both[sl], F.logsigmoid(x), log_mu_else[sl])
        leave = torch.where(both[sl], torch.sigmoid(-x), leave_else[sl])
        s = _children_per_node(plan, d)
        if s:  # broadcast the parents over their children instead of gathering
            f = plan.level_ptr[d] - plan.level_ptr[d - 1]
            r_parent = reach[-1][:, None]  # [F, 1, H]
            coef = (r_parent.exp() * leave.view(f, s, -1))[..., None]
            out.append(torch.addcmul(out[-1][:, None], coef, u[d].view(f, s, -1, dv)).flatten(0, 1))
            reach.append((r_parent + log_mu.view(f, s, -1)).flatten(0, 1))
        else:
            up = plan.parent_local[sl]
            r_parent = reach[-1][up]
            out.append(torch.addcmul(out[-1][up], (r_parent.exp() * leave)[..., None], u[d]))
            reach.append(r_parent + log_mu)

    # 5. Leaves: a slice of one level when the leaves fill it in order, else a gather.
    last = levels - 1
    if plan.level_leaf_first[last] == 0 and plan.level_ptr[last + 1] - plan.level_ptr[last] == q.shape[0]:
        result, leaf_reach = out[last], reach[last]
    else:
        result = torch.cat(out)[plan.leaf_pos]
        leaf_reach = torch.cat(reach)[plan.leaf_pos]
    if include_self:
        result = torch.addcmul(result, leaf_reach.exp()[..., None], v_leaf)
    return result.to(v.dtype)
