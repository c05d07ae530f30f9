"""Videos and texts -> encoded leaves: the one featurization that preparation and inference share.

:class:`VideoFeaturizer` opens videos, scores shots with TransNetV2 (short videos of a group packed into
one stream), splits them into clips, samples frames and encodes them into patch grids;
:class:`TextFeaturizer` encodes sections of sentences into token features (cached per sentence).
Both count seconds and items per stage in a shared :class:`Stages`, so every caller reports the same
throughput table. Training data (``data_prep.prepare``) and videos indexed later (``pipelines.infer.index``)
go through this same code with the same settings, which is what makes a trained model's embeddings of
new videos comparable to what it saw.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from mmhsa.encoders.frames import PatchEncoder, PatchEncoderConfig
from mmhsa.encoders.text import TextEncoderConfig, build_text_encoder

from .assemble import ClipLeaves, Limits, TextLeaves, even_subsample
from .clips import (
    SEGMENT_FRAMES,
    Clip,
    ContentShotDetector,
    ShotConfig,
    ShotDetector,
    WindowConfig,
    clips_from_shots,
    fixed_windows,
    sample_frames,
    shot_starts,
    small_frame_chunks,
    small_frames,
)
from .shards import read_manifest
from .video import DECODERS, Video, VideoError, open_video

__all__ = [
    "VIDEO_ERRORS", "Featurization", "Opened", "Stages", "TextFeaturizer", "VideoConfig", "VideoFeaturizer",
    "hashed_options",
]  # fmt: skip

# video and encoder options added after the first release, with their defaults: hashed only when set otherwise,
# so data prepared (and indexes built) before them keep their hash
LATER_OPTIONS = {"output": "patches", "partial_weights": False, "detector": "transnetv2", "adaptive_threshold": 3.0}


def hashed_options(options: dict) -> dict:
    """``options`` (nested dicts) without the :data:`LATER_OPTIONS` left at their defaults: what is hashed."""
    return {
        k: hashed_options(v) if isinstance(v, dict) else v
        for k, v in options.items()
        if k not in LATER_OPTIONS or v != LATER_OPTIONS[k]
    }


# What a bad video raises anywhere in decoding, shot scoring or encoding (decoders report corrupt data
# as RuntimeError/IndexError too); caught per video so the rest of a run goes on.
VIDEO_ERRORS = (VideoError, IndexError, ValueError, RuntimeError)


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
        if self.backend not in DECODERS:
            raise ValueError(f"VideoConfig.backend must be one of {DECODERS}, got {self.backend!r}")
        if self.clips not in ("shots", "windows"):
            raise ValueError(f"VideoConfig.clips must be 'shots' or 'windows', got {self.clips!r}")
        if (self.frames_per_clip is None) == (self.frames_per_second is None):
            raise ValueError("VideoConfig: set exactly one of frames_per_clip and frames_per_second")
        if self.group_size < 1:
            raise ValueError(f"VideoConfig.group_size must be >= 1, got {self.group_size}")


class Stages:
    """Seconds and item counts per stage."""

    NAMES = ("decode", "shots", "encode", "text", "write")
    UNITS = {"decode": "frames", "shots": "frames", "encode": "frames", "text": "sentences", "write": "samples"}

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.NAMES, 0.0)
        self.counts = dict.fromkeys(self.NAMES, 0)

    @contextmanager
    def timed(self, stage: str, count: int = 0) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start
        self.counts[stage] += count

    def add(self, other: Stages) -> None:
        """Count ``other``'s seconds and items here too (a DataLoader worker's or another rank's)."""
        for stage in self.NAMES:
            self.seconds[stage] += other.seconds[stage]
            self.counts[stage] += other.counts[stage]

    def table(self) -> list[dict]:
        return [
            {
                "stage": s,
                "seconds": round(self.seconds[s], 2),
                "count": self.counts[s],
                "unit": self.UNITS[s],
                "per_second": round(self.counts[s] / self.seconds[s], 1) if self.seconds[s] > 0 else None,
            }
            for s in self.NAMES
        ]


@dataclass
class Opened:
    """A video of a group: opened with its shot probabilities, or the stage and message of its failure."""

    path: Path
    video: Video | None = None
    probabilities: torch.Tensor | None = None  # TransNetV2's per frame
    starts: list[int] | None = None  # the adaptive detector's shot starts
    stage: str = ""
    error: str = ""


