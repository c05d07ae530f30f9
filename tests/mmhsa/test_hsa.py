"""The torch dynamic program against the dense reference, and the reference against the definition."""

import pytest
import torch

from mmhsa import Hierarchy, hsa, hsa_matrix
from mmhsa.attention.reference import hsa_reference
from tests.mmhsa.trees import EDGE_TREES, random_hierarchy

F64 = torch.float64


def inputs(h: Hierarchy, heads=2, d=8, dv=5, dtype=F64, seed=0, pos_dim=3, grad=False):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(h.num_leaves, heads, d, generator=g, dtype=F64) for _ in range(2))
    v = torch.randn(h.num_leaves, heads, dv, generator=g, dtype=F64)
    pos = 0.5 * torch.randn(h.num_nodes, heads, pos_dim, generator=g, dtype=F64)
    out = [x.to(dtype).requires_grad_(grad) for x in (q, k, v, pos)]
    return out


def flat_softmax(q, k, include_self, pos_logits=None):
    """Row-wise softmax of t q.k (+ positional logits) over j != i (or all j with include_self). [H, N, N]"""
    logits = torch.einsum("ihd,jhd->hij", q, k) / q.shape[-1] ** 0.5
    if pos_logits is not None:
        logits = logits + pos_logits
    if not include_self:
        logits = logits.masked_fill(torch.eye(q.shape[0], dtype=torch.bool), float("-inf"))
    return torch.softmax(logits, -1)


@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("n", [2, 7, 64])
def test_flat_tree_is_softmax(n, include_self):
    h = Hierarchy.from_nested(list(range(n)))
    q, k, v, _ = inputs(h, heads=3)
    expected = torch.einsum("hij,jhd->ihd", flat_softmax(q, k, include_self), v)
    for backend in ("reference", "torch"):
        out = hsa(q, k, v, h, include_self=include_self, backend=backend)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_flat_tree_with_positions_is_biased_softmax():
    h = Hierarchy.from_nested(list(range(9)))
    q, k, v, pos = inputs(h)
    e = pos[1:].transpose(0, 1)  # leaves are nodes 1..9
    expected = torch.einsum("hij,jhd->ihd", flat_softmax(q, k, False, e @ e.transpose(1, 2)), v)
    torch.testing.assert_close(hsa(q, k, v, h, pos=pos), expected, rtol=0, atol=1e-12)


def _max_err_vs_reference(h, seed, use_pos, include_self):
    q, k, v, pos = inputs(h, seed=seed)
    pos = pos if use_pos else None
    ref = hsa_reference(q, k, v, h, pos=pos, include_self=include_self)
    out = hsa(q, k, v, h, pos=pos, include_self=include_self, backend="torch")
    return (out - ref).abs().max().item()


