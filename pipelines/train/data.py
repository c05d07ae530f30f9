"""Prepared shards as Lightning data: the data module, size buckets, resumable loading.

Batches (:mod:`pipelines.train.batches`) group samples of similar size (fewer padded-out families in
the kernels, steadier memory) with a seeded, epoch-dependent shuffle, and resume mid-epoch exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Sampler

from data_prep.schema import Sample, feature_dims
from data_prep.shards import ShardDataset, read_manifest

from .batches import collate, retrieval_collate

__all__ = ["MissingSplit", "ResumableDataLoader", "ShardDataModule", "SizeBucketSampler"]


class MissingSplit(ValueError):
    """A loader was asked for a split the prepared data does not hold (a usage error: the CLI exits 2)."""


class SizeBucketSampler(Sampler[list[int]]):
    """Batches of similar-size samples: shuffle (seed + epoch), sort within windows of
    ``batch_size * window`` by size, cut into batches, shuffle the batches.

    Resumable mid-epoch: an iteration leaves out the first batches of its epoch's order that were already
    trained on. Their count comes from ``progress_source`` when there is one (read when the first batch is
    asked for; the trainer's count, see :meth:`ShardDataModule._loader`), else from :meth:`load_state_dict`.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        window: int = 50,
        drop_last: bool = False,
        epoch_source: Callable[[], int] | None = None,
        rank: int = 0,
        world_size: int = 1,
        progress_source: Callable[[], int] | None = None,
    ):
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
            return [
                order[i : i + self.batch_size]
                for i in range(0, len(order), self.batch_size)
                if not self.drop_last or i + self.batch_size <= len(order)
            ]
        rng = random.Random(self.seed + self.epoch)
        rng.shuffle(order)
        span = self.batch_size * self.window
        order = [i for w in range(0, len(order), span) for i in sorted(order[w : w + span], key=self.sizes.__getitem__)]
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
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
        return batches[self.rank :: self.world_size]

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
        val_split: the split validation runs on; protocols without a validation split of their own
            validate on "test" (MSR-VTT's 9k-1kA, as its papers do).
    """

    def __init__(
        self,
        data_dir: str,
        task: str = "qa",
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        limit: int | None = None,
        predict_split: str = "test",
        val_split: str = "val",
    ):
        super().__init__()
        self.predict_split, self.val_split = predict_split, val_split
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
            hint = " (set --data.val_split test for a protocol without one)" if split == self.val_split else ""
            raise MissingSplit(f"{self.data_dir}: no samples in split {split!r} (it has {sorted(self.splits)}){hint}")
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
        sampler = SizeBucketSampler(
            [s.hierarchy.num_leaves for s in samples],
            self.batch_size,
            shuffle=train,
            seed=self.seed,
            epoch_source=(lambda: trainer.current_epoch) if trainer else None,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
            progress_source=progress_source,
        )
        # Its own generator: creating a loader iterator draws a seed, and from the global stream that draw
        # would shift dropout between an interrupted-and-resumed run and an uninterrupted one.
        generator = torch.Generator().manual_seed(self.seed)
        loader = ResumableDataLoader if train else DataLoader
        return loader(
            samples,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            generator=generator,
            collate_fn=retrieval_collate if self.task == "retrieval" else collate,
        )

    def manifest(self) -> dict | None:
        """The prepared directory's manifest.json (None when there is none)."""
        path = self.data_dir / "manifest.json"
        return read_manifest(path) if path.is_file() else None

    @property
    def feature_dims(self) -> dict[str, int]:
        """Feature width per modality of the prepared leaves (the model's input widths; the CLI links them)."""
        return feature_dims(self.manifest())

    def state_dict(self) -> dict:
        """Saved in every checkpoint: how the data was prepared, so a trained model can featurize new
        videos and texts exactly the same way (:mod:`pipelines.infer.checkpoints`)."""
        content = self.manifest()
        if content is None:
            return {}
        config = {k: v for k, v in content.get("config", {}).items() if k != "task"}
        return {"prepared": {"config": config, "encoders": content.get("encoders", {}), "data_dir": str(self.data_dir)}}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore: the samples come from ``data_dir`` again."""

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_split, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split, train=False)
