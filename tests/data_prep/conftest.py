"""Fixtures of the data_prep tests: test videos written once per session (helpers in :mod:`tests.data_prep.videos`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.data_prep.videos import N_FRAMES, indexed_frames, write_video


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory (with a space and non-ASCII characters in its name) for the session's videos."""
    return tmp_path_factory.mktemp("média vidéo")


@pytest.fixture(scope="session")
def make_video(media: Path) -> Callable[..., Path]:
    """``make_video(name, frames=None, **write_video_kwargs)``: write once per session, return the path.

    Without frames: the standard :func:`indexed_frames` video, 48 frames of 64x48 at 25 fps.
    """

    def make(name: str, frames: np.ndarray | None = None, **kwargs) -> Path:
        path = media / name
        if not path.exists():
            write_video(path, indexed_frames(N_FRAMES, 48, 64) if frames is None else frames, **kwargs)
        return path

    return make


@pytest.fixture(scope="session")
def mp4(make_video: Callable[..., Path]) -> Path:
    """The standard video: H.264 in MP4 with B-frames and a keyframe every 8 frames (seeks get exercised)."""
    return make_video("indexed.mp4", options={"g": "8", "bf": "2"})