@pytest.mark.parametrize("chunk", range(10))
def test_torch_equals_reference_on_random_trees(chunk):
    """200 random irregular trees (20 per chunk), with/without pos, both include_self: fp64 < 1e-10."""
    for seed in range(chunk * 20, chunk * 20 + 20):
        h = random_hierarchy(seed)
        use_pos, include_self = bool(seed % 2), bool((seed // 2) % 2)
        err = _max_err_vs_reference(h, seed, use_pos, include_self)
        assert err < 1e-10, f"seed {seed} ({h}): max error {err:.3g}"


@pytest.mark.parametrize("name", sorted(EDGE_TREES))
@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("use_pos", [False, True])
def test_edge_trees_values_and_gradients(name, include_self, use_pos):
    """Degenerate shapes: equal to the reference, and no NaN/inf in values or gradients."""
    h = Hierarchy.from_nested(EDGE_TREES[name])
    q, k, v, pos = inputs(h, grad=True)
    pos = pos if use_pos else None
    out = hsa(q, k, v, h, pos=pos, include_self=include_self, backend="torch")
    ref = hsa_reference(q, k, v, h, pos=pos, include_self=include_self)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    weights = torch.randn_like(out)
    args = [x for x in (q, k, v, pos) if x is not None]
    grads = torch.autograd.grad((out * weights).sum(), args, allow_unused=True)
    ref_grads = torch.autograd.grad((ref * weights).sum(), args, allow_unused=True)
    for x, g, rg in zip(args, grads, ref_grads):
        g, rg = (torch.zeros_like(x) if t is None else t for t in (g, rg))
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, rg, rtol=0, atol=1e-10)


def test_lone_leaf_gets_zero_output():
    h = Hierarchy.batch([Hierarchy.from_nested(0), Hierarchy.from_nested([0, 1])])
    q, k, v, _ = inputs(h, grad=True)
    out = hsa(q, k, v, h)
    assert torch.all(out[0] == 0)
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.all(q.grad[0] == 0)
    # with include_self a lone leaf returns its own value
    torch.testing.assert_close(hsa(q, k, v, h, include_self=True)[0], v[0].detach(), rtol=0, atol=1e-15)


@pytest.mark.parametrize("seed", range(12))
def test_rows_sum_to_one_and_blocks_are_constant(seed):
    h = random_hierarchy(seed)
    q, k, _, pos = inputs(h, seed=seed)
    include_self = bool(seed % 2)
    theta = hsa_matrix(q, k, h, pos=pos if seed % 3 else None, include_self=include_self)
    rows = theta.sum(-1)
    # only a lone leaf (one-leaf tree, or a leaf with no sibling anywhere on its path) has nothing
    nothing = torch.tensor([_attends_nothing(h, i) for i in range(h.num_leaves)]) & (not include_self)
    torch.testing.assert_close(rows[:, ~nothing], torch.ones_like(rows[:, ~nothing]), rtol=0, atol=1e-12)
    assert torch.all(rows[:, nothing] == 0)
    assert torch.all(theta >= 0)
    # block constraint: constant on A x B for every pair of siblings
    parent, start, end = h.parent.tolist(), h.leaf_start.tolist(), h.leaf_end.tolist()
    for a in range(h.num_nodes):
        for b in range(h.num_nodes):
            if a != b and parent[a] == parent[b] >= 0:
                block = theta[:, start[a] : end[a], start[b] : end[b]]
                assert (block.amax((1, 2)) - block.amin((1, 2))).abs().max() < 1e-14


def _attends_nothing(h, leaf):
    node = int(h.leaf_node[leaf])
    while node >= 0:
        p = int(h.parent[node])
        if p >= 0 and int(h.num_children[p]) > 1:
            return False
        node = p
    return True


# ---------------------------------------------------------------- optimality (docs/operator.md section 2)
def nested_stochastic(h: Hierarchy, stay_logit: torch.Tensor, sibling_logit: torch.Tensor, include_self: bool):
    """A general block-constrained row-stochastic matrix [N, N] (one head), in nested form.

    Node A keeps mass inside with probability sigmoid(stay_logit[A]) (1 without siblings, 0 when
    nothing inside), and splits the rest over its siblings B by softmax(sibling_logit[A, B]),
    spread evenly over B's leaves. Every block-constrained stochastic matrix has this form.
    """
    m = h.num_nodes
    parent = h.parent
    sib = (parent[:, None] == parent[None, :]) & (parent[:, None] >= 0) & ~torch.eye(m, dtype=torch.bool)
    n = (h.leaf_end - h.leaf_start).to(F64)
    has_sib = sib.any(1)
    inside = torch.full((m,), True) if include_self else n >= 2
    mu = torch.where(has_sib, torch.where(inside, torch.sigmoid(stay_logit), 0.0), 1.0)
    split = torch.softmax(sibling_logit.masked_fill(~sib, float("-inf")), -1).nan_to_num(0.0)
    reach = [torch.ones((), dtype=F64)] * m
    for a in range(m):
        p = int(parent[a])
        if p >= 0 and int(parent[p]) >= 0:
            reach[a] = reach[p] * mu[p]
    reach = torch.stack(reach)
    block = reach[:, None] * (1 - mu)[:, None] * split / n[None, :]
    mem = h.membership()
    theta = mem.t() @ block @ mem
    if include_self:
        leaf = h.leaf_node
        theta = theta + torch.diag(reach[leaf] * mu[leaf])
    return theta


def total_kl(theta, target):
    """sum_i KL(theta_i || target_i), with 0 log 0 = 0."""
    safe = torch.where(theta > 0, theta, 1.0)
    return torch.where(theta > 0, theta * (safe.log() - target.clamp_min(1e-300).log()), 0.0).sum()


def flat_target(h, q, k, pos, include_self):
    """The flat softmax the hierarchy approximates: logits e(A).e(B) + t q_i.k_j (A, B as in theta)."""
    pos_logits = None
    if pos is not None:
        m = h.num_nodes
        parent = h.parent
        sib = (parent[:, None] == parent[None, :]) & (parent[:, None] >= 0) & ~torch.eye(m, dtype=torch.bool)
        e = pos.transpose(0, 1)
        mem = h.membership()
        pos_logits = mem.t() @ torch.where(sib, e @ e.transpose(1, 2), 0.0) @ mem
        if include_self:
            pos_logits = pos_logits + torch.diag_embed((e * e).sum(-1)[:, h.leaf_node])
    return flat_softmax(q, k, include_self, pos_logits)


@pytest.mark.parametrize("seed", range(8))
def test_perturbations_never_lower_the_kl(seed):
    h = random_hierarchy(100 + seed)
    include_self = bool(seed % 2)
    q, k, _, pos = inputs(h, heads=1, seed=seed)
    pos = pos if seed % 4 < 2 else None
    theta = hsa_matrix(q, k, h, pos=pos, include_self=include_self)[0]
    target = flat_target(h, q, k, pos, include_self)[0]
    best = total_kl(theta, target)
    g = torch.Generator().manual_seed(seed)
    m = h.num_nodes
    for trial in range(40):
        other = nested_stochastic(
            h, 2 * torch.randn(m, generator=g, dtype=F64), 2 * torch.randn(m, m, generator=g, dtype=F64), include_self
        )
        eps = [1.0, 0.1, 1e-3][trial % 3]
        mixed = (1 - eps) * theta + eps * other
        assert torch.allclose(mixed.sum(-1), theta.sum(-1), atol=1e-12)
        assert total_kl(mixed, target) >= best - 1e-12


@pytest.mark.parametrize(
    "tree, include_self",
    [
        ([[0, 1, 2], [[3, 4], [5, 6, 7]], [8, 9]], False),
        ([[0, 1], [2, [3, 4, 5]], [[6]]], True),
        ([[[0, 1], [2]], [3, 4, 5, 6]], False),
    ],
)
def test_theta_is_the_kl_minimiser(tree, include_self):
    """Brute force: minimise the total KL over all block-constrained stochastic matrices (L-BFGS)."""
    h = Hierarchy.from_nested(tree)
    q, k, _, _ = inputs(h, heads=1, seed=3)
    target = flat_target(h, q, k, None, include_self)[0]
    stay = torch.zeros(h.num_nodes, dtype=F64, requires_grad=True)
    split = torch.zeros(h.num_nodes, h.num_nodes, dtype=F64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [stay, split], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = total_kl(nested_stochastic(h, stay, split, include_self), target)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    found = nested_stochastic(h, stay, split, include_self).detach()
    theta = hsa_matrix(q, k, h, include_self=include_self)[0]
    assert total_kl(theta, target) <= total_kl(found, target) + 1e-12
    torch.testing.assert_close(found, theta, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("tree", [[[0, 1, 2], [[3, 4], [5, 6, 7]], [8, 9]], [[[0]], [1, [2, 3]], 4], [0, 1]])
@pytest.mark.parametrize("include_self", [False, True])
def test_gradcheck(tree, include_self):
    h = Hierarchy.from_nested(tree)
    q, k, v, pos = inputs(h, heads=2, d=4, dv=3, pos_dim=2, grad=True)

    def fn(q, k, v, pos):
        return hsa(q, k, v, h, pos=pos, include_self=include_self, backend="torch")

    assert torch.autograd.gradcheck(fn, (q, k, v, pos), eps=1e-6, atol=1e-8)
    assert torch.autograd.gradcheck(lambda q, k, v: hsa(q, k, v, h, include_self=include_self), (q, k, v))


@pytest.mark.parametrize("seed", range(10))
def test_gradients_equal_reference(seed):
    h = random_hierarchy(300 + seed)
    q, k, v, pos = inputs(h, seed=seed, grad=True)
    pos = pos.detach()[:, 0].requires_grad_() if seed % 2 else pos  # the [M, C] form too
    include_self = seed % 3 == 0
    w = torch.randn(h.num_leaves, 2, 5, dtype=F64)
    args = [q, k, v, pos]
    g1 = torch.autograd.grad((hsa(q, k, v, h, pos=pos, include_self=include_self) * w).sum(), args)
    g2 = torch.autograd.grad((hsa_reference(q, k, v, h, pos=pos, include_self=include_self) * w).sum(), args)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


# ---------------------------------------------------------------- structure identities
def test_batch_invariance_and_order():
    trees = [random_hierarchy(s) for s in (1, 2, 3)]
    data = [inputs(t, seed=i) for i, t in enumerate(trees)]
    alone = [hsa(q, k, v, t, pos=p) for t, (q, k, v, p) in zip(trees, data)]
    for order in ([0, 1, 2], [2, 0, 1]):
        forest = Hierarchy.batch([trees[i] for i in order])
        q, k, v, p = (torch.cat([data[i][j] for i in order]) for j in range(4))
        out = hsa(q, k, v, forest, pos=p)
        pieces = out.split([trees[i].num_leaves for i in order])
        for i, piece in zip(order, pieces):
            torch.testing.assert_close(piece, alone[i], rtol=0, atol=1e-13)


def test_chain_changes_nothing():
    plain = Hierarchy.from_nested([[0, 1, 2], [[3, 4], [5, 6, 7]], [8, 9]])
    chained = Hierarchy.from_nested([[[[0, 1, 2]]], [[[[3, 4]]], [5, 6, 7]], [[8, [9]]]])
    q, k, v, _ = inputs(plain)
    for include_self in (False, True):
        torch.testing.assert_close(
            hsa(q, k, v, chained, include_self=include_self),
            hsa(q, k, v, plain, include_self=include_self),
            rtol=0,
            atol=1e-13,
        )


def test_permuting_an_unordered_family_permutes_only_its_leaves():
    h = Hierarchy.from_nested([[0, 1, 2], [[3, 4], [5, 6, 7]], [8, 9]])
    swapped = Hierarchy.from_nested([[0, 1, 2], [[3, 4, 5], [6, 7]], [8, 9]])  # [3,4] and [5,6,7] swapped
    perm = torch.tensor([0, 1, 2, 5, 6, 7, 3, 4, 8, 9])  # leaf of `swapped` -> leaf of h
    q, k, v, _ = inputs(h)
    out = hsa(q, k, v, h)
    out_swapped = hsa(q[perm], k[perm], v[perm], swapped)
    torch.testing.assert_close(out_swapped, out[perm], rtol=0, atol=1e-13)


# ---------------------------------------------------------------- low precision
LOW = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seed", range(4))
def test_low_precision_error_rule(dtype, seed):
    """FlashAttention's rule: error vs the fp64 reference at most 2x that of the same computation done
    naively in the low precision, plus the dtype's rounding floor. Outputs and gradients."""
    h = random_hierarchy(500 + seed)
    q, k, v, pos = inputs(h, heads=2, d=16, dv=8, seed=seed)
    q, k, v, pos = (x.to(dtype).to(F64) for x in (q, k, v, pos))  # exactly representable inputs
    use_pos = pos if seed % 2 else None

    def run(fn, dt, **kw):
        xs = [x.detach().to(dt).requires_grad_() for x in (q, k, v)]
        p = None if use_pos is None else use_pos.to(dt)
        out = fn(*xs, h, pos=p, include_self=bool(seed // 2), **kw)
        out.float().sum().backward() if out.dtype != F64 else out.sum().backward()
        return [out.to(F64)] + [x.grad.to(F64) for x in xs]

    exact = run(hsa_reference, F64)
    fast = run(hsa, dtype)
    naive = run(hsa_reference, dtype, compute_dtype=dtype)
    for name, e, f, n in zip(("out", "dq", "dk", "dv"), exact, fast, naive):
        err_fast, err_naive = (f - e).abs().max().item(), (n - e).abs().max().item()
        floor = LOW[dtype] * e.abs().max().item()
        assert err_fast <= 2 * err_naive + floor, f"{name}: {err_fast:.3g} > 2 x {err_naive:.3g} + {floor:.3g}"


# ---------------------------------------------------------------- bad input
def test_input_validation():
    h = Hierarchy.from_nested([0, [1, 2]])
    q, k, v, pos = inputs(h)
    with pytest.raises(ValueError, match="4 tokens but the hierarchy has 3 leaves"):
        hsa(torch.cat([q, q[:1]]), torch.cat([k, k[:1]]), torch.cat([v, v[:1]]), h)
    with pytest.raises(ValueError, match="pos must be"):
        hsa(q, k, v, h, pos=pos[:2])
    with pytest.raises(ValueError, match="unknown HSA backend"):
        hsa(q, k, v, h, backend="cuda-magic")
    with pytest.raises(ValueError, match=r"q and k must be \[N, H, D\]"):
        hsa(q[:, 0], k[:, 0], v, h)
    with pytest.raises(TypeError, match="floating-point"):
        hsa(q.long(), k.long(), v, h)
    with pytest.raises(TypeError, match="Hierarchy"):
        hsa(q, k, v, [0, [1, 2]])
