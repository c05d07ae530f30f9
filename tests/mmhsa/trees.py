"""Random and hand-made trees for the operator tests."""

from __future__ import annotations

import numpy as np

from mmhsa import Hierarchy


def random_nested(rng: np.random.Generator, max_depth: int, max_children: int, max_leaves: int = 160):
    """A random irregular tree as nested lists: mixed family sizes (1..max_children), single-child
    chains, lone leaves next to subtrees, leaves at every depth."""
    counter = [0]

    def leaf():
        counter[0] += 1
        return counter[0] - 1

    def build(depth: int):
        if depth >= max_depth or counter[0] >= max_leaves or (depth > 0 and rng.random() < 0.25):
            return leaf()
        r = rng.random()
        if r < 0.15:
            b = 1  # a chain
        elif r < 0.3:
            b = int(rng.integers(1, max_children + 1))
        else:
            b = int(rng.integers(2, min(6, max_children) + 1))
        return [build(depth + 1) for _ in range(b)]

    tree = build(0)
    return tree if isinstance(tree, list) else [tree]


def random_hierarchy(seed: int) -> Hierarchy:
    """One tree or a forest of mixed trees (including one-leaf trees), depth 1..8, families 1..64."""
    rng = np.random.default_rng(seed)
    max_depth = int(rng.integers(1, 9))
    max_children = int(rng.choice([2, 3, 8, 17, 64]))
    budget = 40 if max_children == 64 else 100
    trees = [Hierarchy.from_nested(random_nested(rng, max_depth, max_children, budget))]
    if rng.random() < 0.4:  # a forest
        for _ in range(int(rng.integers(1, 4))):
            if rng.random() < 0.3:
                trees.append(Hierarchy.from_nested(0))  # a one-leaf tree
            else:
                trees.append(Hierarchy.from_nested(random_nested(rng, int(rng.integers(1, 5)), 5, 30)))
        rng.shuffle(trees)
    return Hierarchy.batch(trees)


# Hand-made degenerate and edge shapes (nested lists; ints are leaves in order).
EDGE_TREES = {
    "one_leaf": 0,
    "flat_1": [0],
    "flat_2": [0, 1],
    "chain": [[[[0, 1]]]],
    "chain_to_leaf": [[[0]], 1],
    "lone_leaves": [0, [1, 2, 3], 4, [[5]]],
    "deep_chain_9": [[[[[[[[[0]]]]]]]], [1, 2]],
    "video_like": [[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[8, 9], [10, 11]]],
}
