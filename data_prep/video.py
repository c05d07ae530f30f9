"""Video decoding behind one small interface: decord first, PyAV (FFmpeg) as the fallback.

:func:`open_video` reads the container once with PyAV (frame count, per-frame presentation times,
rotation, truncation) and gives a :class:`Video` whose :meth:`Video.frames` decodes frames by index,
upright, RGB, at native size. Pixels come from decord (``backend="decord"``) or PyAV
(``backend="pyav"``); ``"auto"`` uses decord and switches to PyAV where decord fails: it cannot open
GIFs, and decord 0.6.0 raises on some frame widths once it must convert or rotate (e.g. 48-wide
grayscale, 24-wide rotated video). Because the frame table comes from one place, both backends number
frames and time them identically, variable frame rate included.

Every problem with the input raises :class:`VideoError` (a ``ValueError``) whose message names the file
and the problem: missing or unreadable path, empty file, not a media file, no video stream, truncated or
corrupt data (with the frame where decoding stops), metadata that is not text. Frames are never zero-filled.

Known limits: only the rotation part of a display matrix is applied (mirroring is ignored, rotation is
rounded to a multiple of 90 degrees); the first video stream is used; one packet is one frame (true for
the codecs and containers in use; interlaced field-per-packet streams would break it).
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import decord
import numpy as np
import torch
import torch.nn.functional as F
from av.video.reformatter import VideoReformatter

__all__ = ["DECODERS", "Video", "VideoError", "open_video", "resize"]

DECODERS = ("auto", "decord", "pyav")  # the video decoders open_video can use


class VideoError(ValueError):
    """A video that cannot be read; the message names the file and the problem in plain words."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(f"video '{path}': {problem}")
        self.path = str(path)
        self.problem = problem


# ------------------------------------------------------------------ the frame table (PyAV)
@dataclass(frozen=True)
class _FrameTable:
    """The video stream as the container describes it, frames in presentation order.

    Attributes:
        pts: [N] presentation timestamps in stream time-base units, or None where some are missing or
            repeated (then frames are counted from the start and never seeked to).
        timestamps: [N] float64 seconds from the start of the file's timeline.
        keyframes: indices of the frames decoding can start from (sorted, always contains 0).
        seek_targets: per keyframe, the timestamp to seek to: min(pts, dts), because demuxers index
            either (MP4 by dts) and a target past the keyframe's indexed time would land on the next one.
        duration: seconds from the file's start to the end of the last frame.
        width, height: stored frame size (before rotation).
        rotation: degrees the stored frames are turned counterclockwise for display (0, 90, 180, 270).
    """

    pts: tuple[int, ...] | None
    timestamps: torch.Tensor
    keyframes: tuple[int, ...]
    seek_targets: tuple[int, ...]
    duration: float
    width: int
    height: int
    rotation: int

    def keyframe_before(self, index: int) -> int:
        """Position in :attr:`keyframes` of the last keyframe at or before frame ``index``."""
        return bisect.bisect_right(self.keyframes, index) - 1


