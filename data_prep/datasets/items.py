"""What every benchmark reader returns, and the helpers they share (splits, files, finding videos).

Annotation files are read so that one bad byte costs one row, not the run: :func:`read_lines` decodes each
line on its own (a line that is not UTF-8 says where, and keeps its bytes as lone surrogates), and
:func:`read_json` / :func:`read_csv` parse the whole file with those bytes kept, so the readers report
the rows :func:`undecodable` finds them in and read the rest.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "VIDEO_EXTENSIONS", "CaptionItem", "Line", "Problems", "QAItem", "VideoFinder", "add_caption_item",
    "line_problem", "not_a_file", "parse_split", "read_csv", "read_id_list", "read_json", "read_lines",
    "read_plain_pickle", "texts_of", "undecodable",
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

    @staticmethod
    def _names(base: Path) -> Iterator[Path]:
        return (base.with_name(base.name + ext) for ext in ("",) + VIDEO_EXTENSIONS)

    def _direct(self, base: Path) -> Path | None:
        return next((path for path in self._names(base) if path.is_file()), None)

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
        odd = next((p for p in self._names(self.root / video_id)
                    if p.suffix.lower() in VIDEO_EXTENSIONS and (p.is_symlink() or p.exists())), None)  # fmt: skip
        if odd is not None:  # a directory or a dangling link named as the video
            return f"video {video_id!r}: {odd} {not_a_file(odd)}"
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


@dataclass(frozen=True)
class Line:
    """One line of an annotation file.

    Attributes:
        number: 1-based.
        text: the line without its end; bytes that are not UTF-8 kept as lone surrogates U+DC80..U+DCFF
            (``errors="surrogateescape"``), where :func:`undecodable` finds them again.
        error: "" for a UTF-8 line, else where it stops being one: "not valid UTF-8 (byte 0xbb at byte 13 of
            the line)".
    """

    number: int
    text: str
    error: str = ""


def _read_bytes(path: Path) -> bytes:
    """An annotation file's bytes without a UTF-8 byte-order mark. Raises FileNotFoundError naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    data = path.read_bytes()
    return data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data


def read_lines(path: Path) -> list[Line]:
    """An annotation file's lines (UTF-8, a byte-order mark allowed; ends ``\\n``, ``\\r\\n`` or ``\\r``), each
    decoded on its own: a bad byte spoils its line only.

    Raises:
        FileNotFoundError: naming the file.
    """
    lines = []
    for number, raw in enumerate(_read_bytes(path).splitlines(), start=1):
        try:
            lines.append(Line(number, raw.decode("utf-8")))
        except UnicodeDecodeError as err:
            error = f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at byte {err.start + 1} of the line)"
            lines.append(Line(number, raw.decode("utf-8", "surrogateescape"), error))
    return lines


def line_problem(path: Path, line: Line) -> tuple[str, str]:
    """The problem of a row that cannot be read because its line is not UTF-8 (keyed by file and line: the
    row's own id may be what is unreadable)."""
    return f"{path.name} line {line.number}", f"{path} line {line.number}: {line.error}"


_UNDECODABLE = re.compile("[\udc80-\udcff]")  # a byte that was not UTF-8, as errors="surrogateescape" keeps it


def texts_of(value) -> Iterator[str]:
    """The strings of a parsed JSON value or CSV row, keys included, in order."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from texts_of(key)
            yield from texts_of(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from texts_of(item)


def undecodable(value) -> str | None:
    """The first byte in ``value`` (a string, a parsed JSON value, a CSV row) that was not UTF-8 when its file
    was decoded, as "not valid UTF-8 (byte 0xbb)"; None where there is none."""
    for text in texts_of(value):
        found = _UNDECODABLE.search(text)
        if found:
            return f"not valid UTF-8 (byte 0x{ord(found.group()) - 0xDC00:02x})"
    return None


def read_json(path: Path):
    """A JSON annotation file, parsed whole. Bytes that are not UTF-8 stay in its strings (see
    :func:`undecodable`): the reader reports and skips the rows that hold them and reads the rest.

    Raises:
        FileNotFoundError: naming the file.
        ValueError: naming the file, when it is not JSON (a bad byte outside any string included).
    """
    text = _read_bytes(path).decode("utf-8", "surrogateescape")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        there = undecodable(text[err.pos : err.pos + 1])
        raise ValueError(f"{path}: not JSON ({err}{f'; {there} there' if there else ''})") from None


def read_csv(path: Path, columns: set[str], kind: str) -> tuple[list[tuple[int, dict[str, str]]], Problems]:
    """A CSV annotation file's rows as ``(line number, {column: value})``, names and values stripped; a row
    whose lines are not all UTF-8 is a problem naming the file and the line instead (:func:`line_problem`).

    Raises:
        FileNotFoundError: naming the file.
        ValueError: naming the file, when it is not CSV, or its header is not UTF-8 or lacks one of
            ``columns`` (``kind``, e.g. "NExT-QA", names the format in the message).
    """
    lines = read_lines(path)
    reader = csv.DictReader(line.text for line in lines)
    rows, problems = [], []
    try:
        have = [str(k).strip() for k in reader.fieldnames or []]
        end = reader.line_num  # the header's line
        if end and lines[end - 1].error:
            raise ValueError(f"{path} line {end} (the header): {lines[end - 1].error}")
        if not columns <= set(have):
            raise ValueError(f"{path}: missing {kind} columns {sorted(columns - set(have))} (its header: {have})")
        for raw in reader:
            span = lines[end : reader.line_num]  # the row's lines, blank lines before it included
            end = reader.line_num
            bad = next((line for line in span if line.error), None)
            if bad is not None:
                problems.append(line_problem(path, bad))
                continue
            first = next(line for line in span if line.text)
            rows.append((first.number, {str(k).strip(): (v or "").strip() for k, v in raw.items() if k is not None}))
    except csv.Error as err:
        raise ValueError(f"{path} line {reader.line_num}: not CSV ({err})") from None
    return rows, problems


def not_a_file(path: Path) -> str | None:
    """Why a video path cannot be read as a file, worded to follow its name: "not found", "is a dangling
    symlink (to '...')", "is a directory, not a video file", "is not a regular file (...)"; None for a file."""
    if path.is_file():
        return None
    if path.is_symlink() and not path.exists():
        return f"is a dangling symlink (to {os.readlink(path)!r})"
    if path.is_dir():
        return "is a directory, not a video file"
    return "is not a regular file (a pipe, socket or device)" if path.exists() else "not found"


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


def read_id_list(path: Path) -> tuple[list[str], Problems]:
    """A list file of one id per line (blank lines skipped, spaces stripped), and its lines that are not
    UTF-8 as problems (:func:`line_problem`)."""
    ids, problems = [], []
    for line in read_lines(path):
        if line.error:
            problems.append(line_problem(path, line))
        elif line.text.strip():
            ids.append(line.text.strip())
    return ids, problems