class VideoFeaturizer:
    """Videos -> clips of encoded frames.

    Args:
        config: decoding, clips and sampling.
        frames: the frame (patch) encoder.
        device: where TransNetV2 and the frame encoder run.
        stages: where to count time and frames (a new one by default).
        chunk_frames: frames decoded and encoded at a time (bounds memory on long videos).
    """

    def __init__(
        self,
        config: VideoConfig,
        frames: PatchEncoderConfig,
        device: str | torch.device = "cpu",
        stages: Stages | None = None,
        chunk_frames: int = 512,
    ) -> None:
        self.config, self.stages, self.chunk_frames = config, stages or Stages(), chunk_frames
        self.frames, self.device = frames, device

    # loaded on first use: a featurizer that only opens videos never loads the frame encoder, and one that
    # only encodes (prepare's, fed by its DataLoader) never loads TransNetV2
    @cached_property
    def encoder(self) -> PatchEncoder:
        return PatchEncoder(self.frames, device=self.device)

    @cached_property
    def detector(self) -> ShotDetector | None:
        """TransNetV2, when the clips are its shots."""
        shots = self.config.clips == "shots" and self.config.shots.detector == "transnetv2"
        return ShotDetector(self.device) if shots else None

    @cached_property
    def content(self) -> ContentShotDetector | None:
        """PySceneDetect's adaptive detector, when the clips are its shots."""
        shots = self.config.clips == "shots" and self.config.shots.detector == "adaptive"
        return ContentShotDetector(self.config.shots.adaptive_threshold) if shots else None

    def open_group(self, paths: Sequence[Path]) -> list[Opened]:
        """Open each video and score its shots (one packed TransNetV2 stream for the group's short videos; a
        long one streamed alone, :data:`~data_prep.clips.SEGMENT_FRAMES` at a time)."""
        opened, small = [], []
        for path in paths:
            entry = Opened(Path(path))
            frames = None
            try:
                with self.stages.timed("decode"):
                    entry.video = open_video(path, self.config.backend)
                long = entry.video.num_frames > SEGMENT_FRAMES
                if (self.detector or self.content) and long:
                    self._stream_shots(entry)
                elif self.detector or self.content:
                    with self.stages.timed("decode"):
                        frames = small_frames(entry.video)
                    self.stages.counts["decode"] += len(frames)
            except VIDEO_ERRORS as error:
                if not isinstance(error, VideoError):  # what the decoders raise may not name the file
                    error = VideoError(path, f"cannot decode (corrupt or unsupported video: {error})")
                entry.video, entry.stage, entry.error = None, "decode", str(error)
            opened.append(entry)
            small.append(frames)
        if self.content:
            for entry, s in zip(opened, small):
                if s is not None:
                    with self.stages.timed("shots", len(s)):
                        entry.starts = self.content.starts(s, entry.video.fps)
        if self.detector:
            scored = [s for s in small if s is not None]
            with self.stages.timed("shots", sum(len(s) for s in scored)):
                probabilities = iter(self.detector.predict_many(scored))
            for entry, s in zip(opened, small):
                if s is not None:
                    entry.probabilities = next(probabilities)
        return opened

    def _stream_shots(self, entry: Opened) -> None:
        """A long video's shots, its small frames decoded and scored a piece at a time (bounded memory)."""
        video, stages = entry.video, self.stages

        def pieces():
            chunks = small_frame_chunks(video, segment=SEGMENT_FRAMES)
            while True:
                with stages.timed("decode"):
                    piece = next(chunks, None)
                if piece is None:
                    return
                stages.counts["decode"] += len(piece)
                yield piece

        started, decoding = time.perf_counter(), stages.seconds["decode"]
        if self.content:
            entry.starts = self.content.starts_stream(pieces(), video.fps)
        else:
            entry.probabilities = self.detector.predict_stream(pieces())
        stages.seconds["shots"] += time.perf_counter() - started - (stages.seconds["decode"] - decoding)
        stages.counts["shots"] += video.num_frames

    def clips(self, opened: Opened) -> list[Clip]:
        """The video's clips: shots from its probabilities, or fixed windows."""
        video = opened.video
        if opened.starts is not None:
            return clips_from_shots(opened.starts, video.timestamps, video.duration, self.config.shots)
        if opened.probabilities is None:
            return fixed_windows(video.timestamps, video.duration, self.config.windows)
        shots = self.config.shots
        return clips_from_shots(
            shot_starts(opened.probabilities, shots.threshold), video.timestamps, video.duration, shots
        )

    def encode(self, video: Video, clips: list[Clip], max_clips: int | None = None) -> tuple[list[ClipLeaves], int]:
        """The clips' sampled frames, encoded; and how many clips ``max_clips`` dropped.

        Clips beyond ``max_clips`` are evenly subsampled here, as :func:`~data_prep.assemble.assemble`
        would, so that they are never decoded or encoded.
        """
        cfg = self.config
        kept = clips if max_clips is None else [clips[i] for i in even_subsample(len(clips), max_clips)]
        chosen = [sample_frames(c, video.timestamps, k=cfg.frames_per_clip, fps=cfg.frames_per_second) for c in kept]
        wanted = sorted({i for frames in chosen for i in frames})
        parts = []
        for at in range(0, len(wanted), self.chunk_frames):
            chunk = wanted[at : at + self.chunk_frames]
            with self.stages.timed("decode", len(chunk)):
                pixels = video.frames(chunk)
            with self.stages.timed("encode", len(chunk)):
                parts.append(self.encoder(pixels))
        patches = torch.cat(parts) if parts else None
        row = {frame: r for r, frame in enumerate(wanted)}
        times = video.timestamps
        leaves = [
            ClipLeaves(
                c.start_time,
                c.end_time,
                [float(times[i]) for i in frames],
                patches[[row[i] for i in frames]],
                list(frames),
            )
            for c, frames in zip(kept, chosen)
        ]
        return leaves, len(clips) - len(kept)

    def featurize(self, opened: Opened, max_clips: int | None = None) -> list[ClipLeaves]:
        """An opened video (:meth:`open_group`) split into clips and encoded, clips beyond ``max_clips``
        evenly subsampled: what inference does with each new video.

        Raises:
            ValueError: naming the video and the problem (it could not be opened or decoded, or no clip is
                long enough to sample frames from).
        """
        if opened.video is None:
            raise ValueError(opened.error)
        try:
            clips, _ = self.encode(opened.video, self.clips(opened), max_clips)
        except VIDEO_ERRORS as err:
            raise ValueError(f"{opened.path}: {err}") from None
        if not clips:
            raise ValueError(f"{opened.path}: no clip long enough to sample frames from")
        return clips


