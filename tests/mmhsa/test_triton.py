"""The Triton backend against the torch backend and the float64 reference.

On CPU the kernels run under TRITON_INTERPRET=1 (tests/conftest.py sets it before any import), so
shapes stay tiny. With a GPU, run ``MMHSA_TEST_CUDA=1 pytest tests/mmhsa/test_triton.py``: the same
tests then run the compiled kernels on CUDA, bf16 included.
"""

import os

import pytest
import torch

from mmhsa import Hierarchy, hsa
from mmhsa.attention.dispatch import triton_available
from tests.mmhsa.trees import random_hierarchy

DEVICE = torch.device("cuda" if torch.cuda.is_available() and os.environ.get("MMHSA_TEST_CUDA") == "1" else "cpu")
pytestmark = pytest.mark.skipif(not triton_available(DEVICE), reason="Triton cannot run here")
F64 = torch.float64
# bf16 is silently wrong in the interpreter: GPU only.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])
ROUNDING = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def odd_families() -> Hierarchy:
    """Families of 97, 3, 2 and 1 children, a lone leaf beside subtrees, a one-leaf tree, a deep chain."""
    big = list(range(97))
    main = Hierarchy.from_nested([big, [97, 98, 99], [[100], [101, 102]], 103])
    return Hierarchy.batch([main, Hierarchy.from_nested(0), Hierarchy.from_nested([[[[[[0, 1]]]]], 2])])


def seventeen() -> Hierarchy:
    """Hopping windows of 17 (the last one partial) under a root, next to a small irregular tree."""
    return Hierarchy.batch([Hierarchy.windows(60, (17,)), random_hierarchy(3)])


TREES = {
    "odd_families": odd_families,
    "seventeen": seventeen,
    "random_a": lambda: random_hierarchy(11),
    "random_b": lambda: random_hierarchy(42),
}


def make_inputs(h, heads, d, dv, seed, pos_dim=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(h.num_leaves, heads, d, generator=g, dtype=F64) for _ in range(2))
    v = torch.randn(h.num_leaves, heads, dv, generator=g, dtype=F64)
    pos = 0.5 * torch.randn(h.num_nodes, pos_dim, generator=g, dtype=F64) if pos_dim else None
    return q, k, v, pos


NAMES = ("out", "dq", "dk", "dv", "dpos")


def run(backend, h, q, k, v, pos, dtype, include_self, weight):
    """[out, dq, dk, dv] (+ dpos when ``pos`` is given) in float64 on the CPU."""
    xs = [x.detach().to(DEVICE, dtype).requires_grad_() for x in (q, k, v)]
    if pos is not None:
        xs.append(pos.detach().to(DEVICE, dtype).requires_grad_())
    out = hsa(*xs[:3], h.to(DEVICE), pos=xs[3] if pos is not None else None, include_self=include_self, backend=backend)
    (out.float() * weight.to(DEVICE)).sum().backward()
    return [t.detach().to("cpu", F64) for t in [out] + [x.grad for x in xs]]


@pytest.mark.parametrize("tree", sorted(TREES))
@pytest.mark.parametrize("head_dim", [16, 40, 64])
def test_fp32_matches_torch_backend(tree, head_dim):
    h = TREES[tree]()
    include_self = head_dim == 40
    q, k, v, pos = make_inputs(h, 2, head_dim, head_dim, seed=head_dim, pos_dim=3 if head_dim != 16 else 0)
    w = torch.randn(h.num_leaves, 2, head_dim)
    fast = run("triton", h, q, k, v, pos, torch.float32, include_self, w)
    ref = run("torch", h, q, k, v, pos, torch.float32, include_self, w)
    exact = run("reference", h, q, k, v, pos, F64, include_self, w)
    assert len(fast) == (5 if pos is not None else 4)
    for name, a, b, e in zip(NAMES, fast, ref, exact):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name} vs torch: {m}")
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name} vs reference: {m}")


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != torch.float32])
@pytest.mark.parametrize("tree", ["odd_families", "seventeen"])
def test_low_precision_error_rule(dtype, tree):
    """Error vs float64 at most 2x that of the dense reference fed the same low-precision inputs
    (fp32 arithmetic, results rounded to the dtype), plus the dtype's rounding floor (FlashAttention's
    rule, with a stricter baseline than naive low-precision arithmetic), outputs and gradients."""
    h = TREES[tree]()
    q, k, v, pos = make_inputs(h, 2, 40, 24, seed=7, pos_dim=2)
    q, k, v, pos = (x.to(dtype).to(F64) for x in (q, k, v, pos))
    w = torch.randn(h.num_leaves, 2, 24)
    exact = run("reference", h, q, k, v, pos, F64, False, w)
    fast = run("triton", h, q, k, v, pos, dtype, False, w)
    base = run("reference", h, q, k, v, pos, dtype, False, w)  # upcasts once, then computes in fp32
    for name, f, b, e in zip(NAMES, fast, base, exact):
        err, err_base = (f - e).abs().max().item(), (b - e).abs().max().item()
        floor = ROUNDING[dtype] * e.abs().max().item()
        assert err <= 2 * err_base + floor, f"{name}: {err:.3g} > 2 x {err_base:.3g} + {floor:.3g}"


