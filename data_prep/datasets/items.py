"""What every benchmark reader returns, and the helpers they share (splits, files, finding videos)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "VIDEO_EXTENSIONS", "CaptionItem", "Problems", "QAItem", "VideoFinder", "add_caption_item", "parse_split",
    "read_id_list", "read_plain_pickle", "read_text",
]  # fmt: skip

# Still images are one-frame videos (FFmpeg decodes them through the same interface).
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".gif", ".png", ".jpg", ".jpeg", ".webp", ".bmp")
SPLITS = {"train": "train", "validate": "val", "val": "val", "valid": "val", "test": "test"}


@dataclass
class CaptionItem:
    """A video with its captions (text-video retrieval)."""

    id: str
    video: Path
    captions: list[str]
    split: str
    meta: dict = field(default_factory=dict)


@dataclass
class QAItem:
    """A question about a video: multiple choice (``candidates``, ``answer`` their index) or open-ended
    (no candidates, ``answer`` -1, ``answer_text`` the answer)."""

    id: str
    video: Path
    question: str
    candidates: list[str]
    answer: int
    type: str
    split: str
    meta: dict = field(default_factory=dict)
    answer_text: str = ""

    def __post_init__(self):
        if self.candidates and not self.answer_text and 0 <= self.answer < len(self.candidates):
            self.answer_text = self.candidates[self.answer]


Problems = list[tuple[str, str]]


def parse_split(value: str, where: str) -> str:
    """A split name as the benchmarks spell it ("validate", "valid", ...) -> "train", "val" or "test"."""
    try:
        return SPLITS[str(value).strip().lower()]
    except KeyError:
        raise ValueError(f"{where}: unknown split {value!r} (expected one of {sorted(set(SPLITS))})") from None


class VideoFinder:
    """Finds a benchmark's video by its id under ``root``.

    Tried in order: ``<root>/<id>.<ext>`` (the id may carry its extension, as DiDeMo's do); the relative
    path ``mapping`` gives the id (NExT-QA's ``map_vid_vidorID.json``: ``"0101/2909445186"``); then any
    file named ``<id>.<ext>`` below ``root`` (MSR-VTT's ``TrainValVideo/`` and ``TestVideo/``, NExT-QA's
    numbered folders without the map), found through an index of the folder built on first need. An id
    that names two files below ``root`` is not guessed: :meth:`why_missing` says which.
    """

    def __init__(self, root: str | Path, mapping: dict[str, str] | None = None):
        self.root, self.mapping = Path(root), dict(mapping or {})
        self._below: dict[str, list[Path]] | None = None

    def _direct(self, base: Path) -> Path | None:
        for ext in ("",) + VIDEO_EXTENSIONS:
            path = base.with_name(base.name + ext)
            if path.is_file():
                return path
        return None

    def _index(self) -> dict[str, list[Path]]:
        if self._below is None:
            self._below = {}
            if self.root.is_dir():
                for path in sorted(self.root.rglob("*")):
                    if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file():
                        self._below.setdefault(path.stem, []).append(path)
                        self._below.setdefault(path.name, []).append(path)
        return self._below

    def find(self, video_id: str) -> Path | None:
        """The video's file, or None (then :meth:`why_missing` explains)."""
        found = self._direct(self.root / video_id)
        if found is None and video_id in self.mapping:
            found = self._direct(self.root / self.mapping[video_id])
        if found is None:
            below = self._index().get(video_id, [])
            found = below[0] if len(below) == 1 else None
        return found

    def why_missing(self, video_id: str) -> str:
        below = self._index().get(video_id, [])
        if len(below) > 1:
            shown = ", ".join(str(p.relative_to(self.root)) for p in below[:3])
            return f"video {video_id!r}: {len(below)} files of that name below {self.root} ({shown}); keep one"
        mapped = f" (nor at {self.mapping[video_id]!r}, where the map puts it)" if video_id in self.mapping else ""
        return f"video {video_id!r} not found in {self.root}{mapped}"


def add_caption_item(
    items: list,
    problems: Problems,
    finder: VideoFinder,
    vid: str,
    captions: list[str],
    split: str,
    names: tuple[str, ...] = (),
    missing: str = "no captions",
) -> None:
    """Append the video ``vid`` with its captions to ``items``, or a problem naming what is wrong: its file
    not found (looked for under ``names``, default its id) or no caption (``missing`` says where from)."""
    names = names or (vid,)
    path = next((p for p in map(finder.find, names) if p is not None), None)
    if path is None:
        problems.append((vid, finder.why_missing(names[0])))
    elif not captions:
        problems.append((vid, missing))
    else:
        items.append(CaptionItem(vid, path, captions, split))


def read_text(path: Path) -> str:
    """An annotation file's text (UTF-8, a byte-order mark allowed).

    Raises:
        FileNotFoundError: naming the file.
    """
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    return path.read_text(encoding="utf-8-sig")


class _PlainUnpickler(pickle.Unpickler):
    """Admits containers, strings and numbers only: any class or function in the stream is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: this file may only hold plain data")


def read_plain_pickle(path: Path):
    """A pickled annotation file (MSVD's ``raw-captions.pkl``) read without running code: only dicts, lists,
    tuples, strings and numbers are admitted.

    Raises:
        FileNotFoundError: naming the file.
        ValueError: naming the file, when it is not a pickle or holds anything but plain data.
    """
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    try:
        with path.open("rb") as f:
            return _PlainUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as err:
        raise ValueError(f"{path}: not a plain-data pickle ({err})") from None


def read_id_list(path: Path) -> list[str]:
    """A list file of one id per line (blank lines skipped, spaces stripped)."""
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]
