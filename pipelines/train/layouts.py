"""Joint-tree layouts for QA: where the question sits in a sample's cross-modal hierarchy.

HSA ties attention on sibling blocks: a leaf gives every leaf of a sibling block one weight and receives the
block's leaf-mean. Where the question is in the tree therefore decides what it can single out:

- ``joint`` (as prepared): the question is a child of the sample's root, a sibling of the whole video; within
  a layer it sees the video as one block.
- ``question_in_clips``: a copy of the question's subtree is also the last child of every clip, a sibling of
  the clip's frames (in the "key" domain, as the question itself). Each clip's patches then attend to the
  question, and its tokens to that clip's frames, so every clip is encoded knowing what is asked; the
  question's own copy under the root still meets the candidates. Costs the question's tokens once per clip.

A layout is applied to a batch before the encoder (:func:`apply_layout`), so prepared data and inference trees
stay as they are.
"""

from __future__ import annotations

import numpy as np
import torch

from data_prep.schema import MODALITIES
from mmhsa import Hierarchy

from .batches import Batch, Trees, sample_part

__all__ = ["LAYOUTS", "apply_layout", "question_in_clips"]

LAYOUTS = ("joint", "question_in_clips")


def question_in_clips(tree: Trees) -> Trees:
    """One sample's tree with a copy of its "question" subtree as the last child of each of its video's clips.

    Nodes stay in depth-first pre-order (a clip's copy right after the clip's frames); the copies' text rows are
    the question's rows, in the new leaf order. The copy's root keeps the question's kind, domain and coordinate.

    Raises:
        ValueError: a tree without a "video" or a "question" key.
    """
    h = tree.hierarchy
    keys = h.keyed_children(0)
    if "video" not in keys or "question" not in keys:
        raise ValueError(f"layout question_in_clips needs 'video' and 'question', the tree has {sorted(keys)}")
    parent, subtree = h._np["parent"], h._np["subtree"]
    question = keys["question"]
    copy = np.arange(question, question + subtree[question])  # the question's nodes, pre-order
    clip_ends = {int(c + subtree[c] - 1): c for c in h.children(keys["video"])}  # last node of a clip -> clip
    source, new_parent, new_id = [], [], {}
    for old in range(h.num_nodes):
        new_id[old] = len(source)
        source.append(old)
        new_parent.append(new_id[int(parent[old])] if parent[old] >= 0 else -1)
        if old in clip_ends:  # the clip's subtree is complete: its question copy follows
            copied = {}
            for node in copy:
                copied[int(node)] = len(source)
                up = new_id[clip_ends[old]] if node == question else copied[int(parent[node])]
                source.append(int(node))
                new_parent.append(up)
    source = np.asarray(source)
    layout = Hierarchy(
        np.asarray(new_parent),
        kind=h._np["kind"][source],
        kind_names=h.kind_names,
        domain=h._np["domain"][source],
        coord=h._np["coord"][source],
        key_names=h.key_names,
    ).to(h.device)
    # Leaf rows: each new leaf takes its source leaf's row of its modality.
    is_leaf = h._np["subtree"] == 1
    leaf_of_node = np.cumsum(is_leaf) - 1  # the old leaf index of each old leaf node
    old_leaves = torch.as_tensor(leaf_of_node[source[is_leaf[source]]], device=tree.leaf_modality.device)
    modality = tree.leaf_modality[old_leaves]
    features = {}
    for m, name in enumerate(MODALITIES):
        if name in tree.features:
            row = torch.cumsum(tree.leaf_modality == m, 0) - 1  # old leaf -> its row among modality m
            features[name] = tree.features[name][row[old_leaves[modality == m]]]
    return Trees(layout, features, modality)


def apply_layout(batch: Batch, layout: str) -> Batch:
    """The batch with every sample's tree in ``layout`` (one of :data:`LAYOUTS`; "joint" returns it as is)."""
    if layout == "joint":
        return batch
    if layout != "question_in_clips":
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    roots = batch.hierarchy.tree_node_ptr[:-1].tolist()
    trees = [question_in_clips(sample_part(batch, r)) for r in roots]
    return Batch(batch.ids, Trees.batch(trees), batch.meta)
