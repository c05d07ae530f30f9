"""`Hierarchy`: a packed forest of signal trees, the structure HSA attends over.

Nodes are numbered in depth-first pre-order (tree after tree); leaves are the tokens, numbered
``0..N-1`` in depth-first order, so every node covers a contiguous range of leaves. Besides the tree
itself a hierarchy carries per-node domain metadata (kind, position domain, coordinates) for the
position encoders, and a :class:`LevelPlan`: the index arrays the vectorised operator passes need,
built once here rather than on every call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

__all__ = ["Hierarchy", "LevelPlan", "FamilyLayout", "DOMAINS"]

#: Position domains of a family: how siblings are placed relative to each other.
#: ``set``: unordered (no position); ``index``: 1-D integer position; ``grid``: 2-D (row, col);
#: ``time``: seconds; ``key``: a named slot (coordinate = the key's id in ``key_names``).
DOMAINS = ("set", "index", "grid", "time", "key")

# Families of similar size share one padded attention call; sizes down to 1/BUCKET_RATIO of the
# bucket's size join it (so at most BUCKET_RATIO**2 wasted work on the b^2 family attention).
BUCKET_RATIO = 1.25


@dataclass(frozen=True)
class LevelPlan:
    """Index arrays for the level-by-level passes of the HSA dynamic program.

    Nodes are re-ordered by (depth, pre-order): *level order*. In it every level is one contiguous
    slice ``level_ptr[d]:level_ptr[d+1]`` and the children of any node are contiguous (a family is a
    varlen segment, like FlashAttention's ``cu_seqlens``). Tensors live on the hierarchy's device;
    the Python ints are host-side so slicing never synchronises with a GPU.

    Shapes: M nodes, N leaves, F families (internal nodes), L+1 levels.
    """

    level_ptr: tuple[int, ...]  # L+2 offsets of the levels in level order
    node: torch.Tensor  # [M] pre-order id of the node at each level-order position
    n: torch.Tensor  # [M] float64 leaves under each node (level order)
    parent_local: torch.Tensor  # [M] parent's index within its own level (-1 for roots)
    child_weight: torch.Tensor  # [M] float64 n(node) / n(parent) (0 for roots)
    has_sibling: torch.Tensor  # [M] bool: the node's family has two or more members
    leaf_pos: torch.Tensor  # [N] level-order position of leaf i
    leaves_by_level: torch.Tensor  # [N] leaf ids sorted by level-order position
    leaves_local: torch.Tensor  # [N] their index within their level
    leaf_level_ptr: tuple[int, ...]  # L+2 offsets of each level's leaves in leaves_by_level
    level_leaf_first: tuple[int | None, ...]  # first leaf id if level d is exactly leaves a..a+size-1
    family_start: torch.Tensor  # [F] level-order position of each family's first child (varlen starts)
    family_size: torch.Tensor  # [F] children per family
    # (family_start, family_size) kept on the CPU wherever the plan goes: the Triton launcher builds its
    # block tables from them, and reading them back from a GPU would synchronise it on every new hierarchy.
    family_host: tuple[torch.Tensor, torch.Tensor]
    families: tuple[FamilyLayout | None, ...]  # per level (None for the roots' level)

    @property
    def num_levels(self) -> int:
        return len(self.level_ptr) - 1

    def level(self, d: int) -> slice:
        """Slice of level ``d`` in level-order arrays."""
        return slice(self.level_ptr[d], self.level_ptr[d + 1])

    def level_leaves(self, d: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(leaf ids, their index within level ``d``) of the leaves at depth ``d``."""
        s = slice(self.leaf_level_ptr[d], self.leaf_level_ptr[d + 1])
        return self.leaves_by_level[s], self.leaves_local[s]

    def to(self, device) -> LevelPlan:
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                moved[f.name] = value.to(device)
            elif f.name == "families":
                moved[f.name] = tuple(None if lay is None else lay.to(device) for lay in value)
        return replace(self, **moved)  # family_host, a tuple, stays on the CPU


@dataclass(frozen=True)
class FamilyLayout:
    """How the families of one level (its nodes grouped by parent) are batched for attention.

    ``size`` set: every family has exactly ``size`` members, so the level is a ``[F, size]`` view
    (no copies; the common case of regular video and text grids). Otherwise families of similar
    size share padded buckets: ``buckets`` holds (padded size S, members [F_b, S] level-local
    indices, padding repeating the family's first member, valid [F_b, S]), and ``gather`` [M_d]
    is each node's slot in the concatenation of the flattened buckets.
    """

    size: int | None
    buckets: tuple[tuple[int, torch.Tensor, torch.Tensor], ...] = ()
    gather: torch.Tensor | None = None
    single_leaf_keys: bool = False  # every member covers one leaf: the key bias log n(B) is all zero

    def to(self, device) -> FamilyLayout:
        return FamilyLayout(
            self.size,
            tuple((s, m.to(device), v.to(device)) for s, m, v in self.buckets),
            None if self.gather is None else self.gather.to(device),
            self.single_leaf_keys,
        )


def _family_layout(family_start: np.ndarray, family_size: np.ndarray, n: np.ndarray, lo: int, hi: int) -> FamilyLayout:
    """The :class:`FamilyLayout` of the level occupying level-order positions ``lo..hi-1``."""
    mine = (family_start >= lo) & (family_start < hi)
    starts, sizes = family_start[mine] - lo, family_size[mine]
    if np.all(sizes == sizes[0]):  # families tile the level in order: a plain reshape
        return FamilyLayout(int(sizes[0]), single_leaf_keys=bool(np.all(n[lo:hi] == 1)))
    order = np.argsort(-sizes, kind="stable")
    gather = np.empty(hi - lo, dtype=np.int64)
    buckets, first, offset = [], 0, 0
    while first < len(order):
        top = int(sizes[order[first]])
        last = first
        while last < len(order) and sizes[order[last]] * BUCKET_RATIO >= top:
            last += 1
        fam = np.sort(order[first:last])
        members = starts[fam][:, None] + np.arange(top)[None, :]
        valid = np.arange(top)[None, :] < sizes[fam][:, None]
        slots = offset + np.arange(len(fam))[:, None] * top + np.arange(top)[None, :]
        gather[members[valid]] = slots[valid]
        members = np.where(valid, members, starts[fam][:, None])
        buckets.append((top, torch.from_numpy(members), torch.from_numpy(valid)))
        offset += len(fam) * top
        first = last
    return FamilyLayout(None, tuple(buckets), torch.from_numpy(gather))


def _preorder_check(parent: np.ndarray, subtree: np.ndarray) -> str | None:
    """Return a description of the first violation of depth-first pre-order numbering, else None."""
    m = len(parent)
    # Children of each parent (and the roots, under parent -1) in increasing id order must tile
    # the parent's range: first child = parent + 1, next = previous + its subtree size.
    order = np.lexsort((np.arange(m), parent))
    p_sorted, v_sorted = parent[order], order
    first = np.ones(m, dtype=bool)
    first[1:] = p_sorted[1:] != p_sorted[:-1]
    expected = np.where(first, p_sorted + 1, 0)
    prev = np.roll(v_sorted, 1)
    expected = np.where(first, expected, prev + subtree[prev])
    bad = np.nonzero(expected != v_sorted)[0]
    if len(bad):
        v = int(v_sorted[bad[0]])
        return f"node {v} (parent {int(parent[v])}) is not numbered in depth-first pre-order"
    return None


class Hierarchy:
    """A packed forest of rooted trees whose leaves are tokens.

    Build with :meth:`from_nested`, :meth:`from_parents`, :meth:`windows`, :meth:`regular`, and
    combine with :meth:`batch` (a forest) or :meth:`join` (a new root over several trees).

    Attributes (tensors on :attr:`device`; M nodes in pre-order, N leaves, T trees):
        parent: [M] long, -1 for roots.
        depth: [M] long, 0 for roots.
        leaf_start, leaf_end: [M] long, the node's leaves are ``leaf_start..leaf_end-1``.
        leaf_node: [N] long, pre-order id of each leaf.
        kind: [M] long index into :attr:`kind_names` ("clip", "frame", "patch", ...).
        domain: [M] long index into :data:`DOMAINS`: the domain of the node's position among siblings.
        coord: [M, 2] float32 position of the node in that domain (see :data:`DOMAINS`).
        tree_node_ptr, tree_leaf_ptr: [T+1] long node / leaf offsets of each tree.
        plan: the :class:`LevelPlan` of the operator passes.
    """

    def __init__(
        self,
        parent: np.ndarray | Sequence[int],
        *,
        kind: np.ndarray | None = None,
        kind_names: Sequence[str] = ("node", "leaf"),
        domain: np.ndarray | None = None,
        coord: np.ndarray | None = None,
        key_names: Sequence[str] = (),
        _validated: bool = False,
    ):
        parent = np.asarray(parent, dtype=np.int64).reshape(-1)
        m = len(parent)
        if m == 0:
            raise ValueError("hierarchy has no nodes")
        idx = np.arange(m)
        if not _validated:
            if np.any(parent < -1) or np.any(parent >= m):
                v = int(np.nonzero((parent < -1) | (parent >= m))[0][0])
                raise ValueError(f"bad parent array: node {v} has parent {int(parent[v])} (valid: -1..{m - 1})")
            if np.any((parent >= 0) & (parent >= idx)):
                v = int(np.nonzero((parent >= 0) & (parent >= idx))[0][0])
                raise ValueError(
                    f"bad parent array: node {v} has parent {int(parent[v])} >= itself "
                    "(a cycle, or nodes not in depth-first pre-order)"
                )
        # Depth by pointer chasing: one vectorised step per level.
        depth = np.zeros(m, dtype=np.int64)
        cur = parent.copy()
        while np.any(cur >= 0):
            live = cur >= 0
            depth[live] += 1
            cur[live] = parent[cur[live]]
        max_depth = int(depth.max())
        # Subtree sizes and leaf counts bottom-up, one level at a time.
        num_children = np.bincount(parent[parent >= 0], minlength=m)
        is_leaf = num_children == 0
        subtree = np.ones(m, dtype=np.int64)
        for d in range(max_depth, 0, -1):
            at = np.nonzero(depth == d)[0]
            np.add.at(subtree, parent[at], subtree[at])
        if not _validated:
            problem = _preorder_check(parent, subtree)
            if problem:
                raise ValueError(f"bad parent array: {problem}")
        leaves_before = np.concatenate([[0], np.cumsum(is_leaf)])
        leaf_start = leaves_before[idx]
        leaf_end = leaves_before[idx + subtree]
        roots = np.nonzero(parent < 0)[0]

        self.kind_names = tuple(kind_names)
        self.key_names = tuple(key_names)
        if kind is None:
            kind = np.where(is_leaf, self.kind_names.index("leaf") if "leaf" in self.kind_names else 0, 0)
        if domain is None:  # default: siblings ordered by their index in the family
            domain = np.full(m, DOMAINS.index("index"), dtype=np.int64)
            domain[roots] = DOMAINS.index("set")
        if coord is None:
            coord = np.zeros((m, 2), dtype=np.float32)
            coord[:, 0] = _child_index(parent)
        kind, domain = np.asarray(kind, dtype=np.int64), np.asarray(domain, dtype=np.int64)
        coord = np.asarray(coord, dtype=np.float32).reshape(m, 2)
        if len(kind) != m or len(domain) != m:
            raise ValueError(f"metadata length mismatch: {m} nodes, {len(kind)} kinds, {len(domain)} domains")
        if np.any((kind < 0) | (kind >= len(self.kind_names))):
            raise ValueError(f"kind ids must index kind_names {self.kind_names}")
        if np.any((domain < 0) | (domain >= len(DOMAINS))):
            raise ValueError(f"domain ids must index {DOMAINS}")

        self._np = dict(
            parent=parent,
            depth=depth,
            leaf_start=leaf_start,
            leaf_end=leaf_end,
            kind=kind,
            domain=domain,
            coord=coord,
            subtree=subtree,
        )
        self.num_nodes = m
        self.num_leaves = int(is_leaf.sum())
        self.num_trees = len(roots)
        self.max_depth = max_depth
        self.parent = torch.from_numpy(parent)
        self.depth = torch.from_numpy(depth)
        self.leaf_start = torch.from_numpy(leaf_start)
        self.leaf_end = torch.from_numpy(leaf_end)
        self.leaf_node = torch.from_numpy(np.nonzero(is_leaf)[0])
        self.kind = torch.from_numpy(kind)
        self.domain = torch.from_numpy(domain)
        self.coord = torch.from_numpy(coord)
        self.tree_node_ptr = torch.from_numpy(np.append(roots, m))
        self.tree_leaf_ptr = torch.from_numpy(np.append(leaf_start[roots], self.num_leaves))
        self.plan = self._build_plan(parent, depth, leaf_end - leaf_start, is_leaf, num_children)

    # ------------------------------------------------------------------ plan
    @staticmethod
    def _build_plan(parent, depth, n, is_leaf, num_children) -> LevelPlan:
        m = len(parent)
        node = np.lexsort((np.arange(m), depth))  # level order: by depth, then pre-order
        pos = np.empty(m, dtype=np.int64)
        pos[node] = np.arange(m)
        level_ptr = np.searchsorted(depth[node], np.arange(depth.max() + 2))
        lvl_parent = np.where(parent[node] >= 0, pos[np.maximum(parent[node], 0)], -1)
        parent_depth = np.maximum(depth[node] - 1, 0)
        parent_local = np.where(lvl_parent >= 0, lvl_parent - level_ptr[parent_depth], -1)
        n_lvl = n[node].astype(np.float64)
        child_weight = np.where(lvl_parent >= 0, n_lvl / n_lvl[np.maximum(lvl_parent, 0)], 0.0)
        siblings = np.where(parent[node] >= 0, num_children[np.maximum(parent[node], 0)], 1)
        leaf_ids = np.arange(int(is_leaf.sum()))
        leaf_pos = pos[np.nonzero(is_leaf)[0]]
        leaves_by_level = leaf_ids[np.argsort(leaf_pos, kind="stable")]
        leaf_level_ptr = np.searchsorted(np.sort(leaf_pos), level_ptr)
        leaves_local = leaf_pos[leaves_by_level] - level_ptr[depth[np.nonzero(is_leaf)[0]][leaves_by_level]]
        # Families: internal nodes in level order; children are contiguous in level order.
        internal = node[~is_leaf[node]]
        first_child = np.full(m, m, dtype=np.int64)
        np.minimum.at(first_child, parent[parent >= 0], pos[np.nonzero(parent >= 0)[0]])
        family_start = first_child[internal]
        family_size = num_children[internal]
        families = [None] + [
            _family_layout(family_start, family_size, n_lvl, level_ptr[d], level_ptr[d + 1])
            for d in range(1, len(level_ptr) - 1)
        ]
        level_leaf_first = []
        for d in range(len(level_ptr) - 1):
            ids = leaves_by_level[leaf_level_ptr[d] : leaf_level_ptr[d + 1]]
            size = level_ptr[d + 1] - level_ptr[d]
            whole = len(ids) == size and (size == 0 or ids[-1] - ids[0] + 1 == size)
            level_leaf_first.append(int(ids[0]) if whole and size else None)
        t = torch.from_numpy
        return LevelPlan(
            level_ptr=tuple(int(x) for x in level_ptr),
            node=t(node),
            n=t(n_lvl),
            parent_local=t(parent_local),
            child_weight=t(child_weight),
            has_sibling=t(siblings >= 2),
            leaf_pos=t(leaf_pos),
            leaves_by_level=t(leaves_by_level),
            leaves_local=t(leaves_local),
            leaf_level_ptr=tuple(int(x) for x in leaf_level_ptr),
            level_leaf_first=tuple(level_leaf_first),
            family_start=t(family_start),
            family_size=t(family_size),
            family_host=(t(family_start), t(family_size)),
            families=tuple(families),
        )

    # -------------------------------------------------------------- builders
    @classmethod
    def from_parents(
        cls,
        parent: Sequence[int] | np.ndarray | torch.Tensor,
        *,
        kinds: Sequence[str] | None = None,
        domains: Sequence[str] | None = None,
        coords: np.ndarray | Sequence[Sequence[float]] | None = None,
        key_names: Sequence[str] = (),
    ) -> Hierarchy:
        """Build from a parent array in depth-first pre-order (``-1`` marks a root; several = a forest).

        Args:
            parent: [M] parent id of each node.
            kinds: optional [M] kind name per node (default "leaf"/"node").
            domains: optional [M] name from :data:`DOMAINS` per node (default "index").
            coords: optional [M, 2] (or [M]) coordinates in that domain.
            key_names: the names that "key"-domain coordinates index.
        """
        if isinstance(parent, torch.Tensor):
            parent = parent.cpu().numpy()
        parent = np.asarray(parent, dtype=np.int64)
        kind, kind_names = _encode_kinds(kinds, parent)
        domain = None if domains is None else _encode_domains(domains)
        coord = None if coords is None else _as_coords(coords, len(parent))
        return cls(parent, kind=kind, kind_names=kind_names, domain=domain, coord=coord, key_names=key_names)

    @classmethod
    def from_nested(cls, tree) -> Hierarchy:
        """Build one tree from nested lists whose integers are the leaves ``0..N-1`` in depth-first order.

        ``Hierarchy.from_nested([[0, 1, 2], [[3, 4], [5, 6, 7]], [8, 9]])`` has 10 leaves, 15 nodes.
        A bare integer is a one-leaf tree.
        """
        parent: list[int] = []
        next_leaf = 0
        stack = [(tree, -1, ())]  # (subtree, parent id, path of child indices for error messages)
        while stack:
            sub, par, path = stack.pop()
            me = len(parent)
            parent.append(par)
            if isinstance(sub, (bool, np.bool_)) or not isinstance(sub, (int, np.integer, list, tuple)):
                raise ValueError(
                    f"node at path {list(path)}: expected a leaf index or a list, got {type(sub).__name__}"
                )
            if isinstance(sub, (int, np.integer)):
                if int(sub) != next_leaf:
                    raise ValueError(
                        f"leaf numbering not depth-first contiguous: leaf at path {list(path)} is {int(sub)}, "
                        f"expected {next_leaf}"
                    )
                next_leaf += 1
                continue
            if len(sub) == 0:
                raise ValueError(f"empty internal node at path {list(path)}")
            stack.extend((child, me, path + (i,)) for i, child in reversed(list(enumerate(sub))))
        return cls(np.asarray(parent), _validated=True)

    @classmethod
    def windows(cls, n_leaves: int, branching: Sequence[int] = (2, 4, 8, 16)) -> Hierarchy:
        """Fixed hopping windows over a sequence (the paper's zero-shot hierarchy).

        Level by level from the bottom, consecutive nodes are grouped into windows of ``branching[i]``
        (the last window may be partial); a root joins whatever remains. Grouping stops early once a
        single node is left, so no chains are added above it.
        """
        if n_leaves < 1:
            raise ValueError(f"windows: n_leaves must be >= 1, got {n_leaves}")
        if any(int(b) < 2 for b in branching):
            raise ValueError(f"windows: every branching factor must be >= 2, got {tuple(branching)}")
        groups, count = [], n_leaves
        for b in branching:
            if count == 1:
                break
            groups.append(np.arange(count) // int(b))
            count = -(-count // int(b))
        if count > 1:
            groups.append(np.zeros(count, dtype=np.int64))
        if not groups:  # a single leaf: a one-node tree
            return cls(np.array([-1]), _validated=True)
        parent, _ = _from_level_groups(groups)
        return cls(parent, _validated=True)

    @classmethod
    def regular(
        cls,
        sizes: Sequence[int | tuple[int, int]],
        *,
        kinds: Sequence[str] | None = None,
        domains: Sequence[str] | None = None,
    ) -> Hierarchy:
        """A regular grid tree, sizes listed top-down: ``regular([8, 8, (14, 14)])`` is a video of
        8 clips x 8 frames x 14x14 patches (12,544 leaves). A ``(rows, cols)`` level is a 2-D grid.

        Args:
            sizes: children per node at each level, top-down.
            kinds: L+1 kind names, root first (default "root", "level1", ..., "leaf").
            domains: L domain names, one per level of children (default "grid" for 2-D levels,
                "index" otherwise).
        """
        if len(sizes) == 0:
            return cls(np.array([-1]), _validated=True)
        flat = [int(np.prod(s)) for s in sizes]
        if min(flat) < 1:
            raise ValueError(f"regular: every level size must be >= 1, got {list(sizes)}")
        kinds = list(kinds) if kinds is not None else ["root"] + [f"level{i}" for i in range(1, len(sizes))] + ["leaf"]
        if len(kinds) != len(sizes) + 1:
            raise ValueError(f"regular: {len(sizes)} levels need {len(sizes) + 1} kinds, got {len(kinds)}")
        if domains is None:
            domains = ["grid" if isinstance(s, (tuple, list)) else "index" for s in sizes]
        if len(domains) != len(sizes):
            raise ValueError(f"regular: {len(sizes)} levels need {len(sizes)} domains, got {len(domains)}")
        counts = np.cumprod(flat)  # nodes per level below the root
        groups = [np.arange(counts[i]) // flat[i] for i in range(len(sizes) - 1, -1, -1)]
        parent, where = _from_level_groups(groups)
        m = len(parent)
        kind = np.zeros(m, dtype=np.int64)
        domain = np.full(m, DOMAINS.index("set"), dtype=np.int64)
        coord = np.zeros((m, 2), dtype=np.float32)
        kind[where[-1]] = 0
        for li, size in enumerate(sizes):  # level li+1 (top-down) holds counts[li] nodes
            ids = where[len(sizes) - 1 - li]
            kind[ids] = li + 1
            domain[ids] = _encode_domains([domains[li]])[0]
            local = np.arange(counts[li]) % flat[li]
            if isinstance(size, (tuple, list)):
                coord[ids, 0], coord[ids, 1] = local // size[1], local % size[1]
            else:
                coord[ids, 0] = local
        return cls(parent, kind=kind, kind_names=kinds, domain=domain, coord=coord, _validated=True)

    @classmethod
    def batch(cls, hierarchies: Iterable[Hierarchy]) -> Hierarchy:
        """A forest: the nodes and leaves of the first hierarchy, then the second, ... Trees never interact."""
        hs = list(hierarchies)
        if not hs:
            raise ValueError("batch: no hierarchies given")
        kind_names = list(dict.fromkeys(name for h in hs for name in h.kind_names))
        key_names = list(dict.fromkeys(name for h in hs for name in h.key_names))
        parents, kinds, domains, coords, offset = [], [], [], [], 0
        for h in hs:
            p = h._np["parent"]
            parents.append(np.where(p >= 0, p + offset, -1))
            kinds.append(np.array([kind_names.index(n) for n in h.kind_names])[h._np["kind"]])
            coord = h._np["coord"].copy()
            is_key = h._np["domain"] == DOMAINS.index("key")
            if is_key.any():  # re-map key ids into the merged key vocabulary
                remap = np.array([key_names.index(n) for n in h.key_names], dtype=np.float32)
                coord[is_key, 0] = remap[coord[is_key, 0].astype(np.int64)]
            domains.append(h._np["domain"])
            coords.append(coord)
            offset += h.num_nodes
        out = cls(
            np.concatenate(parents),
            kind=np.concatenate(kinds),
            kind_names=kind_names,
            domain=np.concatenate(domains),
            coord=np.concatenate(coords),
            key_names=key_names,
            _validated=True,
        )
        return out.to(hs[0].device)

    forest = batch

    @classmethod
    def join(
        cls,
        parts: Sequence[Hierarchy],
        *,
        kind: str = "sample",
        keys: Sequence[str] | None = None,
    ) -> Hierarchy:
        """One tree whose root's children are the roots of ``parts`` (e.g. video, transcript, question).

        With ``keys`` the children sit in the "key" domain (named slots, e.g. "video", "question");
        without, in the "index" domain by their order.
        """
        if any(p.num_trees != 1 for p in parts):
            raise ValueError("join: every part must be a single tree (got a forest)")
        if keys is not None and len(keys) != len(parts):
            raise ValueError(f"join: {len(parts)} parts but {len(keys)} keys")
        forest = cls.batch(parts)
        fp = forest._np
        parent = np.concatenate([[-1], np.where(fp["parent"] >= 0, fp["parent"] + 1, 0)])
        kind_names = list(forest.kind_names) + ([kind] if kind not in forest.kind_names else [])
        kinds = np.concatenate([[kind_names.index(kind)], fp["kind"]])
        domain = np.concatenate([[DOMAINS.index("set")], fp["domain"]])
        coord = np.concatenate([np.zeros((1, 2), np.float32), fp["coord"]])
        roots = forest.tree_node_ptr[:-1].cpu().numpy() + 1
        key_names = list(forest.key_names)
        if keys is not None:
            key_names += [k for k in keys if k not in key_names]
            domain[roots] = DOMAINS.index("key")
            coord[roots, 0] = [key_names.index(k) for k in keys]
        else:
            domain[roots] = DOMAINS.index("index")
            coord[roots, 0] = np.arange(len(parts))
        coord[roots, 1] = 0
        out = cls(
            parent, kind=kinds, kind_names=kind_names, domain=domain, coord=coord, key_names=key_names, _validated=True
        )
        return out.to(forest.device)

    def subtree(self, node: int) -> Hierarchy:
        """The subtree rooted at ``node`` as a one-tree hierarchy: nodes ``node .. node + size - 1`` (pre-order
        makes them contiguous), leaves ``leaf_start[node] .. leaf_end[node] - 1``. Its root has no
        siblings, so it moves to the "set" domain; everything else keeps its metadata."""
        if not 0 <= node < self.num_nodes:
            raise IndexError(f"subtree: node {node} is outside 0..{self.num_nodes - 1}")
        nodes = slice(node, node + int(self._np["subtree"][node]))
        parent = self._np["parent"][nodes] - node
        parent[0] = -1
        domain, coord = self._np["domain"][nodes].copy(), self._np["coord"][nodes].copy()
        domain[0], coord[0] = DOMAINS.index("set"), 0
        out = Hierarchy(
            parent,
            kind=self._np["kind"][nodes],
            kind_names=self.kind_names,
            domain=domain,
            coord=coord,
            key_names=self.key_names,
            _validated=True,
        )
        return out.to(self.device)

    def children(self, node: int) -> list[int]:
        """The children of ``node`` in order (pre-order ids)."""
        end = node + int(self._np["subtree"][node])
        return [int(c) for c in np.nonzero(self._np["parent"][node + 1 : end] == node)[0] + node + 1]

    def keyed_children(self, node: int) -> dict[str, int]:
        """Children of ``node`` in the "key" domain by key name (e.g. a sample's "video", "question")."""
        key = DOMAINS.index("key")
        return {
            self.key_names[int(self._np["coord"][c, 0])]: c for c in self.children(node) if self._np["domain"][c] == key
        }

    # ------------------------------------------------------------ utilities
    @property
    def device(self) -> torch.device:
        return self.parent.device

    def to(self, device) -> Hierarchy:
        """A copy whose tensors (structure, metadata and plan) live on ``device``."""
        device = torch.device(device)
        if device == self.device:
            return self
        out = object.__new__(Hierarchy)
        out.__dict__.update(self.__dict__)
        for name, value in self.__dict__.items():
            if isinstance(value, torch.Tensor):
                setattr(out, name, value.to(device))
        out.plan = self.plan.to(device)
        return out

    @property
    def num_children(self) -> torch.Tensor:
        """[M] children per node (0 for leaves)."""
        p = self.parent
        return torch.zeros(self.num_nodes, dtype=torch.long, device=p.device).index_add_(
            0, p[p >= 0], torch.ones_like(p[p >= 0])
        )

    def membership(self, dtype=torch.float64) -> torch.Tensor:
        """[M, N] dense 0/1 matrix: node contains leaf (for reference computations and tests)."""
        j = torch.arange(self.num_leaves, device=self.device)
        inside = (j[None, :] >= self.leaf_start[:, None]) & (j[None, :] < self.leaf_end[:, None])
        return inside.to(dtype)

    def kinds_of(self, nodes: torch.Tensor | None = None) -> list[str]:
        """Kind names of ``nodes`` (all nodes by default)."""
        ids = self.kind if nodes is None else self.kind[nodes]
        return [self.kind_names[i] for i in ids.tolist()]

    def to_nested(self, tree: int = 0):
        """Nested-list form of one tree (the inverse of :meth:`from_nested`, leaves renumbered from 0)."""
        lo, hi = int(self.tree_node_ptr[tree]), int(self.tree_node_ptr[tree + 1])
        first_leaf = int(self._np["leaf_start"][lo])
        parent = self._np["parent"]
        children: dict[int, list] = {}
        out = None
        for v in range(hi - 1, lo - 1, -1):
            item = children.pop(v, None)
            if item is None:
                item = int(self._np["leaf_start"][v]) - first_leaf
            else:
                item = item[::-1]
            if v == lo:
                out = item
            else:
                children.setdefault(int(parent[v]), []).append(item)
        return out

    def __repr__(self) -> str:
        return (
            f"Hierarchy(trees={self.num_trees}, nodes={self.num_nodes}, leaves={self.num_leaves}, "
            f"depth={self.max_depth}, families={len(self.plan.family_size)}, device={self.device})"
        )


# ------------------------------------------------------------------ helpers
def _child_index(parent: np.ndarray) -> np.ndarray:
    """Index of each node among its siblings (roots: index among roots)."""
    order = np.lexsort((np.arange(len(parent)), parent))
    p = parent[order]
    start = np.ones(len(p), dtype=bool)
    start[1:] = p[1:] != p[:-1]
    group_first = np.maximum.accumulate(np.where(start, np.arange(len(p)), 0))
    out = np.empty(len(parent), dtype=np.int64)
    out[order] = np.arange(len(p)) - group_first
    return out


def _from_level_groups(groups: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Pre-order parent array of a tree given bottom-up level groupings.

    ``groups[l][i]`` is the parent (index within level l+1) of node i of level l; level 0 holds the
    leaves, the last level's nodes all map to 0, the single root. Every parent index must be used
    (no empty internal nodes) and non-decreasing (leaves in order).

    Returns (parent [M], ids) with ``ids[l]`` the pre-order id of every node of level l (the root
    last, as ``ids[len(groups)]``).
    """
    # First leaf and depth of every node; pre-order sorts by (first leaf, depth).
    first_leaf = [np.arange(len(groups[0]))]
    for g in groups:
        count = int(g[-1]) + 1
        fl = np.full(count, np.iinfo(np.int64).max)
        np.minimum.at(fl, g, first_leaf[-1])
        first_leaf.append(fl)
    n_levels = len(first_leaf)
    depth = [np.full(len(fl), n_levels - 1 - li) for li, fl in enumerate(first_leaf)]
    all_fl, all_depth = np.concatenate(first_leaf), np.concatenate(depth)
    order = np.lexsort((all_depth, all_fl))
    pre = np.empty(len(order), dtype=np.int64)
    pre[order] = np.arange(len(order))
    offsets = np.cumsum([0] + [len(fl) for fl in first_leaf])
    ids = [pre[offsets[li] : offsets[li + 1]] for li in range(n_levels)]
    parent = np.full(len(order), -1, dtype=np.int64)
    for li, g in enumerate(groups):
        parent[ids[li]] = ids[li + 1][g]
    return parent, ids


def _encode_kinds(kinds, parent):
    if kinds is None:
        return None, ("node", "leaf")
    kinds = list(kinds)
    if len(kinds) != len(parent):
        raise ValueError(f"kinds: {len(kinds)} names for {len(parent)} nodes")
    names = list(dict.fromkeys(kinds))
    lookup = {n: i for i, n in enumerate(names)}
    return np.array([lookup[k] for k in kinds], dtype=np.int64), names


def _encode_domains(domains):
    out = []
    for d in domains:
        if d not in DOMAINS:
            raise ValueError(f"unknown position domain {d!r}; expected one of {DOMAINS}")
        out.append(DOMAINS.index(d))
    return np.array(out, dtype=np.int64)


def _as_coords(coords, m):
    c = np.asarray(coords, dtype=np.float32)
    if c.ndim == 1:
        c = np.stack([c, np.zeros_like(c)], axis=1)
    if c.shape != (m, 2):
        raise ValueError(f"coords: expected shape [{m}, 2] or [{m}], got {list(c.shape)}")
    return c