# First bytes of common video containers: tell a damaged video from a file that is none at all.
_SIGNATURES = {
    "MP4/MOV": lambda h: h[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"),
    "Matroska/WebM": lambda h: h.startswith(b"\x1a\x45\xdf\xa3"),
    "AVI": lambda h: h.startswith(b"RIFF") and h[8:12] == b"AVI ",
    "GIF": lambda h: h.startswith((b"GIF87a", b"GIF89a")),
    "Ogg": lambda h: h.startswith(b"OggS"),
    "FLV": lambda h: h.startswith(b"FLV"),
    "MPEG-PS": lambda h: h.startswith(b"\x00\x00\x01\xba"),
    "MPEG-TS": lambda h: h[:1] == b"\x47" and h[188:189] == b"\x47",
    "ASF/WMV": lambda h: h.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"),
}


def _read_head(path: Path) -> bytes:
    """The first bytes of the file; every way the path can fail to be a readable file is a VideoError."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except FileNotFoundError:
        raise VideoError(path, "no such file") from None
    except IsADirectoryError:
        raise VideoError(path, "is a directory, not a video file") from None
    except PermissionError:
        raise VideoError(path, "cannot read the file (permission denied)") from None
    except OSError as e:
        raise VideoError(path, f"cannot read the file ({e.strerror or e})") from None
    if not head:
        raise VideoError(path, "empty file (0 bytes)")
    return head


def _read_frame_table(path: Path) -> _FrameTable:
    head = _read_head(path)
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        kind = next((name for name, match in _SIGNATURES.items() if match(head)), None)
        if kind is None:
            raise VideoError(
                path, "not a media file (its content matches no video container format and FFmpeg cannot open it)"
            ) from None
        raise VideoError(
            path, f"truncated or corrupt {kind} file: FFmpeg cannot read its header or index ({e.strerror})"
        ) from None
    except UnicodeDecodeError as e:  # PyAV reads the container's and streams' metadata tags as UTF-8
        raise VideoError(
            path, f"cannot decode (corrupt or unsupported video: a metadata tag is not UTF-8: {e})"
        ) from None
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams})
            has = f"it has only {' and '.join(kinds)}" if kinds else "it has no streams at all"
            raise VideoError(path, f"no video stream ({has})")
        stream = container.streams.video[0]
        packets = _demux(path, container, stream)
        rotation = _rotation(path, stream, packets[0])
        n, tb = len(packets), float(stream.time_base)
        rate = stream.average_rate or stream.guessed_rate
        if any(p.pts is None for p in packets):  # raw elementary streams: evenly spaced
            step = 1 / float(rate) if rate else 1.0
            timestamps, last = torch.arange(n, dtype=torch.float64) * step, step
        else:
            # MP4 packet durations are decode-time deltas: only the last one in decode order is the last
            # frame's own (elsewhere they are all presentation durations, so it serves as well).
            tail = packets[-1].duration
            packets.sort(key=lambda p: p.pts)  # decode order -> presentation order
            timestamps = (
                torch.tensor([p.pts for p in packets], dtype=torch.float64) * tb
                - (container.start_time or 0) / av.time_base
            )
            if tail:
                last = tail * tb
            elif n > 1:
                last = float(timestamps.diff().median())
            else:
                last = 1 / float(rate) if rate else 0.0
        duration = float(timestamps[-1]) + last
        declared = _declared_seconds(stream)
        if declared is not None and declared > duration - float(timestamps[0]) + 1.5 * last:
            raise VideoError(
                path,
                f"truncated or corrupt: the container says the video lasts {declared:.3f} s "
                f"but its frames end at {duration:.3f} s (after frame {n})",
            )
        pts = tuple(p.pts for p in packets)
        if None in pts or len(set(pts)) < n:  # frames cannot be told apart by pts: count them from the start
            pts, keyframes, seek_targets = None, (0,), (0,)
        else:
            keyframes = tuple(sorted({0, *(i for i, p in enumerate(packets) if p.is_keyframe)}))
            seek_targets = tuple(min(pts[k], pts[k] if packets[k].dts is None else packets[k].dts) for k in keyframes)
        return _FrameTable(
            pts=pts,
            timestamps=timestamps,
            keyframes=keyframes,
            seek_targets=seek_targets,
            duration=duration,
            width=stream.width,
            height=stream.height,
            rotation=rotation,
        )


def _demux(path: Path, container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> list[av.Packet]:
    """All frame packets of the stream, in decode order; a count short of the container's is truncation."""
    packets, demuxed = [], 0
    try:
        for packet in container.demux(stream):
            if packet.size:  # the last, empty packet only flushes the demuxer
                demuxed += 1
                if not packet.is_discard:  # edit lists mark frames the decoder drops
                    packets.append(packet)
    except av.FFmpegError as e:
        raise VideoError(path, f"truncated or corrupt: reading stops after frame {demuxed} ({e.strerror})") from None
    if not packets:
        raise VideoError(path, "the video stream has no frames")
    intact = next((i for i, p in enumerate(packets) if p.is_corrupt), len(packets))
    listed = max(demuxed, stream.frames)  # stream.frames: the container's own count, 0 where unknown
    if intact < len(packets) or demuxed < listed:
        raise VideoError(
            path,
            f"truncated or corrupt: the container lists {listed} frames but the data breaks "
            f"off at frame {min(intact, demuxed)}",
        )
    return packets


def _declared_seconds(stream: av.video.stream.VideoStream) -> float | None:
    """The stream's length as its container states it, where it gives no frame count (Matroska/WebM:
    FFmpeg's muxer writes a DURATION tag per track); None where unknown or a frame count exists."""
    if stream.frames:
        return None
    if stream.duration:
        return stream.duration * float(stream.time_base)
    tag = next((v for k, v in stream.metadata.items() if k.upper() == "DURATION"), None)
    match = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d*)?)", tag.strip()) if tag else None
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _rotation(path: Path, stream: av.video.stream.VideoStream, first: av.Packet) -> int:
    """Counterclockwise display rotation, read from the first decoded frame (the display matrix rides on
    frames; PyAV exposes no stream-level getter). Also proves the first frame decodes."""
    try:
        frames = stream.codec_context.decode(first) + stream.codec_context.decode(None)
    except av.FFmpegError as e:
        raise VideoError(path, f"corrupt: frame 0 cannot be decoded ({e.strerror})") from None
    if not frames:
        raise VideoError(path, "corrupt: frame 0 cannot be decoded")
    return round(frames[0].rotation / 90) * 90 % 360


