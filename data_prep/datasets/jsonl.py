"""A folder of the user's own videos described by a JSONL file (``annotations.jsonl``).

One JSON object per line: ``{"video": "rel/path.mp4", "captions": [...], "question": ..., "candidates": [...],
"answer": k, "split": ..., "subtitles": "rel/path.srt" or "transcript": "text"}`` (subtitles and
transcripts become the sample's ``transcript``). A question without "candidates" is open-ended: its
"answer" is the answer's text. Videos of the folder without a line are captionless items (to index).

A video named by a line is never a captionless item, whatever is wrong with the line: a line whose every
caption is refused (empty, a byte that is not UTF-8, a raw control character: :func:`_refused`) is a
problem, and a line with some refused keeps the others and reports those.
"""

from __future__ import annotations

import json
import re
from contextlib import suppress
from pathlib import Path

from ..text import check_text
from .items import (
    VIDEO_EXTENSIONS,
    CaptionItem,
    Problems,
    QAItem,
    not_a_file,
    parse_split,
    read_lines,
    texts_of,
    undecodable,
)

__all__ = ["read_jsonl_folder"]

_CONTROL = re.compile("[\x00-\x1f]")  # what JSON wants escaped inside a string
_VIDEO = re.compile(r'"video"\s*:\s*("(?:[^"\\]|\\.)*")')  # the "video" field of a line, parsed or not


def _parse(text: str) -> tuple[dict, bool]:
    """A line's JSON object, and whether it parsed only leniently: with raw control characters (a NUL byte,
    a tab) in its strings, which JSON does not allow; the row is still read, to know its video, and
    :func:`_refused` refuses the strings that hold one.

    Raises:
        json.JSONDecodeError, KeyError, TypeError: not a JSON object with a "video" path.
    """
    try:
        row, lenient = json.loads(text), False
    except json.JSONDecodeError:
        row, lenient = json.loads(text, strict=False), True
    rel = row["video"]
    if not isinstance(rel, str) or not rel.strip() or "\x00" in rel:
        raise TypeError(f"'video' must be a path, got {rel!r}")
    return row, lenient


def _refused(value, lenient: bool) -> str | None:
    """Why the texts of ``value`` (a string or part of a row) cannot be used, or None: a byte that is not
    UTF-8, or, in a line that parsed only leniently, a raw control character."""
    problem = undecodable(value)
    if problem is None and lenient:
        control = next((found.group() for t in texts_of(value) if (found := _CONTROL.search(t))), None)
        if control is not None:
            problem = f"a raw control character U+{ord(control):04X} (JSON wants it escaped)"
    return problem


def _captions(row: dict, lenient: bool) -> tuple[list[str], list[str]]:
    """The line's usable captions (stripped), and why each of the others is refused ("caption 2: ...")."""
    kept, refused = [], []
    for k, caption in enumerate(_texts(row, "captions"), start=1):
        try:
            problem = _refused(caption, lenient)
            if problem is not None:
                raise ValueError(f"caption {k}: {problem}")
            kept.append(check_text(caption, f"caption {k}", limit=None).strip())
        except ValueError as err:  # not UTF-8, a raw control character; empty, a lone surrogate (check_text)
            refused.append(str(err))
    return kept, refused


