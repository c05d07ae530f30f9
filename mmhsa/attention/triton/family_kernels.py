"""Triton kernels for varlen family attention (docs/operator.md section 3, step 2), forward and backward.

Algorithm: FlashAttention-2 over variable-length segments. Nodes are packed in level order
(``[M, H, D]``); a family is a contiguous segment ``start..start+size-1`` of it (children of one
node), and all families of all levels are independent, so one launch covers them all. The work is
cut into *blocks*: (family, first query row) pairs of ``BLOCK_M`` rows; a program handles one block
and one head and walks the family's keys in tiles of ``BLOCK_N`` with an online softmax. Logits are
``q_A . k_B + log n(B)`` with the diagonal (A = B) masked; the caller has folded the scale and the
positional term into q and k. Outputs: ``eta`` (log-sum-exp, ``-inf`` for an only child) and ``u``
(the softmax average of v, 0 for an only child), both fp32.

Backward (recompute from the saved ``eta``, no attention matrix stored): with
``row_A = g_u(A).u(A) - g_eta(A)``, ``dlogits_AB = p_AB (g_u(A).v_B - row_A)``; one kernel
accumulates dk and dv per key block (looping over the family's query tiles), another dq per query
block, so no atomics are needed.

Limits and caveats:
- Head dims are padded to a power of two (masked), so 40 costs like 64.
- Offsets are 32-bit unless a tensor has 2^31 or more elements (``WIDE``; ~2.8M nodes at 12 heads x 64):
  64-bit offsets cost registers, and spill in the backward at head dim 128.
- The caller picks block sizes and warps per family-size bucket (``family.buckets``: tiny upper-level
  families in 16-row blocks, leaf families in 32 or 64); a family larger than one tile is walked tile
  by tile. Every configuration it can pick is compiled for sm_80/86/90 in the tests and checked for
  register spills and shared memory (``python -m mmhsa.attention.triton.resources``).
- fp32 inputs use exact (IEEE) dot products, fp16/bf16 inputs tensor cores with fp32 accumulation.
- Under ``TRITON_INTERPRET=1`` (CPU tests) bf16 arithmetic is wrong: test bf16 on a GPU only.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tile(PTR, rows, row_ok, h, stride_m, stride_h, cols, ncols):
    """Load a [len(rows), len(cols)] tile of a [M, H, C] tensor for head h (zeros outside)."""
    return tl.load(
        PTR + rows[:, None] * stride_m + h * stride_h + cols[None, :],
        mask=row_ok[:, None] & (cols[None, :] < ncols),
        other=0.0,
    )


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """a @ b with fp32 accumulation: exact for fp32 inputs, tensor cores for fp16/bf16."""
    if IEEE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b.to(a.dtype))


@triton.jit
def _family_fwd(
    Q,
    K,
    V,
    LOG_N,
    ETA,
    U,
    BLK_START,
    BLK_SIZE,
    BLK_ROW,
    stride_qm,
    stride_qh,
    stride_km,
    stride_kh,
    stride_vm,
    stride_vh,
    stride_um,
    stride_uh,
    stride_em,
    DK,
    DV,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    IEEE: tl.constexpr,
    WIDE: tl.constexpr,
):
    """One program: one query block (BLOCK_M children of a family) and one head."""
    blk = tl.program_id(0)
    h = tl.program_id(1)
    start = tl.load(BLK_START + blk)
    if WIDE:  # 64-bit offsets, only where a tensor has 2^31+ elements (they cost registers)
        start = start.to(tl.int64)
    size = tl.load(BLK_SIZE + blk)
    rows = tl.load(BLK_ROW + blk) + tl.arange(0, BLOCK_M)  # query rows within the family
    row_ok = rows < size
    dk = tl.arange(0, BLOCK_DK)
    dv = tl.arange(0, BLOCK_DV)
    q = _tile(Q, start + rows, row_ok, h, stride_qm, stride_qh, dk, DK)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for n0 in range(0, size, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < size
        k = _tile(K, start + cols, col_ok, h, stride_km, stride_kh, dk, DK)
        v = _tile(V, start + cols, col_ok, h, stride_vm, stride_vh, dv, DV)
        bias = tl.load(LOG_N + start + cols, mask=col_ok, other=0.0)
        s = _dot(q, tl.trans(k), IEEE) + bias[None, :]
        s = tl.where(col_ok[None, :] & (rows[:, None] != cols[None, :]), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
        m_i = m_new
    m_safe = tl.where(m_i == float("-inf"), 0.0, m_i)
    eta = tl.where(l_i > 0, m_safe + tl.log(l_i), float("-inf"))
    u = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(ETA + (start + rows) * stride_em + h, eta, mask=row_ok)
    tl.store(
        U + (start + rows)[:, None] * stride_um + h * stride_uh + dv[None, :],
        u,
        mask=row_ok[:, None] & (dv[None, :] < DV),
    )


@triton.jit
def _family_bwd_dkdv(
    Q,
    K,
    V,
    LOG_N,
    ETA,
    ROW,
    GU,
    DK_OUT,
    DV_OUT,
    BLK_START,
    BLK_SIZE,
    BLK_ROW,
    stride_qm,
    stride_qh,
    stride_km,
    stride_kh,
    stride_vm,
    stride_vh,
    stride_gm,
    stride_gh,
    stride_em,
    DK,
    DV,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    IEEE: tl.constexpr,
    WIDE: tl.constexpr,
):
    """One program: one key block (BLOCK_N children of a family) and one head; loops over query tiles.

    DK_OUT and DV_OUT are fp32 with the strides of K and V.
    """
    blk = tl.program_id(0)
    h = tl.program_id(1)
    start = tl.load(BLK_START + blk)
    if WIDE:  # 64-bit offsets, only where a tensor has 2^31+ elements (they cost registers)
        start = start.to(tl.int64)
    size = tl.load(BLK_SIZE + blk)
    cols = tl.load(BLK_ROW + blk) + tl.arange(0, BLOCK_N)
    col_ok = cols < size
    dk = tl.arange(0, BLOCK_DK)
    dv = tl.arange(0, BLOCK_DV)
    k = _tile(K, start + cols, col_ok, h, stride_km, stride_kh, dk, DK)
    v = _tile(V, start + cols, col_ok, h, stride_vm, stride_vh, dv, DV)
    bias = tl.load(LOG_N + start + cols, mask=col_ok, other=0.0)
    acc_k = tl.zeros([BLOCK_N, BLOCK_DK], tl.float32)
    acc_v = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    for m0 in range(0, size, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_ok = rows < size
        q = _tile(Q, start + rows, row_ok, h, stride_qm, stride_qh, dk, DK)
        gu = _tile(GU, start + rows, row_ok, h, stride_gm, stride_gh, dv, DV)
        eta = tl.load(ETA + (start + rows) * stride_em + h, mask=row_ok, other=0.0)
        row = tl.load(ROW + (start + rows) * stride_em + h, mask=row_ok, other=0.0)
        eta = tl.where(eta == float("-inf"), 0.0, eta)
        st = _dot(k, tl.trans(q), IEEE) + bias[:, None]  # logits, transposed: [BLOCK_N, BLOCK_M]
        keep = col_ok[:, None] & row_ok[None, :] & (cols[:, None] != rows[None, :])
        pt = tl.where(keep, tl.exp(st - eta[None, :]), 0.0)
        acc_v += _dot(pt.to(gu.dtype), gu, IEEE)
        dst = pt * (_dot(v, tl.trans(gu), IEEE) - row[None, :])
        acc_k += _dot(dst.to(q.dtype), q, IEEE)
    tl.store(
        DK_OUT + (start + cols)[:, None] * stride_km + h * stride_kh + dk[None, :],
        acc_k,
        mask=col_ok[:, None] & (dk[None, :] < DK),
    )
    tl.store(
        DV_OUT + (start + cols)[:, None] * stride_vm + h * stride_vh + dv[None, :],
        acc_v,
        mask=col_ok[:, None] & (dv[None, :] < DV),
    )


@triton.jit
def _family_bwd_dq(
    Q,
    K,
    V,
    LOG_N,
    ETA,
    ROW,
    GU,
    DQ_OUT,
    BLK_START,
    BLK_SIZE,
    BLK_ROW,
    stride_qm,
    stride_qh,
    stride_km,
    stride_kh,
    stride_vm,
    stride_vh,
    stride_gm,
    stride_gh,
    stride_em,
    DK,
    DV,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    IEEE: tl.constexpr,
    WIDE: tl.constexpr,
):
    """One program: one query block and one head; loops over the family's key tiles.

    DQ_OUT is fp32 with the strides of Q.
    """
    blk = tl.program_id(0)
    h = tl.program_id(1)
    start = tl.load(BLK_START + blk)
    if WIDE:  # 64-bit offsets, only where a tensor has 2^31+ elements (they cost registers)
        start = start.to(tl.int64)
    size = tl.load(BLK_SIZE + blk)
    rows = tl.load(BLK_ROW + blk) + tl.arange(0, BLOCK_M)
    row_ok = rows < size
    dk = tl.arange(0, BLOCK_DK)
    dv = tl.arange(0, BLOCK_DV)
    q = _tile(Q, start + rows, row_ok, h, stride_qm, stride_qh, dk, DK)
    gu = _tile(GU, start + rows, row_ok, h, stride_gm, stride_gh, dv, DV)
    eta = tl.load(ETA + (start + rows) * stride_em + h, mask=row_ok, other=0.0)
    row = tl.load(ROW + (start + rows) * stride_em + h, mask=row_ok, other=0.0)
    eta = tl.where(eta == float("-inf"), 0.0, eta)
    acc_q = tl.zeros([BLOCK_M, BLOCK_DK], tl.float32)
    for n0 in range(0, size, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < size
        k = _tile(K, start + cols, col_ok, h, stride_km, stride_kh, dk, DK)
        v = _tile(V, start + cols, col_ok, h, stride_vm, stride_vh, dv, DV)
        bias = tl.load(LOG_N + start + cols, mask=col_ok, other=0.0)
        s = _dot(q, tl.trans(k), IEEE) + bias[None, :]
        keep = col_ok[None, :] & row_ok[:, None] & (rows[:, None] != cols[None, :])
        p = tl.where(keep, tl.exp(s - eta[:, None]), 0.0)
        ds = p * (_dot(gu, tl.trans(v), IEEE) - row[:, None])
        acc_q += _dot(ds.to(k.dtype), k, IEEE)
    tl.store(
        DQ_OUT + (start + rows)[:, None] * stride_qm + h * stride_qh + dk[None, :],
        acc_q,
        mask=row_ok[:, None] & (dk[None, :] < DK),
    )
