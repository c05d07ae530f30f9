import numpy as np
import pytest
import torch

from mmhsa import DOMAINS, Hierarchy
from tests.mmhsa.trees import EDGE_TREES, random_hierarchy

EXAMPLE = [[0, 1, 2], [[3, 4], [5, 6, 7]], [8, 9]]


def test_from_nested_example():
    h = Hierarchy.from_nested(EXAMPLE)
    # root, [0,1,2], [[3,4],[5,6,7]], [3,4], [5,6,7], [8,9] are internal: 6 + 10 leaves.
    assert (h.num_leaves, h.num_nodes, h.num_trees, h.max_depth) == (10, 16, 1, 3)
    assert h.parent.tolist() == [-1, 0, 1, 1, 1, 0, 5, 6, 6, 5, 9, 9, 9, 0, 13, 13]
    assert h.leaf_start.tolist()[:6] == [0, 0, 0, 1, 2, 3]
    assert h.leaf_end.tolist()[:6] == [10, 3, 1, 2, 3, 8]
    assert h.leaf_node.tolist() == [2, 3, 4, 7, 8, 10, 11, 12, 14, 15]
    assert h.to_nested() == EXAMPLE
    assert h.kinds_of()[:3] == ["node", "node", "leaf"]


@pytest.mark.parametrize("name", sorted(EDGE_TREES))
def test_round_trip_and_parents(name):
    tree = EDGE_TREES[name]
    h = Hierarchy.from_nested(tree)
    assert h.to_nested() == tree
    again = Hierarchy.from_parents(h.parent)
    for attr in ("parent", "depth", "leaf_start", "leaf_end", "leaf_node"):
        assert torch.equal(getattr(h, attr), getattr(again, attr))


@pytest.mark.parametrize(
    "tree, message",
    [
        ([[0, 2], [1]], "not depth-first contiguous"),
        ([[0, 1], []], "empty internal node at path [1]"),
        ([1, 0], "not depth-first contiguous"),
        ([0, "a"], "expected a leaf index or a list"),
        ([0, 1.5], "expected a leaf index or a list"),
    ],
)
def test_from_nested_rejects(tree, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Hierarchy.from_nested(tree)


@pytest.mark.parametrize(
    "parent, message",
    [
        ([], "no nodes"),
        ([-1, 0, 5], "node 2 has parent 5"),
        ([-1, 2, 0], "parent 2 >= itself"),
        ([-1, 1], "parent 1 >= itself"),  # a self-loop
        ([-1, 0, 0, 1], "pre-order"),  # node 3 belongs under node 1 but comes after node 2
        ([-1, -3], "node 1 has parent -3"),
    ],
)
def test_from_parents_rejects(parent, message):
    with pytest.raises(ValueError, match=message):
        Hierarchy.from_parents(parent)


def test_forest_from_parents():
    h = Hierarchy.from_parents([-1, 0, 0, -1, -1, 4, 4, 4])
    assert h.num_trees == 3 and h.num_leaves == 6
    assert h.tree_node_ptr.tolist() == [0, 3, 4, 8]
    assert h.tree_leaf_ptr.tolist() == [0, 2, 3, 6]


def test_windows_partial_and_levels():
    h = Hierarchy.windows(100, branching=(2, 4, 8))
    # 100 leaves -> 50 windows of 2 -> 13 of 4 (last partial) -> 2 of 8 -> root.
    counts = torch.bincount(h.depth).tolist()
    assert counts == [1, 2, 13, 50, 100]
    assert h.num_children[h.depth == 2].tolist() == [4] * 12 + [2]
    assert h.num_leaves == 100 and h.leaf_end[0] == 100
    assert Hierarchy.windows(1).num_nodes == 1
    # grouping stops once one node is left: no chains on top
    assert torch.bincount(Hierarchy.windows(6, (2, 4, 8, 16)).depth).tolist() == [1, 3, 6]
    with pytest.raises(ValueError, match="branching"):
        Hierarchy.windows(10, (1, 2))
    with pytest.raises(ValueError, match="n_leaves"):
        Hierarchy.windows(0)


def test_regular_video_grid():
    h = Hierarchy.regular([2, 3, (2, 2)], kinds=["video", "clip", "frame", "patch"], domains=["time", "index", "grid"])
    assert h.num_leaves == 24 and h.num_nodes == 1 + 2 + 6 + 24
    assert torch.bincount(h.depth).tolist() == [1, 2, 6, 24]
    kinds = h.kinds_of()
    assert kinds[0] == "video" and kinds[1] == "clip" and kinds[2] == "frame" and kinds[3] == "patch"
    patches = h.leaf_node[:4]
    assert h.coord[patches].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert set(h.domain[patches].tolist()) == {DOMAINS.index("grid")}
    frames = torch.nonzero(h.depth == 2).flatten()
    assert h.coord[frames, 0].tolist() == [0, 1, 2, 0, 1, 2]
    assert h.to_nested() == [
        [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]],
        [[12, 13, 14, 15], [16, 17, 18, 19], [20, 21, 22, 23]],
    ]