def _texts(row: dict, key: str) -> list[str]:
    """``row[key]``, which must be a list of strings."""
    value = row[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{key!r} must be a list of texts, got {json.dumps(value)[:60]}")
    return value


def read_jsonl_folder(folder: str | Path, annotations: str = "annotations.jsonl") -> tuple[list, Problems]:
    """A folder of videos described by a JSONL file: caption lines become :class:`CaptionItem`, lines
    with a question and candidates :class:`QAItem`. Videos without a line are captionless items.

    An item's id is the line's "id", else the video's file name without extension; a line whose id is
    already taken is a problem (give such lines an "id")."""
    folder = Path(folder)
    items, problems, described = [], [], set()
    seen: dict[str, str] = {}  # id -> where it was first used
    for line in read_lines(folder / annotations):
        if not line.text.strip():
            continue
        where = f"{annotations} line {line.number}"
        try:
            row, lenient = _parse(line.text)
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            why = line.error or f"not a JSON object with a 'video' path ({err})"
            problems.append((where, f"{where}: {why}"))
            named = _VIDEO.search(line.text)  # a broken line may still name its video: not a captionless item then
            if named is not None:
                with suppress(ValueError):  # not a JSON string after all, or a path holding a NUL
                    described.add((folder / json.loads(named.group(1), strict=False)).resolve())
            continue
        rel = row["video"]
        path = folder / rel
        problem = _refused(rel, lenient)
        if problem is None:
            described.add(path.resolve())  # named by a line: never a captionless item
            problem = _refused({k: v for k, v in row.items() if k not in ("video", "captions")}, lenient)
        if problem is not None:  # its id or video may be what cannot be read: keyed by its line
            problems.append((where, f"{where}: {problem}"))
            continue
        item_id = str(row.get("id", Path(rel).stem))
        if item_id in seen:
            problems.append(
                (
                    f"{item_id} ({where})",
                    f"{where}: id {item_id!r} is already used by {seen[item_id]}; give the line an 'id'",
                )
            )
            continue
        seen[item_id] = where
        missing = not_a_file(path)
        if missing is not None:
            problems.append((item_id, f"{where}: video {rel!r} {missing}"))
            continue
        try:
            split = parse_split(row.get("split", "test"), where)
            meta = {}
            for key in ("question", "transcript", "subtitles", "type"):
                if key in row and not isinstance(row[key], str):
                    raise TypeError(f"{key!r} must be text, got {type(row[key]).__name__}")
            if "subtitles" in row:  # an SRT/WebVTT file, relative to the folder
                meta["subtitles"] = str(folder / row["subtitles"])
                if not Path(meta["subtitles"]).is_file():
                    raise ValueError(f"subtitles file {row['subtitles']!r} not found")
            elif "transcript" in row:
                meta["transcript"] = str(row["transcript"])
            if "question" in row and "candidates" not in row:  # open-ended: the answer is a text
                answer_text = str(row.get("answer", "")).strip()
                if not str(row["question"]).strip() or not answer_text:
                    raise ValueError(
                        "an open-ended question (no 'candidates') needs a non-empty question and answer text"
                    )
                items.append(
                    QAItem(
                        item_id,
                        path,
                        str(row["question"]).strip(),
                        [],
                        -1,
                        str(row.get("type", "")),
                        split,
                        meta,
                        answer_text,
                    )
                )
            elif "question" in row:
                candidates = _texts(row, "candidates")
                answer = int(row.get("answer", -1))
                if not str(row["question"]).strip() or not candidates or not all(c.strip() for c in candidates):
                    raise ValueError("needs a non-empty question and non-empty candidates")
                if not 0 <= answer < len(candidates):
                    raise ValueError(f"answer {answer} is not an index into the {len(candidates)} candidates")
                items.append(
                    QAItem(
                        item_id,
                        path,
                        str(row["question"]).strip(),
                        candidates,
                        answer,
                        str(row.get("type", "")),
                        split,
                        meta,
                    )
                )
            elif "captions" not in row:  # a video to index only
                items.append(CaptionItem(item_id, path, [], split, meta))
            else:  # a field given but empty is a mistake; so is one whose every caption is refused
                captions, refused = _captions(row, lenient)
                if not captions:
                    raise ValueError(
                        f"every caption is refused: {'; '.join(refused)}"
                        if refused
                        else "'captions' is given but empty"
                    )
                if refused:  # keyed apart from the item, which is prepared
                    problems.append(
                        (f"{item_id} ({where})", f"{where}: {'; '.join(refused)}; the other captions are kept")
                    )
                items.append(CaptionItem(item_id, path, captions, split, meta))
        except (KeyError, TypeError, ValueError) as err:
            problems.append((item_id, f"{where}: {err}"))
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS):
        if path.resolve() not in described:
            rel = path.relative_to(folder).as_posix()
            item_id = rel if path.stem in seen else path.stem
            seen.setdefault(path.stem, rel)
            missing = not_a_file(path)
            if missing is None:
                items.append(CaptionItem(item_id, path, [], "test"))
            else:
                problems.append((item_id, f"video {rel!r} in {folder} (no line names it) {missing}"))
    return items, problems