# ------------------------------------------------------------------ pixel backends
class _DecordFailure(Exception):
    """decord could not do it; the caller decides whether PyAV takes over."""


def _decord_message(error: Exception) -> str:
    """decord's first error line without its '[time] file.cc:line: ' prefixes."""
    return re.sub(r"\[[\d:]+\] \S+:\d+: ", "", str(error).strip().splitlines()[0])


class _DecordDecoder:
    name = "decord"

    def __init__(self, path: Path, table: _FrameTable, height: int, width: int) -> None:
        try:
            self._reader = decord.VideoReader(str(path))
        except (decord.DECORDError, RuntimeError) as e:
            raise _DecordFailure(f"cannot open it: {_decord_message(e)}") from None
        if len(self._reader) != len(table.timestamps):
            raise _DecordFailure(
                f"it counts {len(self._reader)} frames where the container lists {len(table.timestamps)}"
            )
        self._shape = (height, width, 3)

    def decode(self, indices: list[int]) -> torch.Tensor:
        """indices: sorted, unique -> [T, H, W, 3] uint8, upright (decord applies the rotation itself)."""
        try:
            batch = self._reader.get_batch(indices).asnumpy()
        except (decord.DECORDError, RuntimeError) as e:
            raise _DecordFailure(_decord_message(e)) from None
        if batch.shape[1:] != self._shape:  # seen with gray sources: a 4-channel array of garbage
            raise _DecordFailure(f"it returned frames of shape {batch.shape[1:]}, expected {self._shape}")
        return torch.from_numpy(batch)