class TextFeaturizer:
    """Sections of sentences -> token features, cached per sentence (annotations repeat a lot).

    Args:
        config: the token encoder.
        device: where it runs.
        stages: where to count time and sentences.
    """

    def __init__(
        self, config: TextEncoderConfig, device: str | torch.device = "cpu", stages: Stages | None = None
    ) -> None:
        self.encoder = build_text_encoder(config, device=device)
        self.stages = stages or Stages()
        self.cache: dict[str, torch.Tensor] = {}

    def prefetch(self, sentences: Sequence[str]) -> None:
        """Encode the sentences not cached yet, in batches of the encoder's size (a video's questions and
        answers all at once, rather than a few sentences per question)."""
        new = list(dict.fromkeys(s for s in sentences if s not in self.cache))
        if new:
            with self.stages.timed("text", len(new)):
                for sentence, (_, features) in zip(new, self.encoder.encode(new)):
                    self.cache[sentence] = features

    def __call__(self, sections: list[list[str]]) -> TextLeaves:
        self.prefetch([s for section in sections for s in section])
        return TextLeaves([[self.cache[s] for s in section] for section in sections])


@dataclass(frozen=True)
class Featurization:
    """How inputs become leaves: the preparation settings a model was trained with."""

    video: VideoConfig
    frames: PatchEncoderConfig
    text: TextEncoderConfig
    limits: Limits

    @classmethod
    def from_config(cls, config: dict) -> Featurization:
        """From a prepared manifest's ``config`` (or a data recipe): keys video, frames, text, limits."""
        from jsonargparse import ArgumentParser

        parser = ArgumentParser()  # builds the nested dataclasses from plain dicts, checking every field
        parser.add_class_arguments(cls, nested_key=None)
        instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in 4.49
        return cls(
            **instantiate(parser.parse_object({k: config.get(k, {}) for k in ("video", "frames", "text", "limits")}))
        )

    @classmethod
    def from_prepared(cls, source: str | Path) -> Featurization:
        """From a prepared task directory (its manifest.json) or a data recipe YAML (configs/data/*.yaml)."""
        source = Path(source)
        if source.is_dir():
            manifest = source / "manifest.json"
            if not manifest.is_file():
                raise FileNotFoundError(f"{source}: not a prepared task directory (no manifest.json)")
            return cls.from_config(read_manifest(manifest)["config"])
        if not source.is_file():
            raise FileNotFoundError(f"{source}: no such prepared directory or data recipe")
        import yaml

        return cls.from_config(yaml.safe_load(source.read_text(encoding="utf-8")) or {})

    def to_dict(self) -> dict:
        return asdict(self)
