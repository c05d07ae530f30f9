"""Autograd wrapper and launch logic for the Triton family-attention kernels.

All families of all levels go through one forward launch per block-size bucket (small upper-level
families in 16-row blocks, large leaf families in ``LARGE_BLOCK``-row blocks); the tree passes
around it stay in PyTorch (:mod:`mmhsa.attention.dynamic`).
"""

from __future__ import annotations

import os

import torch
import triton

from ...hierarchy import LevelPlan
from .family_kernels import _family_bwd_dkdv, _family_bwd_dq, _family_fwd

SMALL_BLOCK = 16
# Rows per block for families larger than SMALL_BLOCK; the interpreter (CPU tests) keeps tiles tiny.
LARGE_BLOCK = 16 if os.environ.get("TRITON_INTERPRET") == "1" else 64


def block_tables(plan: LevelPlan) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per bucket: (block rows, first node [B], family size [B], first row in family [B]) as int32.

    Families of one child attend to nothing and get no blocks.
    """
    cache = plan.__dict__.setdefault("_triton_tables", {})  # a frozen dataclass still has a __dict__
    if plan.family_start.device in cache:
        return cache[plan.family_start.device]
    start, size = plan.family_start.cpu(), plan.family_size.cpu()
    tables = []
    for block, chosen in ((SMALL_BLOCK, (size > 1) & (size <= SMALL_BLOCK)), (LARGE_BLOCK, size > SMALL_BLOCK)):
        s, n = start[chosen], size[chosen]
        if len(s) == 0:
            continue
        per_family = (n + block - 1) // block
        fam = torch.repeat_interleave(torch.arange(len(s)), per_family)
        first = torch.arange(len(fam)) - torch.repeat_interleave(torch.cumsum(per_family, 0) - per_family, per_family)
        device = plan.family_start.device
        tables.append((block, s[fam].int().to(device), n[fam].int().to(device), (first * block).int().to(device)))
    cache[plan.family_start.device] = tables
    return tables


def _launch_args(q, k, v):
    dk, dv = q.shape[-1], v.shape[-1]
    return dict(DK=dk, DV=dv, BLOCK_DK=triton.next_power_of_2(max(dk, 16)),
                BLOCK_DV=triton.next_power_of_2(max(dv, 16)), IEEE=q.dtype == torch.float32)


class TritonFamilyAttention(torch.autograd.Function):
    """(q [M,H,Dk], k [M,H,Dk], v [M,H,Dv], log_n [M] fp32) -> (eta [M,H], u [M,H,Dv]) fp32.

    Nodes in level order; rows that are in no family (roots) or only children get -inf and 0.
    """

    @staticmethod
    def forward(ctx, q, k, v, log_n, plan):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        m, heads, _ = q.shape
        eta = q.new_full((m, heads), float("-inf"), dtype=torch.float32)
        u = q.new_zeros((m, heads, v.shape[-1]), dtype=torch.float32)
        meta = _launch_args(q, k, v)
        for block, starts, sizes, rows in block_tables(plan):
            _family_fwd[(len(starts), heads)](
                q, k, v, log_n, eta, u, starts, sizes, rows,
                q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                u.stride(0), u.stride(1), eta.stride(0),
                BLOCK_M=block, BLOCK_N=block, **meta,
            )
        ctx.save_for_backward(q, k, v, log_n, eta, u)
        ctx.plan = plan
        return eta, u

    @staticmethod
    def backward(ctx, grad_eta, grad_u):
        q, k, v, log_n, eta, u = ctx.saved_tensors
        m, heads, _ = q.shape
        grad_eta = torch.zeros_like(eta) if grad_eta is None else grad_eta
        grad_u = torch.zeros_like(u) if grad_u is None else grad_u
        row = ((grad_u * u).sum(-1) - grad_eta).contiguous()  # [M, H]
        gu = grad_u.to(q.dtype).contiguous()  # tensor-core inputs in the inputs' precision
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        dk = torch.zeros(k.shape, dtype=torch.float32, device=q.device)
        dv = torch.zeros(v.shape, dtype=torch.float32, device=q.device)
        meta = _launch_args(q, k, v)
        for block, starts, sizes, rows in block_tables(ctx.plan):
            common = (starts, sizes, rows, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                      v.stride(0), v.stride(1), gu.stride(0), gu.stride(1), eta.stride(0))
            _family_bwd_dkdv[(len(starts), heads)](q, k, v, log_n, eta, row, gu, dk, dv, *common,
                                                   BLOCK_M=block, BLOCK_N=block, **meta)
            _family_bwd_dq[(len(starts), heads)](q, k, v, log_n, eta, row, gu, dq, *common,
                                                 BLOCK_M=block, BLOCK_N=block, **meta)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None


def family_pass_triton(plan: LevelPlan, rq: list, rk: list, rv: list, log_n: torch.Tensor, kernel_dtype):
    """The family pass of every level in one go (see :func:`mmhsa.attention.dynamic.family_pass_torch`).

    Args:
        rq, rk, rv: per level [M_d, H, C] (fp32 or fp64 node statistics).
        log_n: [M] log leaf counts (level order).
        kernel_dtype: dtype the kernels read (the caller's input dtype: fp16/bf16 use tensor cores).

    Returns:
        per level: eta [M_d, H] and u [M_d, H, Dv] in the statistics' dtype.
    """
    acc = rq[0].dtype
    if kernel_dtype not in (torch.float16, torch.bfloat16, torch.float32):
        kernel_dtype = torch.float32  # fp64 inputs: the kernels compute in fp32
    q, k, v = (torch.cat(x).to(kernel_dtype) for x in (rq, rk, rv))
    eta, u = TritonFamilyAttention.apply(q, k, v, log_n.float().contiguous(), plan)
    sizes = [x.shape[0] for x in rq]
    return list(eta.to(acc).split(sizes)), list(u.to(acc).split(sizes))
