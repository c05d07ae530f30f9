"""Family attention in plain PyTorch: every child attends to its siblings (hsa-math.md section 3, step 2).

Families are padded to a common size S and batched: ``[H, F, S, .]``. For each child A (a query row)
over its siblings B != A (keys), with logits ``Q_A . K_B + bias_B`` (the caller folds the scale and
the positional term ``e(A).e(B)`` into Q and K, and ``log n(B)`` into the key bias; padded keys carry
``-inf``), it returns

    eta(A) = logsumexp_B logits        (-inf when A has no sibling)
    u(A)   = sum_B softmax_B(logits) V_B   (0 when A has no sibling)

The backward recomputes the probabilities from the saved ``eta`` (FlashAttention's trick), so memory
stays linear in the number of nodes; the work is chunked over families to bound the ``[S, S]`` buffers.
"""

from __future__ import annotations

import torch

# Elements of one [H, F_chunk, S, S] logit buffer (32 Mi: 128 MB in fp32).
CHUNK_ELEMENTS = 1 << 25


def _logits(q, k, bias):
    """[H, F, S, S] logits with the diagonal and padded keys at -inf."""
    z = q @ k.transpose(-1, -2)
    z += bias[None, :, None, :]
    z.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))
    return z


def _finite_or_zero(x):
    return torch.where(torch.isfinite(x), x, torch.zeros((), dtype=x.dtype, device=x.device))


def _chunks(num_heads: int, num_families: int, size: int):
    step = max(1, CHUNK_ELEMENTS // max(1, num_heads * size * size))
    return [slice(i, min(i + step, num_families)) for i in range(0, num_families, step)]


class FamilyAttention(torch.autograd.Function):
    """(q [H,F,S,Dk], k [H,F,S,Dk], v [H,F,S,Dv], bias [F,S]) -> (eta [H,F,S], u [H,F,S,Dv])."""

    @staticmethod
    def forward(ctx, q, k, v, bias):
        heads, families, size, _ = q.shape
        eta = q.new_empty(heads, families, size)
        u = v.new_empty(heads, families, size, v.shape[-1])
        for c in _chunks(heads, families, size):
            p = _logits(q[:, c], k[:, c], bias[c])
            m = _finite_or_zero(p.amax(-1, keepdim=True))
            p.sub_(m).exp_()  # unnormalised probabilities
            total = p.sum(-1, keepdim=True)
            eta[:, c] = (m + total.log()).squeeze(-1)
            u[:, c] = (p @ v[:, c]) / torch.where(total > 0, total, torch.ones_like(total))
        ctx.save_for_backward(q, k, v, bias, eta, u)
        return eta, u

    @staticmethod
    def backward(ctx, grad_eta, grad_u):
        q, k, v, bias, eta, u = ctx.saved_tensors
        heads, families, size, _ = q.shape
        grad_eta = torch.zeros_like(eta) if grad_eta is None else grad_eta
        grad_u = torch.zeros_like(u) if grad_u is None else grad_u
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        for c in _chunks(heads, families, size):
            p = _logits(q[:, c], k[:, c], bias[c])
            p.sub_(_finite_or_zero(eta[:, c])[..., None]).exp_()  # softmax rows (0 rows: no sibling)
            gu = grad_u[:, c]
            dv[:, c] = p.transpose(-1, -2) @ gu
            # d logits = p * (g_u.V_B - g_u.u + g_eta)
            row = (gu * u[:, c]).sum(-1, keepdim=True) - grad_eta[:, c, :, None]
            dz = p.mul_(gu @ v[:, c].transpose(-1, -2) - row)
            dq[:, c] = dz @ k[:, c]
            dk[:, c] = dz.transpose(-1, -2) @ q[:, c]
        return dq, dk, dv, None


def family_attention(q, k, v, bias):
    """Differentiable family attention; see the module docstring for shapes and semantics."""
    return FamilyAttention.apply(q, k, v, bias)