class _PyAVDecoder:
    name = "pyav"

    def __init__(self, path: Path, table: _FrameTable, threads: bool = True, size: tuple[int, int] | None = None):
        """``size``: (height, width) of the frames as displayed, scaled by FFmpeg's swscale (bicubic) as they
        are decoded, instead of the native size."""
        self._path, self._table, self._threads = path, table, threads
        self._stored_size = None
        # one swscale context for every frame (a new one per frame costs 1.5x)
        self._scaler = VideoReformatter() if size is not None else None
        if size is not None:  # swscale works on the stored frame: a turned video is scaled to the turned size
            self._stored_size = (size[1], size[0]) if table.rotation in (90, 270) else tuple(size)
        self._index_of_pts = {p: i for i, p in enumerate(table.pts)} if table.pts else None

    def decode(self, indices: list[int]) -> torch.Tensor:
        """indices: sorted, unique -> [T, H, W, 3] uint8, upright.

        Indices are decoded in runs: a run starts with a seek to the keyframe before its first index and
        goes on while decoding on is no longer than seeking again (no keyframe between it and the next).
        """
        table = self._table
        runs: list[tuple[int, list[int]]] = []  # (position in table.keyframes, indices)
        for i in indices:
            key = table.keyframe_before(i)
            if runs and table.keyframes[key] <= runs[-1][1][-1] + 1:
                runs[-1][1].append(i)
            else:
                runs.append((key, [i]))
        found: dict[int, np.ndarray] = {}
        with av.open(str(self._path)) as container:
            stream = container.streams.video[0]
            # frame and slice threads: measured 1.3-2x over PyAV's default here; none where a decode must tell
            # whether the data is damaged (with frame threads, timing decides whether an error surfaces)
            stream.thread_type = "AUTO" if self._threads else "NONE"
            for key, wanted in runs:
                if key > 0:  # only the first run can start at frame 0, where a fresh container already is
                    container.seek(table.seek_targets[key], stream=stream, backward=True)
                self._decode_run(container, stream, set(wanted), wanted[-1], found)
        frames = torch.from_numpy(np.stack([found[i] for i in indices]))
        if table.rotation:  # FFmpeg leaves the display matrix to the player; torch.rot90 turns counterclockwise
            frames = torch.rot90(frames, table.rotation // 90, dims=(1, 2)).contiguous()
        return frames

    def _decode_run(
        self,
        container: av.container.InputContainer,
        stream: av.video.stream.VideoStream,
        wanted: set[int],
        last: int,
        found: dict[int, np.ndarray],
    ) -> None:
        n = len(self._table.timestamps)
        index = -1
        try:
            for count, frame in enumerate(container.decode(stream)):
                index = self._index_of_pts.get(frame.pts, -1) if self._index_of_pts else count
                if index in wanted:  # frames before a seek's keyframe may be corrupt, and are not wanted
                    if frame.is_corrupt:
                        raise VideoError(self._path, f"corrupt: frame {index} of {n} decodes with errors")
                    if self._stored_size is None:
                        found[index] = frame.to_ndarray(format="rgb24")
                    else:
                        height, width = self._stored_size
                        found[index] = self._scaler.reformat(
                            frame, width=width, height=height, format="rgb24", interpolation="BICUBIC"
                        ).to_ndarray()
                if index >= last:
                    break
        except av.FFmpegError as e:
            raise VideoError(
                self._path, f"truncated or corrupt: decoding fails at frame {index + 1} of {n} ({e.strerror})"
            ) from None
        missing = wanted - found.keys()
        if missing:
            raise VideoError(self._path, f"truncated or corrupt: decoding stops before frame {min(missing)} of {n}")


# ------------------------------------------------------------------ the public video
class Video:
    """An opened video: its frame table and frames decoded on demand.

    Attributes:
        path: the file.
        num_frames: N, at least 1.
        timestamps: [N] float64 presentation times in seconds from the start of the file's timeline, in
            frame order; read from the stream, so right for variable frame rate.
        duration: seconds from the file's start to the end of the last frame.
        fps: average frame rate, N / (duration - timestamps[0]).
        width, height: displayed size (after rotation).
        rotation: degrees the stored frames are turned counterclockwise for display (FFmpeg's display
            matrix convention; a phone's ``rotate=90`` tag reads 270). :meth:`frames` applies it.
        backend: ``"decord"`` or ``"pyav"``, whichever decodes now.
    """

    def __init__(self, path: Path, backend: str) -> None:
        self.path = path
        self._table = _read_frame_table(path)
        self.rotation = self._table.rotation
        turned = self.rotation in (90, 270)
        self.width = self._table.height if turned else self._table.width
        self.height = self._table.width if turned else self._table.height
        self._fallback = backend == "auto"
        self._decoder: _DecordDecoder | _PyAVDecoder
        if backend == "pyav":
            self._decoder = _PyAVDecoder(path, self._table)
        else:
            try:
                self._decoder = _DecordDecoder(path, self._table, self.height, self.width)
            except _DecordFailure as failure:
                if not self._fallback:
                    raise VideoError(path, f"decord {failure}; backend 'pyav' or 'auto' can read it") from None
                self._decoder = _PyAVDecoder(path, self._table)

    @property
    def num_frames(self) -> int:
        return len(self._table.timestamps)

    @property
    def timestamps(self) -> torch.Tensor:
        return self._table.timestamps

    @property
    def duration(self) -> float:
        return self._table.duration

    @property
    def fps(self) -> float:
        return self.num_frames / (self.duration - float(self.timestamps[0]))

    @property
    def backend(self) -> str:
        return self._decoder.name

    def frames(self, indices: Sequence[int] | torch.Tensor | np.ndarray) -> torch.Tensor:
        """Decode frames by index.

        Args:
            indices: frame indices in ``[0, num_frames)``, any order, repeats allowed.

        Returns:
            frames: [T, H, W, 3] uint8 RGB, upright, native (displayed) size; T = len(indices).

        Raises:
            IndexError: an index outside the video.
            VideoError: the data is truncated or corrupt (the message names the frame).
        """
        order = [int(i) for i in indices]
        bad = [i for i in order if not 0 <= i < self.num_frames]
        if bad:
            raise IndexError(f"video '{self.path}': frame {bad[0]} is outside 0..{self.num_frames - 1}")
        if not order:
            return torch.empty((0, self.height, self.width, 3), dtype=torch.uint8)
        unique = sorted(set(order))
        decoded = self._decode(unique)
        if unique == order:
            return decoded
        row = {i: r for r, i in enumerate(unique)}
        return decoded[[row[i] for i in order]]

    def scaled_frames(self, indices: Sequence[int], size: tuple[int, int]) -> torch.Tensor:
        """Frames by index (sorted, unique) at ``size`` = (height, width), upright, scaled in the decoder
        (FFmpeg's swscale, bicubic) rather than decoded at full size and resized: for HD video several times
        faster (``benchmarks/bench_decode.py``). PyAV decodes them whatever the backend; damaged data raises
        as in :meth:`frames`.
        """
        indices = [int(i) for i in indices]
        if indices != sorted(set(indices)) or (indices and not 0 <= indices[0] <= indices[-1] < self.num_frames):
            raise IndexError(
                f"video '{self.path}': scaled_frames takes sorted, unique indices in 0..{self.num_frames - 1}"
            )
        if not indices:
            return torch.empty((0, *size, 3), dtype=torch.uint8)
        return _PyAVDecoder(self.path, self._table, size=size).decode(indices)

    def _decode(self, indices: list[int]) -> torch.Tensor:
        if isinstance(self._decoder, _PyAVDecoder):
            return self._decoder.decode(indices)
        try:
            return self._decoder.decode(indices)
        except _DecordFailure as failure:
            frames = _PyAVDecoder(self.path, self._table, threads=False).decode(indices)  # damage raises here
            if not self._fallback:
                raise VideoError(
                    self.path, f"decord cannot decode it ({failure}); backend 'pyav' or 'auto' can"
                ) from None
            self._decoder = _PyAVDecoder(self.path, self._table)
            return frames

    def __getstate__(self) -> dict:
        """Pickled without its decoder (a DataLoader worker hands opened videos to the main process): the
        frame table travels, and the receiving process opens the file again with the backend in use."""
        return {**self.__dict__, "_decoder": self._decoder.name}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if state["_decoder"] == "pyav":
            self._decoder = _PyAVDecoder(self.path, self._table)
        else:
            self._decoder = _DecordDecoder(self.path, self._table, self.height, self.width)

    def __repr__(self) -> str:
        return (
            f"Video('{self.path}', {self.num_frames} frames, {self.width}x{self.height}, "
            f"{self.fps:.3f} fps, rotation={self.rotation}, backend={self.backend!r})"
        )


def open_video(path: str | os.PathLike, backend: str = "auto") -> Video:
    """Open a video file for frame access.

    Args:
        path: the file (any container/codec FFmpeg reads: mp4, mkv, webm, avi, mov, gif, ...).
        backend: ``"decord"``, ``"pyav"`` or ``"auto"`` (decord, switching to PyAV where decord cannot
            open or decode the file).

    Returns:
        The :class:`Video`; reading its frame table costs one pass over the packets (no decoding but the
        first frame).

    Raises:
        VideoError: the path is missing or unreadable, the file is empty, not a media file, has no video
            stream, or is truncated or corrupt; or decord was asked for and cannot read it.
        ValueError: an unknown backend.
    """
    if backend not in DECODERS:
        raise ValueError(f"backend must be one of {DECODERS}, got {backend!r}")
    return Video(Path(path), backend)


def resize(frames: torch.Tensor, size: tuple[int, int], dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """Resize frames with antialiased bilinear interpolation (torch; decord's resizer crashes on some sizes).

    Args:
        frames: [T, H, W, 3] uint8.
        size: (height, width) of the output, e.g. ``(27, 48)`` for TransNetV2.
        dtype: ``torch.uint8`` (rounded, values 0..255) or a floating dtype (values in [0, 1]).

    Returns:
        [T, height, width, 3] of ``dtype``.
    """
    if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be [T, H, W, 3] uint8, got {list(frames.shape)} {frames.dtype}")
    x = (
        F.interpolate(
            frames.permute(0, 3, 1, 2).float(), size=tuple(size), mode="bilinear", antialias=True, align_corners=False
        )
        .permute(0, 2, 3, 1)
        .clamp_(0, 255)
    )
    if dtype == torch.uint8:
        return x.round_().to(torch.uint8).contiguous()
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be torch.uint8 or a floating dtype, got {dtype}")
    return (x / 255).to(dtype).contiguous()
