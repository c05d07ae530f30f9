"""Family attention: the fused CPU forward and the chunked forward against a naive softmax."""

import pytest
import torch

import mmhsa.attention.family_torch as family
from mmhsa import Hierarchy, hsa
from mmhsa.attention.reference import hsa_reference
from tests.mmhsa.trees import random_hierarchy


def naive(q, k, v, bias):
    """eta [F,S,H], u [F,S,H,Dv] by dense softmax in the inputs' dtype."""
    z = torch.einsum("fahd,fbhd->fhab", q, k)
    if bias is not None:
        z = z + bias[:, None, None, :]
    z = z.masked_fill(torch.eye(q.shape[1], dtype=torch.bool), float("-inf"))
    eta = torch.logsumexp(z, -1)
    u = torch.einsum("fhab,fbhd->fahd", torch.softmax(z, -1), v)
    return eta.transpose(1, 2), u


@pytest.fixture(params=[True, False], ids=["fused", "chunked"])
def path(request, monkeypatch):
    monkeypatch.setattr(family, "USE_FUSED_CPU", request.param)
    monkeypatch.setattr(family, "CHUNK_ELEMENTS", 4096)  # several chunks even for tiny shapes
    return request.param


@pytest.mark.parametrize("size", [2, 3, 17, 97])
@pytest.mark.parametrize("with_bias", [False, True])
def test_family_attention_matches_naive(path, size, with_bias):
    g = torch.Generator().manual_seed(size)
    f, h, d = 5, 3, 16
    q, k, v = (torch.randn(f, size, h, d, generator=g, dtype=torch.float64) for _ in range(3))
    bias = None
    if with_bias:  # log n(B) with the last key of every family padded away
        bias = torch.rand(f, size, generator=g, dtype=torch.float64).mul(3).log1p()
        bias[:, -1] = float("-inf") if size > 2 else bias[:, -1]
    # fp32 for the (fused-capable) forward, fp64 truth; gradients through the custom backward
    args32 = [x.float().requires_grad_() for x in (q, k, v)]
    eta, u = family.family_attention(*args32, None if bias is None else bias.float())
    args64 = [x.clone().requires_grad_() for x in (q, k, v)]
    eta_ref, u_ref = naive(*args64, bias)
    torch.testing.assert_close(eta.double(), eta_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(u.double(), u_ref, rtol=1e-5, atol=1e-5)
    ge, gu = torch.randn_like(eta_ref), torch.randn_like(u_ref)
    grads = torch.autograd.grad((eta * ge.float()).sum() + (u * gu.float()).sum(), args32)
    grads_ref = torch.autograd.grad((eta_ref * ge).sum() + (u_ref * gu).sum(), args64)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


def test_family_of_one_is_empty(path):
    q = torch.randn(4, 1, 2, 8, requires_grad=True)
    eta, u = family.family_attention(q, q, q)
    assert torch.all(eta == float("-inf")) and torch.all(u == 0)
    u.sum().backward()
    assert torch.all(q.grad == 0)


@pytest.mark.parametrize("seed", range(6))
def test_fp32_operator_both_paths(path, seed):
    """End to end in fp32 (the fused path needs D == Dv): close to the float64 reference."""
    h = random_hierarchy(700 + seed) if seed < 4 else Hierarchy.regular([3, 4, (3, 3)])
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(h.num_leaves, 2, 16, generator=g) for _ in range(3))
    pos = torch.randn(h.num_nodes, 4, generator=g) if seed % 2 else None
    out = hsa(q, k, v, h, pos=pos, include_self=seed % 3 == 0)
    ref = hsa_reference(
        *(x.double() for x in (q, k, v)), h, pos=None if pos is None else pos.double(), include_self=seed % 3 == 0
    )
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=2e-5)
