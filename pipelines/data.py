"""Batches of prepared samples for training: forests, packed features, size buckets.

A batch is a forest (:meth:`mmhsa.Hierarchy.batch`): sample after sample, trees never attend to
each other; each modality's feature rows are concatenated sample after sample, which is exactly the
forest's leaf order for that modality. Batches group samples of similar size (fewer padded-out
families in the kernels, steadier memory) with a seeded, epoch-dependent shuffle.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Sampler, Subset

from data_prep.assemble import Sample
from data_prep.shards import ShardDataset
from mmhsa import Hierarchy

__all__ = ["Batch", "ShardDataModule", "SizeBucketSampler", "collate"]


@dataclass
class Batch:
    """A forest of samples.

    Attributes:
        ids: sample ids, in tree order.
        hierarchy: the forest.
        features: per modality [sum N_m, C_m] fp16.
        leaf_modality: [N] modality id per leaf.
        meta: per-sample metadata.
    """

    ids: list[str]
    hierarchy: Hierarchy
    features: dict[str, torch.Tensor]
    leaf_modality: torch.Tensor
    meta: list[dict]

    def to(self, device) -> "Batch":
        return Batch(self.ids, self.hierarchy.to(device), {k: v.to(device) for k, v in self.features.items()},
                     self.leaf_modality.to(device), self.meta)

    def __len__(self) -> int:
        return len(self.ids)


def collate(samples: Sequence[Sample]) -> Batch:
    """Samples -> one forest batch."""
    modalities = sorted({m for s in samples for m in s.features})
    return Batch(
        ids=[s.id for s in samples],
        hierarchy=Hierarchy.batch([s.hierarchy for s in samples]),
        features={m: torch.cat([s.features[m] for s in samples if m in s.features]) for m in modalities},
        leaf_modality=torch.cat([s.leaf_modality for s in samples]),
        meta=[dict(s.meta) for s in samples],
    )


class SizeBucketSampler(Sampler[list[int]]):
    """Batches of similar-size samples: shuffle (seed + epoch), sort within windows of
    ``batch_size * window`` by size, cut into batches, shuffle the batches."""

    def __init__(self, sizes: Sequence[int], batch_size: int, shuffle: bool = True, seed: int = 0,
                 window: int = 50, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sizes, self.batch_size, self.shuffle = list(sizes), batch_size, shuffle
        self.seed, self.window, self.drop_last, self.epoch = seed, window, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        order = list(range(len(self.sizes)))
        if not self.shuffle:
            return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)
                    if not self.drop_last or i + self.batch_size <= len(order)]
        rng = random.Random(self.seed + self.epoch)
        rng.shuffle(order)
        span = self.batch_size * self.window
        order = [i for w in range(0, len(order), span) for i in sorted(order[w:w + span], key=self.sizes.__getitem__)]
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


class ShardDataModule(pl.LightningDataModule):
    """Prepared shards -> train/val/test loaders, split by each sample's ``meta["split"]``.

    Args:
        data_dir: a prepared directory (``make prepare`` output).
        batch_size: samples per batch.
        num_workers: loader worker processes.
        seed: shuffling seed (the epoch is added, so runs are reproducible and epochs differ).
    """

    def __init__(self, data_dir: str, batch_size: int = 16, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.data_dir, self.batch_size, self.num_workers, self.seed = Path(data_dir), batch_size, num_workers, seed
        self.splits: dict[str, Subset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        data = ShardDataset(self.data_dir)
        by_split: dict[str, list[int]] = {}
        sizes = []
        for i in range(len(data)):
            sample = data[i]
            by_split.setdefault(sample.meta.get("split", "train"), []).append(i)
            sizes.append(sample.hierarchy.num_leaves)
        self.sizes = sizes
        self.splits = {name: Subset(data, idx) for name, idx in by_split.items()}

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.splits:
            raise ValueError(f"{self.data_dir}: no samples in split {split!r} (have {sorted(self.splits)})")
        subset = self.splits[split]
        sampler = SizeBucketSampler([self.sizes[i] for i in subset.indices], self.batch_size, shuffle=train,
                                    seed=self.seed)
        if train and self.trainer is not None:
            sampler.set_epoch(self.trainer.current_epoch)
        return DataLoader(subset, batch_sampler=sampler, collate_fn=collate, num_workers=self.num_workers,
                          persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
