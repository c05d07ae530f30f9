"""HSA under torch.compile: the torch backend traces into one graph, the Triton backend breaks once
around its kernels, and compiled outputs and gradients equal eager ones.

On CPU the Triton kernels run in the interpreter and Inductor writes C++; with MMHSA_TEST_CUDA=1 on a
GPU the same tests run on CUDA (compiled kernels, Inductor writing Triton).
"""

import os

import pytest
import torch
import torch._dynamo as dynamo

from mmhsa import Hierarchy, hsa
from mmhsa.attention.dispatch import triton_available
from tests.mmhsa.trees import random_hierarchy

DEVICE = torch.device("cuda" if torch.cuda.is_available() and os.environ.get("MMHSA_TEST_CUDA") == "1" else "cpu")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    dynamo.reset()
    yield
    dynamo.reset()


def irregular() -> Hierarchy:
    """Families of 1 to 9 children at several depths, two trees: the bucketed (non-grid) code paths."""
    return Hierarchy.batch([random_hierarchy(5), Hierarchy.from_nested([[0, 1, 2], [[3], [4, 5]], 6])]).to(DEVICE)


def inputs(h, pos_dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(h.num_leaves, 2, 16, generator=g).to(DEVICE).requires_grad_() for _ in range(3))
    pos = (0.5 * torch.randn(h.num_nodes, pos_dim, generator=g)).to(DEVICE)
    return q, k, v, pos


def values_and_grads(fn, q, k, v):
    for x in (q, k, v):
        x.grad = None
    out = fn(q, k, v)
    (out * torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)).sum().backward()
    return [out.detach()] + [x.grad.clone() for x in (q, k, v)]


@pytest.mark.slow
@pytest.mark.parametrize("include_self", [False, True])
def test_torch_backend_is_one_graph(include_self):
    h = irregular()
    q, k, v, pos = inputs(h)
    explained = dynamo.explain(lambda q, k, v: hsa(q, k, v, h, pos=pos, include_self=include_self, backend="torch"))(
        q, k, v
    )
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.slow
@pytest.mark.skipif(not triton_available(DEVICE), reason="Triton cannot run here")
def test_triton_backend_breaks_only_around_the_kernels():
    h = irregular()
    q, k, v, pos = inputs(h)

    def fn(q, k, v):
        return hsa(q, k, v, h, pos=pos, backend="triton")

    explained = dynamo.explain(fn)(q, k, v)
    assert explained.graph_break_count == 1
    assert "family_pass_triton" in str(explained.break_reasons[0])
    compiled = values_and_grads(torch.compile(fn, backend="aot_eager"), q, k, v)
    for name, a, b in zip(("out", "dq", "dk", "dv"), compiled, values_and_grads(fn, q, k, v)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


@pytest.mark.slow
def test_inductor_matches_eager():
    """The generated (C++ on CPU, Triton on GPU) code of the tree passes, values and gradients."""
    h = irregular()
    q, k, v, pos = inputs(h)

    def fn(q, k, v):
        return hsa(q, k, v, h, pos=pos, backend="torch")

    compiled = values_and_grads(torch.compile(fn), q, k, v)
    for name, a, b in zip(("out", "dq", "dk", "dv"), compiled, values_and_grads(fn, q, k, v)):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