@pytest.mark.parametrize(
    "dtype, block_d", [(torch.float32, 64), (torch.float32, 128), (torch.bfloat16, 64), (torch.bfloat16, 128)]
)
def test_block_tables_cover_every_family_row(dtype, block_d):
    """Every row of every family of 2+ children is in exactly one block, in the bucket of its size."""
    from mmhsa.attention.triton import block_tables, buckets

    h = odd_families()
    table = buckets(dtype, block_d)
    assert table[-1].largest is None and all(a.largest < b.largest for a, b in zip(table[:-2], table[1:-1]))
    covered = torch.zeros(h.num_nodes, dtype=torch.long)
    for bucket, starts, sizes, rows in block_tables(h.plan, table):
        assert bucket.largest is None or sizes.max() <= bucket.largest
        for s, n, r in zip(starts.tolist(), sizes.tolist(), rows.tolist()):
            covered[s + r : s + min(r + bucket.block, n)] += 1
    expected = torch.zeros(h.num_nodes, dtype=torch.long)
    for s, n in zip(h.plan.family_start.tolist(), h.plan.family_size.tolist()):
        if n > 1:  # only children attend to nothing: no block
            expected[s : s + n] = 1
    assert torch.equal(covered, expected)


def test_block_tables_never_read_the_device():
    """A plan moved to a device keeps host copies of its family arrays, so building the launch tables
    never reads device memory (on a GPU: no synchronisation per batch). The meta device holds no data:
    reading it back would fail."""
    from mmhsa.attention.triton import block_tables, buckets

    h = odd_families()
    table = buckets(torch.float16, 64)
    on_meta = block_tables(h.to("meta").plan, table)
    for (bucket, *arrays), (same, *expected) in zip(on_meta, block_tables(h.plan, table), strict=True):
        assert bucket == same and all(a.device.type == "meta" and a.shape == e.shape for a, e in zip(arrays, expected))


def test_wide_offsets_match(monkeypatch):
    """The 64-bit-offset kernels (chosen for tensors of 2^31+ elements) give what the 32-bit ones give."""
    import mmhsa.attention.triton.launch as family

    h = odd_families()
    q, k, v, pos = make_inputs(h, 2, 16, 16, seed=3, pos_dim=2)
    w = torch.randn(h.num_leaves, 2, 16)
    narrow = run("triton", h, q, k, v, pos, torch.float32, False, w)
    monkeypatch.setattr(family, "INT32_OFFSETS_MAX", 0)
    wide = run("triton", h, q, k, v, pos, torch.float32, False, w)
    for name, a, b in zip(NAMES, wide, narrow):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m: f"{name}: {m}")


def test_auto_backend_choice():
    """Triton on CUDA, except for float64 (the kernels compute in fp32); torch on CPU."""
    from mmhsa.attention.dispatch import auto_backend

    cuda = torch.device("cuda")
    assert auto_backend(cuda, torch.bfloat16) == auto_backend(cuda, torch.float32) == "triton"
    assert auto_backend(cuda, torch.float64) == "torch"
    assert auto_backend(torch.device("cpu"), torch.float32) == "torch"


def test_auto_is_torch_on_cpu():
    h = Hierarchy.from_nested([0, 1, 2])
    q = torch.randn(3, 1, 4)
    torch.testing.assert_close(hsa(q, q, q, h), hsa(q, q, q, h, backend="torch"))


class DispatchCount(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the aten ops (views aside) the torch side dispatches: on a GPU each is about one kernel launch,
    and at these sizes launches, not arithmetic, set the time. Ops inside a Triton launch (the interpreter's
    own work on CPU) are not counted; the launches are, apart."""

    def __init__(self):
        super().__init__()
        self.ops, self.launches, self.inside = 0, 0, False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.inside and not func.is_view:
            self.ops += 1
        return func(*args, **(kwargs or {}))


def count_dispatches(h):
    """[(ops, launches) of the forward, (ops, launches) of the backward] of one HSA call on ``h``."""
    import mmhsa.attention.triton.launch as family

    counter = DispatchCount()

    class Counted:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                counter.launches += 1
                counter.inside = True
                try:
                    return self.kernel[grid](*args, **kwargs)
                finally:
                    counter.inside = False

            return launch

    q, k, v = (torch.randn(h.num_leaves, 2, 16, device=DEVICE, requires_grad=True) for _ in range(3))
    hsa(q, k, v, h, backend="triton").sum().backward()  # first call: the plan's tables
    counts = []
    with pytest.MonkeyPatch.context() as patch, counter:
        for name in ("_family_fwd", "_family_bwd_dkdv", "_family_bwd_dq"):
            patch.setattr(family, name, Counted(getattr(family, name)))
        out = hsa(q, k, v, h, backend="triton")
        counts.append((counter.ops, counter.launches))
        counter.ops = counter.launches = 0
        out.sum().backward()
        counts.append((counter.ops, counter.launches))
    return counts


@pytest.mark.slow
def test_dispatches_depend_on_depth_not_size():
    """The torch side loops over depth only: a 4-level video tree dispatches the same ops at 32 and at
    1,568 leaves, within a budget (79 forward and 130 backward when set: more means more GPU launches
    per call), plus one kernel launch per family-size bucket forward and two backward."""

    def video(clips, frames, side):
        return Hierarchy.regular(
            [clips, frames, (side, side)], kinds=["video", "clip", "frame", "patch"], domains=["time", "index", "grid"]
        ).to(DEVICE)

    (small_fwd, small_launches), (small_bwd, small_bwd_launches) = count_dispatches(video(2, 4, 2))
    (fwd, launches), (bwd, bwd_launches) = count_dispatches(video(4, 8, 7))
    assert (small_fwd, small_bwd) == (fwd, bwd)
    assert fwd <= 80 and bwd <= 135, (fwd, bwd)
    assert (small_launches, small_bwd_launches) == (1, 2)  # every family has at most 16 members: one bucket
    assert (launches, bwd_launches) == (2, 4)  # frames of 49 patches in their own bucket
