"""Autograd wrapper and launch logic for the Triton family-attention kernels.

Families are cut into size buckets (:func:`buckets`), each launched once with its own block size
and warp count, for all levels together; the tree passes around it stay in PyTorch
(:mod:`mmhsa.attention.dynamic`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from ...hierarchy import LevelPlan
from .family_kernels import _family_bwd_dkdv, _family_bwd_dq, _family_fwd

# Largest element offset the kernels address with 32-bit arithmetic (beyond it they switch to 64-bit).
INT32_OFFSETS_MAX = 2**31 - 1


@dataclass(frozen=True)
class Bucket:
    """Families of up to ``largest`` children (None: all larger ones) run in ``block``-row programs
    that walk their keys ``block`` at a time, with ``warps`` warps."""

    largest: int | None
    block: int
    warps: int


def buckets(dtype: torch.dtype, block_d: int, backward: bool = False) -> tuple[Bucket, ...]:
    """The launch table for inputs of ``dtype`` whose padded head dim (the larger of q/k and v) is
    ``block_d``, for the forward kernel or the two backward ones.

    Chosen from the kernels' compiled resources (``python -m mmhsa.attention.triton.resources``, no GPU
    needed; tests/mmhsa/test_triton_resources.py checks every entry on sm_80, sm_86 and sm_90): no
    register spills and at most 99 KB of shared memory. Why not one block size: fp32 runs exact
    (IEEE) FMA dot products, which need far more registers than tensor cores, and a 64-row fp32
    block spills kilobytes; the backward keeps two accumulators per row and spills at 64 rows on
    Ampere; a head dim of 128 spills at 64 rows on every architecture.
    """
    small = Bucket(16, 16, 4)
    if block_d > 128:
        return (Bucket(None, 16, 4),)
    if dtype == torch.float32:
        return (Bucket(None, 16, 4),) if block_d > 64 else (small, Bucket(None, 32, 8))
    if block_d > 64:
        return small, Bucket(None, 32, 4)
    if backward:
        return small, Bucket(None, 32, 8)
    return small, Bucket(32, 32, 4), Bucket(None, 64, 8)


def block_tables(
    plan: LevelPlan, table: tuple[Bucket, ...]
) -> list[tuple[Bucket, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per non-empty bucket: (bucket, first node [B], family size [B], first row in family [B]), int32,
    one entry per block of ``bucket.block`` rows.

    Families of one child attend to nothing and get no blocks.
    """
    cache = plan.__dict__.setdefault("_triton_tables", {})  # a frozen dataclass still has a __dict__
    key = (plan.family_start.device, table)
    if key in cache:
        return cache[key]
    start, size = plan.family_host
    tables, smallest = [], 2  # families of one child get no blocks
    for bucket in table:
        chosen = size >= smallest
        if bucket.largest is not None:
            chosen &= size <= bucket.largest
            smallest = bucket.largest + 1
        s, n = start[chosen], size[chosen]
        if len(s) == 0:
            continue
        per_family = (n + bucket.block - 1) // bucket.block
        fam = torch.repeat_interleave(torch.arange(len(s)), per_family)
        first = torch.arange(len(fam)) - torch.repeat_interleave(torch.cumsum(per_family, 0) - per_family, per_family)
        device = plan.family_start.device
        tables.append((bucket, *(x.int().to(device) for x in (s[fam], n[fam], first * bucket.block))))
    cache[key] = tables
    return tables


def _launch_args(q, k, v) -> tuple[dict, int]:
    """The kernels' shape arguments (head dims padded to a power of two, at least 16 for tl.dot)
    and the larger padded head dim (what the bucket table depends on)."""
    dk, dv = q.shape[-1], v.shape[-1]
    block_dk, block_dv = (triton.next_power_of_2(max(d, 16)) for d in (dk, dv))
    wide = max(x.numel() for x in (q, k, v)) > INT32_OFFSETS_MAX
    meta = dict(DK=dk, DV=dv, BLOCK_DK=block_dk, BLOCK_DV=block_dv, IEEE=q.dtype == torch.float32, WIDE=wide)
    return meta, max(block_dk, block_dv)


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
        meta, block_d = _launch_args(q, k, v)
        for bucket, starts, sizes, rows in block_tables(plan, buckets(q.dtype, block_d)):
            _family_fwd[(len(starts), heads)](
                q,
                k,
                v,
                log_n,
                eta,
                u,
                starts,
                sizes,
                rows,
                q.stride(0),
                q.stride(1),
                k.stride(0),
                k.stride(1),
                v.stride(0),
                v.stride(1),
                u.stride(0),
                u.stride(1),
                eta.stride(0),
                BLOCK_M=bucket.block,
                BLOCK_N=bucket.block,
                num_warps=bucket.warps,
                **meta,
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
        meta, block_d = _launch_args(q, k, v)
        for bucket, starts, sizes, rows in block_tables(ctx.plan, buckets(q.dtype, block_d, backward=True)):
            launch = dict(BLOCK_M=bucket.block, BLOCK_N=bucket.block, num_warps=bucket.warps, **meta)
            common = (
                starts,
                sizes,
                rows,
                q.stride(0),
                q.stride(1),
                k.stride(0),
                k.stride(1),
                v.stride(0),
                v.stride(1),
                gu.stride(0),
                gu.stride(1),
                eta.stride(0),
            )
            _family_bwd_dkdv[(len(starts), heads)](q, k, v, log_n, eta, row, gu, dk, dv, *common, **launch)
            _family_bwd_dq[(len(starts), heads)](q, k, v, log_n, eta, row, gu, dq, *common, **launch)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None


# Under torch.compile the tree passes around this are compiled and the kernels run as they are (one
# graph break): Dynamo would otherwise trace into the launch code and the CPU table building.
@torch.compiler.disable
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
