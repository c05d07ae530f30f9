"""Family attention in plain PyTorch: every child attends to its siblings (docs/operator.md section 3, step 2).

Inputs are node-major, ``[F, S, H, .]``: F families padded to a common size S, H heads. For each child
A (a query row) over its siblings B != A (keys), with logits ``Q_A . K_B + bias_B`` (the caller folds
the scale and the positional term ``e(A).e(B)`` into Q and K, and ``log n(B)`` into the key bias;
padded keys carry ``-inf``), it returns

    eta(A) = logsumexp_B logits          (-inf when A has no sibling)
    u(A)   = sum_B softmax_B(logits) V_B  (0 when A has no sibling)

Work goes through chunks of a few families whose ``[F_c * H, S, S]`` logits stay in cache (each chunk
is permuted heads-first in cache, so big arrays are never transposed in memory). The backward
recomputes the probabilities from the saved ``eta`` (FlashAttention's trick): memory stays linear in
the number of nodes.
"""

from __future__ import annotations

import torch

# Elements of one chunk's logits: 1 Mi (4 MB in fp32) stays in cache, faster on CPU than one big buffer
# (docs/operator.md, section 3).
CHUNK_ELEMENTS = 1 << 20
# The forward on CPU in fp32 goes through PyTorch's fused flash kernel when it exists (tests switch it
# off to check the plain path against it).
USE_FUSED_CPU = True


def _heads_first(x: torch.Tensor) -> torch.Tensor:
    """[F_c, S, H, C] -> contiguous [F_c * H, S, C]."""
    f, s, h, c = x.shape
    return x.permute(0, 2, 1, 3).reshape(f * h, s, c)


def _heads_back(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[F_c * H, S, ...] -> [F_c, S, H, ...] view (the inverse of :func:`_heads_first`)."""
    return x.unflatten(0, (-1, heads)).transpose(1, 2)


def _logits(q, k, bias, heads):
    """[F_c*H, S, S] logits with the diagonal and padded keys at -inf (``bias`` None: no key bias)."""
    kt = k.transpose(-1, -2)
    if bias is None:
        z = torch.bmm(q, kt)
    else:  # [F_c, S] -> one row per (family, head)
        z = torch.baddbmm(bias.repeat_interleave(heads, 0)[:, None, :], q, kt)
    z.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))
    return z


def _finite_or_zero(x):
    return torch.where(torch.isfinite(x), x, torch.zeros((), dtype=x.dtype, device=x.device))


def _chunks(families: int, heads: int, size: int):
    step = max(1, CHUNK_ELEMENTS // (heads * size * size))
    return [slice(i, min(i + step, families)) for i in range(0, families, step)]


def _forward_chunked(q, k, v, bias):
    """Forward with explicit logits, chunk by chunk (any device and dtype)."""
    families, size, heads, _ = q.shape
    eta = q.new_empty(families, size, heads)
    u = v.new_empty(families, size, heads, v.shape[-1])
    for c in _chunks(families, heads, size):
        p = _logits(_heads_first(q[c]), _heads_first(k[c]), None if bias is None else bias[c], heads)
        m = _finite_or_zero(p.amax(-1, keepdim=True))
        p.sub_(m).exp_()  # unnormalised probabilities
        total = p.sum(-1, keepdim=True)
        eta[c] = _heads_back((m + total.log()).squeeze(-1), heads)
        u_c = torch.bmm(p, _heads_first(v[c])).div_(torch.where(total > 0, total, torch.ones_like(total)))
        u[c] = _heads_back(u_c, heads)
    return eta, u


def _forward_fused_cpu(q, k, v, bias):
    """Forward through PyTorch's fused CPU flash-attention kernel, which also returns the log-sum-exp.

    The diagonal and the key bias go in as an additive mask; strided [F, H, S, D] views of the
    node-major inputs are read in place. Needs every row to have a key (families of 2+).
    """
    families, size, heads, _ = q.shape
    diag = torch.zeros(size, size, dtype=q.dtype, device=q.device).fill_diagonal_(float("-inf"))
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))  # [F, H, S, D] views
    if bias is None:
        steps = [slice(0, families)]
    else:  # bound the materialised [F_c, 1, S, S] mask
        steps = _chunks(families, 1, size)
    etas, us = [], []
    for c in steps:
        mask = diag[None, None] if bias is None else bias[c, None, None, :] + diag
        out, lse = _FUSED_CPU(qh[c], kh[c], vh[c], 0.0, False, attn_mask=mask, scale=1.0)
        us.append(out.transpose(1, 2))
        etas.append(lse.transpose(1, 2))
    if len(steps) == 1:
        return etas[0], us[0]
    return torch.cat(etas), torch.cat(us)


_FUSED_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _fused_cpu_applies(q, v) -> bool:
    return (
        USE_FUSED_CPU
        and _FUSED_CPU is not None
        and q.device.type == "cpu"
        and q.dtype == torch.float32
        and q.shape[-1] == v.shape[-1]
    )


class FamilyAttention(torch.autograd.Function):
    """(q [F,S,H,Dk], k [F,S,H,Dk], v [F,S,H,Dv], bias [F,S] or None) -> (eta [F,S,H], u [F,S,H,Dv])."""

    @staticmethod
    def forward(ctx, q, k, v, bias):
        families, size, heads, _ = q.shape
        if size == 1:  # only children: nothing to attend to
            eta = q.new_full((families, 1, heads), float("-inf"))
            u = v.new_zeros(families, 1, heads, v.shape[-1])
        elif _fused_cpu_applies(q, v):
            eta, u = _forward_fused_cpu(q, k, v, bias)
        else:
            eta, u = _forward_chunked(q, k, v, bias)
        ctx.save_for_backward(q, k, v, bias, eta, u)
        return eta, u

    @staticmethod
    def backward(ctx, grad_eta, grad_u):
        q, k, v, bias, eta, u = ctx.saved_tensors
        families, size, heads, _ = q.shape
        if size == 1:
            return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), None
        grad_eta = torch.zeros_like(eta) if grad_eta is None else grad_eta
        grad_u = torch.zeros_like(u) if grad_u is None else grad_u
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        for c in _chunks(families, heads, size):
            qc, kc, vc = _heads_first(q[c]), _heads_first(k[c]), _heads_first(v[c])
            gu, uc = _heads_first(grad_u[c]), _heads_first(u[c])
            ge = grad_eta[c].transpose(1, 2).reshape(-1, size)  # [F_c*H, S]
            p = _logits(qc, kc, None if bias is None else bias[c], heads)
            p.sub_(_heads_first(_finite_or_zero(eta[c])[..., None])).exp_()  # softmax (0 rows: no sibling)
            dv[c] = _heads_back(torch.bmm(p.transpose(-1, -2), gu), heads)
            # d logits = p * (g_u.V_B - g_u.u + g_eta)
            row = (gu * uc).sum(-1, keepdim=True) - ge[..., None]
            dz = p.mul_(torch.baddbmm(-row, gu, vc.transpose(-1, -2)))
            dq[c] = _heads_back(torch.bmm(dz, kc), heads)
            dk[c] = _heads_back(torch.bmm(dz.transpose(-1, -2), qc), heads)
        return dq, dk, dv, None


def family_attention(q, k, v, bias=None):
    """Differentiable family attention; see the module docstring for shapes and semantics.

    ``bias=None`` means no key bias and no padding (families of single leaves), which skips a pass
    over the logits.
    """
    return FamilyAttention.apply(q, k, v, bias)
