"""Small test videos, written with PyAV (its bundled FFmpeg) into temporary directories.

Frames carry their own index: frame i of :func:`indexed_frames` is a flat grey level ``16 + 3 i`` (which
lossy codecs keep to +-1) with a white block in its top-left corner (which shows orientation), so
:func:`frame_ids` reads back which frames a decoder returned.
"""

from __future__ import annotations

import fractions
from pathlib import Path

import av
import numpy as np
import torch

N_FRAMES = 48  # frames of the standard test video (2 s at 25 fps)


def indexed_frames(n: int, height: int, width: int) -> np.ndarray:
    """[n, height, width, 3] uint8: level 16 + 3 i, a white block over the top-left ninth."""
    assert 16 + 3 * (n - 1) <= 255 - 16
    frames = np.repeat((16 + 3 * np.arange(n)).astype(np.uint8)[:, None, None, None], 3, axis=3)
    frames = np.ascontiguousarray(np.broadcast_to(frames, (n, height, width, 3)))
    frames[:, : max(1, height // 3), : max(1, width // 3)] = 255
    return frames


def frame_ids(frames: torch.Tensor) -> list[int]:
    """Indices of :func:`indexed_frames` frames, from each frame's median level."""
    levels = frames.reshape(len(frames), -1).float().median(dim=1).values
    return ((levels - 16) / 3).round().int().tolist()


def scene_frames(lengths: tuple[int, ...], height: int = 90, width: int = 160) -> np.ndarray:
    """[sum(lengths), height, width, 3] uint8: scenes cut hard into each other, each one moving.

    Scene kinds cycle: diagonal blue/pink stripes moving right; a white square crossing dark blue;
    red/green bars moving down.
    """
    y, x = np.arange(height)[:, None], np.arange(width)[None, :]
    frames = []
    for scene, length in enumerate(lengths):
        for t in range(length):
            if scene % 3 == 0:
                v = (x + y + 3 * t) // 8 % 2 * 200
                frame = np.stack([v, np.full_like(v, 60), 255 - v], -1)
            elif scene % 3 == 1:
                frame = np.zeros((height, width, 3), int)
                frame[..., 2] = 120
                left = (10 + 2 * t) % (width - 20)
                frame[height // 3 : height // 3 + 20, left : left + 20] = 255
            else:
                v = (y + 2 * t) // 6 % 2 + 0 * x
                frame = np.stack([v * 220, (1 - v) * 220, np.full_like(v, 30)], -1)
            frames.append(frame)
    return np.stack(frames).astype(np.uint8)


def write_video(
    path: Path,
    frames: np.ndarray,
    *,
    fps: int = 25,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rotation: int | None = None,
    pts_ms: list[int] | None = None,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    container_format: str | None = None,
) -> Path:
    """Encode frames ([T, H, W, 3] RGB, or [T, H, W] grey) into ``path``.

    Args:
        rotation: counterclockwise display rotation written as the stream's display matrix.
        pts_ms: explicit presentation times in milliseconds (variable frame rate).
        options: encoder options (e.g. ``{"g": "8"}`` for a keyframe every 8 frames).
        container_options: muxer options (e.g. ``{"movflags": "faststart"}``).
        container_format: muxer name where the extension does not say it (raw ``h264``).
    """
    grey = frames.ndim == 3
    with av.open(str(path), "w", format=container_format, options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        # one encoder thread: threaded libx264 output varies with the machine's load, and the tests that damage
        # a file's bytes need the same file every time
        stream.options = {**({"threads": "1"} if codec == "libx264" else {}), **(options or {})}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if pts_ms is not None:
            stream.codec_context.time_base = fractions.Fraction(1, 1000)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="gray" if grey else "rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], fractions.Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return Path(path)


def write_audio_only(path: Path) -> Path:
    """Encode 0.6 s of silent AAC: a media file with an audio stream and no video."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return Path(path)
