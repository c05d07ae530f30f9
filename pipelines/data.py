"""Batches of prepared samples for training: forests, packed features, size buckets.

A batch is a forest (:meth:`mmhsa.Hierarchy.batch`): sample after sample, trees never attend to
each other; each modality's feature rows are concatenated sample after sample, which is exactly the
forest's leaf order for that modality. Batches group samples of similar size (fewer padded-out
families in the kernels, steadier memory) with a seeded, epoch-dependent shuffle.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable, Iterator, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Sampler

from data_prep.assemble import MODALITIES, Sample
from data_prep.shards import ShardDataset
from mmhsa import Hierarchy

__all__ = ["Batch", "ResumableDataLoader", "RetrievalBatch", "ShardDataModule", "SizeBucketSampler", "Trees",
           "collate", "retrieval_collate", "sample_part"]


class Trees:
    """A forest of (sub)trees with their leaves' features: what the encoder consumes.

    Attributes:
        hierarchy: the forest.
        features: per modality [N_m, C_m] rows in the forest's leaf order of that modality.
        leaf_modality: [N] modality id per leaf (index into ``data_prep.assemble.MODALITIES``).
    """

    def __init__(self, hierarchy: Hierarchy, features: dict[str, torch.Tensor], leaf_modality: torch.Tensor):
        self.hierarchy, self.features, self.leaf_modality = hierarchy, features, leaf_modality

    @classmethod
    def batch(cls, parts: Sequence["Trees"]) -> "Trees":
        """Parts one after the other in one forest (each modality's rows concatenated in the same order)."""
        modalities = sorted({m for p in parts for m in p.features})
        return cls(Hierarchy.batch([p.hierarchy for p in parts]),
                   {m: torch.cat([p.features[m] for p in parts if m in p.features]) for m in modalities},
                   torch.cat([p.leaf_modality for p in parts]))

    def to(self, device) -> "Trees":
        return Trees(self.hierarchy.to(device), {k: v.to(device) for k, v in self.features.items()},
                     self.leaf_modality.to(device))

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
                features[name] = sample.features[name][before:before + count]
    return Trees(h.subtree(node), features, modality[start:end])


class Batch(Trees):
    """A forest of whole samples (ids and metadata in tree order)."""

    def __init__(self, ids: list[str], trees: Trees, meta: list[dict]):
        super().__init__(trees.hierarchy, trees.features, trees.leaf_modality)
        self.ids, self.meta = ids, meta

    def to(self, device) -> "Batch":
        return Batch(self.ids, super().to(device), self.meta)

    def __len__(self) -> int:
        return len(self.ids)


def collate(samples: Sequence[Sample]) -> Batch:
    """Samples -> one forest batch."""
    return Batch([s.id for s in samples], Trees.batch([sample_trees(s) for s in samples]),
                 [dict(s.meta) for s in samples])


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

    def to(self, device) -> "RetrievalBatch":
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
    return RetrievalBatch([s.id for s in samples], Trees.batch(videos), Trees.batch(texts),
                          torch.tensor(owner, dtype=torch.long))


class SizeBucketSampler(Sampler[list[int]]):
    """Batches of similar-size samples: shuffle (seed + epoch), sort within windows of
    ``batch_size * window`` by size, cut into batches, shuffle the batches.

    Resumable mid-epoch: an iteration leaves out the first batches of its epoch's order that were already
    trained on. Their count comes from ``progress_source`` when there is one (read when the first batch is
    asked for; the trainer's count, see :meth:`ShardDataModule._loader`), else from :meth:`load_state_dict`.
    """

    def __init__(self, sizes: Sequence[int], batch_size: int, shuffle: bool = True, seed: int = 0,
                 window: int = 50, drop_last: bool = False, epoch_source: Callable[[], int] | None = None,
                 rank: int = 0, world_size: int = 1, progress_source: Callable[[], int] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sizes, self.batch_size, self.shuffle = list(sizes), batch_size, shuffle
        self.seed, self.window, self.drop_last, self.epoch = seed, window, drop_last, 0
        # Where the epoch is read when iteration starts (the trainer's): a run resumed from a checkpoint
        # does not get set_epoch() before its first epoch, and would replay epoch 0's order.
        self.epoch_source = epoch_source
        # Where the batches of this epoch already trained on are counted (the trainer's progress): 0 as an
        # epoch starts, the restored count when a run resumes from a checkpoint saved mid-epoch.
        self.progress_source = progress_source
        # Distributed: every rank computes the same batches (same seed and epoch) and takes every
        # world_size-th. Training pads the list so that all ranks take as many steps (DDP syncs each
        # one); evaluation does not, so that no sample is counted twice.
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.rank, self.world_size = rank, world_size
        self._handed_out = 0  # batches of the current epoch handed out (or left out on resume) by the iterator
        self._resume: tuple[int, int] | None = None  # (epoch, batches done) from load_state_dict, used once

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

    def _rank_batches(self) -> list[list[int]]:
        batches = self._batches()
        if self.world_size == 1:
            return batches
        if self.shuffle and batches:
            batches = batches + batches[: (-len(batches)) % self.world_size]
        return batches[self.rank::self.world_size]

    def _done(self) -> int:
        """Batches of this epoch's order (this rank's) to leave out: already trained on."""
        resume, self._resume = self._resume, None
        if self.progress_source is not None:
            return int(self.progress_source())
        if resume is not None and resume[0] == self.epoch:
            return resume[1]
        return 0

    def __iter__(self) -> Iterator[list[int]]:
        # A generator: the epoch and the progress are read when the first batch is asked for, not when the
        # loader's iterator is made (Lightning makes it before a resumed run's counters are restored).
        if self.epoch_source is not None:
            self.epoch = self.epoch_source()
        batches = self._rank_batches()
        self._handed_out = done = min(self._done(), len(batches))
        for batch in batches[done:]:
            self._handed_out += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Where training is: the epoch (of the order being iterated) and how many of its batches (this rank's)
        are done: the trainer's count, or without one, how many the iterator has handed out."""
        done = self.progress_source() if self.progress_source is not None else self._handed_out
        return {"epoch": int(self.epoch), "batches": int(done)}

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict`: the next iteration, if over the same epoch, starts after its batches
        done. With a ``progress_source`` this is the trainer's to say and ``state`` is not used."""
        if state:
            self._resume = (int(state["epoch"]), int(state["batches"]))

    def __len__(self) -> int:
        return len(self._rank_batches())


class ResumableDataLoader(DataLoader):
    """The training loader: resumable mid-epoch, and iterated only once a batch is asked for.

    ``state_dict``/``load_state_dict`` (those of the batch sampler) are Lightning's interface for a
    resumable loader: it stores the state in every checkpoint with the fit loop's progress, and on a
    mid-epoch restart counts the batches done before the checkpoint as already fetched, expecting the loader
    to yield only the rest. Lightning 2.6 calls ``load_state_dict`` only if the train loader is first built
    after the checkpoint is restored, which ``trainer.estimated_stepping_batches`` in ``configure_optimizers``
    prevents (Lightning issue #20550); the :class:`SizeBucketSampler` therefore takes the count from the
    trainer's restored progress, which is the same number.

    Iteration is deferred to the first batch, so that with worker processes too (they ask the sampler for
    batches as soon as they start) the sampler reads the epoch and progress of the restored trainer.
    """

    def __iter__(self):
        yield from super().__iter__()

    def state_dict(self) -> dict:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.load_state_dict(state)


class ShardDataModule(pl.LightningDataModule):
    """Prepared shards -> train/val/test loaders, split by each sample's ``meta["split"]``.

    Samples are read once into memory (shuffled access to on-disk shards would re-read them).

    Args:
        data_dir: a prepared task directory (``make prepare`` output, e.g. data/prepared/synthetic/qa).
        task: "qa" (whole samples, :func:`collate`) or "retrieval" (videos and captions apart,
            :func:`retrieval_collate`).
        batch_size: samples per batch.
        num_workers: loader worker processes.
        seed: shuffling seed (the epoch is added, so runs are reproducible and epochs differ).
        limit: use only the first ``limit`` samples of each split (quick runs, tests); None: all.
        predict_split: the split ``mmhsa predict`` runs on.
    """

    def __init__(self, data_dir: str, task: str = "qa", batch_size: int = 16, num_workers: int = 0, seed: int = 0,
                 limit: int | None = None, predict_split: str = "test"):
        super().__init__()
        self.predict_split = predict_split
        if task not in ("qa", "retrieval"):
            raise ValueError(f"task must be 'qa' or 'retrieval', got {task!r}")
        self.data_dir, self.task, self.batch_size = Path(data_dir), task, batch_size
        self.num_workers, self.seed, self.limit = num_workers, seed, limit
        self.splits: dict[str, list[Sample]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        data = ShardDataset(self.data_dir)
        for i in range(len(data)):
            sample = data[i]
            self.splits.setdefault(sample.meta.get("split", "train"), []).append(sample)
        if self.limit is not None:
            self.splits = {k: v[: self.limit] for k, v in self.splits.items()}

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.splits:
            raise ValueError(f"{self.data_dir}: no samples in split {split!r} (have {sorted(self.splits)})")
        samples = self.splits[split]
        trainer = self.trainer
        progress_source = None
        if trainer is not None and train:
            def progress() -> int:
                """Batches of the current epoch trained on, as the trainer counts them (0 outside fitting).

                As an epoch's first batch is asked for: 0, or resuming mid-epoch, the restored count (which
                Lightning's loop takes as already fetched). ``processed``: in on_train_batch_end, where
                ModelCheckpoint(every_n_train_steps) saves, it counts the batch just trained (``completed`` not
                yet; Lightning's restore adds that batch to it). Not the sampler's own count: loader workers
                ask for batches ahead of training.
                """
                if trainer.state.fn != TrainerFn.FITTING or trainer.state.stage is None:
                    return 0
                return trainer.fit_loop.epoch_loop.batch_progress.current.processed

            progress_source = progress
        sampler = SizeBucketSampler([s.hierarchy.num_leaves for s in samples], self.batch_size, shuffle=train,
                                    seed=self.seed, epoch_source=(lambda: trainer.current_epoch) if trainer else None,
                                    rank=trainer.global_rank if trainer else 0,
                                    world_size=trainer.world_size if trainer else 1, progress_source=progress_source)
        # Its own generator: creating a loader iterator draws a seed, and from the global stream that draw
        # would shift dropout between an interrupted-and-resumed run and an uninterrupted one.
        generator = torch.Generator().manual_seed(self.seed)
        loader = ResumableDataLoader if train else DataLoader
        return loader(samples, batch_sampler=sampler, num_workers=self.num_workers, generator=generator,
                      collate_fn=retrieval_collate if self.task == "retrieval" else collate)

    def state_dict(self) -> dict:
        """Saved in every checkpoint: how the data was prepared, so a trained model can featurize new
        videos and texts exactly the same way (:mod:`pipelines.inference`)."""
        manifest = self.data_dir / "manifest.json"
        if not manifest.is_file():
            return {}
        content = json.loads(manifest.read_text(encoding="utf-8"))
        config = {k: v for k, v in content.get("config", {}).items() if k != "task"}
        return {"prepared": {"config": config, "encoders": content.get("encoders", {}), "data_dir": str(self.data_dir)}}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore: the samples come from ``data_dir`` again."""

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split, train=False)
