"""New videos and texts as the trees a trained model consumes, and their embeddings.

Texts become caption trees (sentences -> tokens) and videos video trees (clips -> frames -> patches),
assembled exactly as in preparation (:func:`data_prep.assemble.assemble`, the model's limits), so a
trained model sees new inputs the way it saw its training data.
"""

from __future__ import annotations

import torch

from data_prep.assemble import ClipLeaves, Limits, TextLeaves, assemble
from data_prep.text import check_text, split_sentences
from mmhsa.nn import pool_nodes
from pipelines.train.batches import Trees, sample_part

from .checkpoints import TrainedModel

__all__ = ["embed_videos", "text_trees", "video_trees"]


def text_trees(model: TrainedModel, texts: list[str]) -> tuple[Trees, list[dict[str, int]]]:
    """Texts -> one tree each (sentences -> tokens), as captions were in training; and per text what the
    limits dropped (e.g. ``{"tokens": 12}`` for a very long text; empty when nothing was).

    Raises:
        ValueError: naming the text (by position) that holds no words, is not valid Unicode or is too long.
    """
    sections = []
    for i, text in enumerate(texts):
        sentences = split_sentences(check_text(text, f"text {i}"))
        if not sentences:
            raise ValueError(f"text {i} ({text[:40]!r}) is empty: nothing to encode")
        sections.append(sentences)
    leaves = model.texts(sections)
    parts, dropped = [], []
    for i, section in enumerate(leaves.sections):
        sample = assemble(f"text {i}", texts={"captions": TextLeaves([section])}, limits=model.featurization.limits)
        caption = sample.hierarchy.children(sample.hierarchy.keyed_children(0)["captions"])[0]
        parts.append(sample_part(sample, caption))
        dropped.append({k: n for k, n in sample.dropped.items() if n})
    return Trees.batch(parts), dropped


def video_trees(clips: list[ClipLeaves], limits: Limits) -> tuple[Trees, list[tuple[Trees, int]]]:
    """One video's trees: the whole video (clips evenly subsampled to ``limits.max_clips``, as in training),
    and windows of at most ``max_clips`` consecutive clips with the index of their first clip (each
    clip's embedding is read in the context of its neighbours, however long the video).
    """

    def tree(part: list[ClipLeaves]) -> Trees:
        sample = assemble("video", video=part, limits=limits)
        return sample_part(sample, sample.hierarchy.keyed_children(0)["video"])

    size = limits.max_clips
    windows = [(tree(clips[at : at + size]), at) for at in range(0, len(clips), size)]
    whole = windows[0][0] if len(clips) <= size else tree(clips)  # assemble subsamples evenly
    return whole, windows


@torch.no_grad()
def embed_videos(model: TrainedModel, videos: list[list[ClipLeaves]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per video: its embedding [E] and its clips' embeddings [C, E] (unit vectors, float32).

    All trees of all videos go through the encoder as one forest.
    """
    module = model.module
    limits = model.featurization.limits
    forests, plan = [], []
    for clips in videos:
        whole, windows = video_trees(clips, limits)
        plan.append((len(forests), [(len(forests) + 1 + w, at) for w, (_, at) in enumerate(windows)], len(clips)))
        forests += [whole] + [t for t, _ in windows]
    trees = Trees.batch(forests).to(module.device)
    x = module.encode(trees)
    h = trees.hierarchy
    roots = h.tree_node_ptr[:-1]
    video_vectors = module.project(pool_nodes(x, h, roots), "video")  # [T, E]
    clip_nodes = torch.nonzero(h.depth == 1).flatten()  # a video tree's root is the video; its children the clips
    clip_vectors = module.project(pool_nodes(x, h, clip_nodes), "video")
    clip_tree = torch.searchsorted(roots, clip_nodes, right=True) - 1
    out = []
    for whole, windows, count in plan:
        rows = torch.cat([clip_vectors[clip_tree == t] for t, _ in windows])
        if len(rows) != count:
            raise AssertionError(f"{len(rows)} clip embeddings for {count} clips")
        out.append((video_vectors[whole].float().cpu(), rows.float().cpu()))
    return out
