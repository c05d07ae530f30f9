"""Forest batches: a batch of samples (or parts of samples) as one forest with its leaves' features.

A batch is a forest (:meth:`mmhsa.Hierarchy.batch`): sample after sample, trees never attend to
each other; each modality's feature rows are concatenated sample after sample, which is exactly the
forest's leaf order for that modality. Training (:mod:`pipelines.train.data`) and inference on new
videos (:mod:`pipelines.infer.trees`) build the same batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from data_prep.schema import MODALITIES, Sample
from mmhsa import Hierarchy

__all__ = ["Batch", "RetrievalBatch", "Trees", "collate", "retrieval_collate", "sample_part", "sample_trees"]


class Trees:
    """A forest of (sub)trees with their leaves' features: what the encoder consumes.

    Attributes:
        hierarchy: the forest.
        features: per modality [N_m, C_m] rows in the forest's leaf order of that modality.
        leaf_modality: [N] modality id per leaf (index into ``data_prep.schema.MODALITIES``).
    """

    def __init__(self, hierarchy: Hierarchy, features: dict[str, torch.Tensor], leaf_modality: torch.Tensor):
        self.hierarchy, self.features, self.leaf_modality = hierarchy, features, leaf_modality

    @classmethod
    def batch(cls, parts: Sequence[Trees]) -> Trees:
        """Parts one after the other in one forest (each modality's rows concatenated in the same order)."""
        modalities = sorted({m for p in parts for m in p.features})
        return cls(
            Hierarchy.batch([p.hierarchy for p in parts]),
            {m: torch.cat([p.features[m] for p in parts if m in p.features]) for m in modalities},
            torch.cat([p.leaf_modality for p in parts]),
        )

    def to(self, device) -> Trees:
        return Trees(
            self.hierarchy.to(device),
            {k: v.to(device) for k, v in self.features.items()},
            self.leaf_modality.to(device),
        )

    @property
    def num_trees(self) -> int:
        return self.hierarchy.num_trees


def sample_trees(sample: Sample) -> Trees:
    return Trees(sample.hierarchy, sample.features, sample.leaf_modality)


def sample_part(sample: Sample, node: int) -> Trees:
    """The subtree of a sample under ``node`` (e.g. its "video" or one caption) with its leaves' features."""
    h = sample.hierarchy
    start, end = int(h.leaf_start[node]), int(h.leaf_end[node])
    modality = sample.leaf_modality
    features = {}
    for m, name in enumerate(MODALITIES):
        if name in sample.features:
            before = int((modality[:start] == m).sum())  # rows of modality m are in leaf order
            count = int((modality[start:end] == m).sum())
            if count:
                features[name] = sample.features[name][before : before + count]
    return Trees(h.subtree(node), features, modality[start:end])


class Batch(Trees):
    """A forest of whole samples (ids and metadata in tree order)."""

    def __init__(self, ids: list[str], trees: Trees, meta: list[dict]):
        super().__init__(trees.hierarchy, trees.features, trees.leaf_modality)
        self.ids, self.meta = ids, meta

    def to(self, device) -> Batch:
        return Batch(self.ids, super().to(device), self.meta)

    def __len__(self) -> int:
        return len(self.ids)


def collate(samples: Sequence[Sample]) -> Batch:
    """Samples -> one forest batch."""
    return Batch(
        [s.id for s in samples], Trees.batch([sample_trees(s) for s in samples]), [dict(s.meta) for s in samples]
    )


class RetrievalBatch:
    """Videos and their captions as two forests (the dual encoder embeds each side alone).

    Attributes:
        ids: video (sample) ids.
        videos: one tree per sample: its "video" subtree.
        texts: one tree per caption of every sample (a caption section: sentences -> tokens).
        text_video: [T] index into ``ids`` of each caption's video.
    """

    def __init__(self, ids: list[str], videos: Trees, texts: Trees, text_video: torch.Tensor):
        self.ids, self.videos, self.texts, self.text_video = ids, videos, texts, text_video

    def to(self, device) -> RetrievalBatch:
        return RetrievalBatch(self.ids, self.videos.to(device), self.texts.to(device), self.text_video.to(device))

    def __len__(self) -> int:
        return len(self.ids)


def retrieval_collate(samples: Sequence[Sample]) -> RetrievalBatch:
    """Caption samples (keys "video" and "captions") -> a :class:`RetrievalBatch` with every caption."""
    videos, texts, owner = [], [], []
    for b, sample in enumerate(samples):
        keys = sample.hierarchy.keyed_children(0)
        if "video" not in keys or "captions" not in keys:
            raise ValueError(f"sample {sample.id!r}: retrieval needs 'video' and 'captions', it has {sorted(keys)}")
        videos.append(sample_part(sample, keys["video"]))
        for caption in sample.hierarchy.children(keys["captions"]):
            texts.append(sample_part(sample, caption))
            owner.append(b)
    return RetrievalBatch(
        [s.id for s in samples], Trees.batch(videos), Trees.batch(texts), torch.tensor(owner, dtype=torch.long)
    )
