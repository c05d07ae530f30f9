"""A folder of the user's own videos described by a JSONL file (``annotations.jsonl``).

One JSON object per line: ``{"video": "rel/path.mp4", "captions": [...], "question": ..., "candidates": [...],
"answer": k, "split": ..., "subtitles": "rel/path.srt" or "transcript": "text"}`` (subtitles and
transcripts become the sample's ``transcript``). A question without "candidates" is open-ended: its
"answer" is the answer's text. Videos of the folder without a line are captionless items (to index).
"""

from __future__ import annotations

import json
from pathlib import Path

from .items import VIDEO_EXTENSIONS, CaptionItem, Problems, QAItem, parse_split, read_text

__all__ = ["read_jsonl_folder"]


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
    for line_no, line in enumerate(read_text(folder / annotations).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{annotations} line {line_no}"
        try:
            row = json.loads(line)
            rel = row["video"]
            if not isinstance(rel, str) or not rel.strip():
                raise TypeError(f"'video' must be a path, got {rel!r}")
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            problems.append((where, f"{where}: not a JSON object with a 'video' path ({err})"))
            continue
        path = folder / rel
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
        if not path.is_file():
            problems.append((item_id, f"{where}: video {rel!r} not found"))
            continue
        described.add(path.resolve())
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
            else:
                # No "captions" field: a video to index only. A field given but empty is a mistake.
                captions = [c.strip() for c in _texts(row, "captions")] if "captions" in row else []
                if "captions" in row and (not captions or not all(captions)):
                    raise ValueError("'captions' is given but empty, or holds an empty caption")
                items.append(CaptionItem(item_id, path, captions, split, meta))
        except (KeyError, TypeError, ValueError) as err:
            problems.append((item_id, f"{where}: {err}"))
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS):
        if path.resolve() not in described:
            rel = path.relative_to(folder).as_posix()
            items.append(CaptionItem(rel if path.stem in seen else path.stem, path, [], "test"))
            seen.setdefault(path.stem, rel)
    return items, problems