def test_batch_and_join():
    a, b = Hierarchy.from_nested([0, [1, 2]]), Hierarchy.regular([2, 2], kinds=["doc", "sent", "tok"])
    f = Hierarchy.batch([a, b, a])
    assert f.num_trees == 3 and f.num_leaves == 3 + 4 + 3
    assert f.tree_node_ptr.tolist() == [0, 5, 12, 17]
    assert f.kinds_of(f.tree_node_ptr[1:2]) == ["doc"]
    s = Hierarchy.join([a, b], kind="sample", keys=["video", "question"])
    assert s.num_trees == 1 and s.num_nodes == 1 + 5 + 7
    roots = torch.nonzero(s.parent == 0).flatten()
    assert s.domain[roots].tolist() == [DOMAINS.index("key")] * 2
    assert [s.key_names[int(c)] for c in s.coord[roots, 0]] == ["video", "question"]
    assert s.to_nested() == [[0, [1, 2]], [[3, 4], [5, 6]]]
    # keys are re-mapped into the forest's vocabulary
    t = Hierarchy.join([b], keys=["answer_0"])
    ft = Hierarchy.batch([s, t])
    t_root_child = int(ft.tree_node_ptr[1]) + 1
    assert ft.key_names[int(ft.coord[t_root_child, 0])] == "answer_0"
    with pytest.raises(ValueError, match="single tree"):
        Hierarchy.join([f])


@pytest.mark.parametrize("seed", range(12))
def test_subtree_undoes_join(seed):
    """join(parts) then subtree(each key child) gives every part back, metadata included."""
    rng = np.random.default_rng(seed)
    parts = [random_hierarchy(int(s)) for s in rng.integers(0, 1000, 3)]
    parts = [p.subtree(0) if p.num_trees > 1 else p for p in parts]  # join takes single trees
    keys = ["video", "question", "answer_0"]
    joined = Hierarchy.join(parts, keys=keys)
    children = joined.keyed_children(0)
    assert list(children) == keys and joined.children(0) == list(children.values())
    for key, part in zip(keys, parts):
        sub = joined.subtree(children[key])
        assert sub.num_trees == 1 and sub.num_leaves == part.num_leaves
        assert torch.equal(sub.parent, part.parent)
        assert sub.kinds_of() == part.kinds_of()
        assert torch.equal(sub.domain[1:], part.domain[1:]) and torch.equal(sub.coord[1:], part.coord[1:])
        assert sub.domain[0] == DOMAINS.index("set")
        start = int(joined.leaf_start[children[key]])
        assert int(joined.leaf_end[children[key]]) - start == part.num_leaves
    with pytest.raises(IndexError, match="outside"):
        joined.subtree(joined.num_nodes)


@pytest.mark.parametrize("seed", range(20))
def test_plan_invariants(seed):
    h = random_hierarchy(seed)
    p = h.plan
    m = h.num_nodes
    assert sorted(p.node.tolist()) == list(range(m))
    depth = h.depth[p.node]
    assert torch.all(depth[1:] >= depth[:-1])
    # parents: level-order position of the parent through parent_local
    for d in range(1, p.num_levels):
        sl = p.level(d)
        parent_pos = p.parent_local[sl] + p.level_ptr[d - 1]
        assert torch.equal(p.node[parent_pos], h.parent[p.node[sl]])
    # families are contiguous segments that tile the non-root positions exactly once
    covered = torch.zeros(m, dtype=torch.long)
    for start, size in zip(p.family_start.tolist(), p.family_size.tolist()):
        members = p.node[start : start + size]
        assert len(set(h.parent[members].tolist())) == 1
        covered[start : start + size] += 1
    assert covered[: p.level_ptr[1]].sum() == 0 and torch.all(covered[p.level_ptr[1] :] == 1)
    for d in range(1, p.num_levels):  # each level's families: a reshape, or buckets covering every node once
        layout, count = p.families[d], p.level_ptr[d + 1] - p.level_ptr[d]
        sizes = p.family_size[(p.family_start >= p.level_ptr[d]) & (p.family_start < p.level_ptr[d + 1])]
        if layout.size is not None:
            assert torch.all(sizes == layout.size) and count % layout.size == 0
            continue
        slots = []
        for size, members, valid in layout.buckets:
            assert members.shape == valid.shape and members.shape[1] == size
            slots.append(members.flatten())
        assert sorted(torch.cat(slots)[layout.gather].tolist()) == list(range(count))
    assert torch.equal(p.node[p.leaf_pos], h.leaf_node)
    assert torch.allclose(p.n, (h.leaf_end - h.leaf_start)[p.node].double())


def test_to_device_keeps_host_metadata():
    h = Hierarchy.regular([2, 3])
    same = h.to("cpu")
    assert same is h
    moved = h.to("meta")
    assert moved.parent.device.type == "meta" and moved.plan.node.device.type == "meta"
    assert moved.plan.families[1].buckets == () and moved.plan.family_start.device.type == "meta"
    irregular = Hierarchy.from_nested([[0, 1], [2, 3, 4]]).to("meta")
    assert irregular.plan.families[2].buckets[0][1].device.type == "meta"
    assert h.parent.device.type == "cpu"


def test_metadata_validation():
    with pytest.raises(ValueError, match="unknown position domain 'sphere'"):
        Hierarchy.from_parents([-1, 0], domains=["set", "sphere"])
    with pytest.raises(ValueError, match="coords"):
        Hierarchy.from_parents([-1, 0], coords=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="kinds"):
        Hierarchy.from_parents([-1, 0], kinds=["a"])
    h = Hierarchy.from_parents(
        [-1, 0, 0], kinds=["doc", "tok", "tok"], domains=["set", "index", "index"], coords=[0, 0, 1]
    )
    assert h.kinds_of() == ["doc", "tok", "tok"] and h.coord[:, 0].tolist() == [0, 0, 1]
