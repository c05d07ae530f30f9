"""Dataset adapters: the annotation formats of real benchmarks into one item list.

- MSR-VTT style captions (``{"videos": [{"video_id", "split"}], "sentences": [{"video_id", "caption"}]}``,
  as in MSR-VTT's ``train_val_videodatainfo.json``): one :class:`CaptionItem` per video.
- NExT-QA style multiple choice (CSV columns ``video,question,answer,qid,type,a0..a4``, one file per
  split): one :class:`QAItem` per question.
- A generic folder of videos with a JSONL file (``{"video": "rel/path.mp4", "captions": [...],
  "question": ..., "candidates": [...], "answer": k, "split": ..., "subtitles": "rel/path.srt" or
  "transcript": "text"}`` per line; subtitles and transcripts become the sample's ``transcript``). A
  question without "candidates" is open-ended: its "answer" is the answer's text.

Readers return ``(items, problems)``: a row that names a missing video, or is malformed, becomes a
problem ``(item id, message)`` and the rest is read; a missing or unreadable annotation file raises.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CaptionItem", "QAItem", "read_jsonl_folder", "read_msrvtt", "read_nextqa"]

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


def _split(value: str, where: str) -> str:
    try:
        return SPLITS[str(value).strip().lower()]
    except KeyError:
        raise ValueError(f"{where}: unknown split {value!r} (expected one of {sorted(set(SPLITS))})") from None


def _find_video(video_dir: Path, video_id: str) -> Path | None:
    for ext in ("",) + VIDEO_EXTENSIONS:
        path = video_dir / f"{video_id}{ext}"
        if path.is_file():
            return path
    return None


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    return path.read_text(encoding="utf-8-sig")


def read_msrvtt(annotations: str | Path, video_dir: str | Path) -> tuple[list[CaptionItem], Problems]:
    """Read MSR-VTT style caption annotations; videos are ``<video_dir>/<video_id>.<ext>``."""
    annotations, video_dir = Path(annotations), Path(video_dir)
    try:
        data = json.loads(_read_text(annotations))
        videos, sentences = data["videos"], data["sentences"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{annotations}: not MSR-VTT style annotations ({err})") from None
    captions: dict[str, list[str]] = {}
    for s in sentences:
        if isinstance(s, dict) and str(s.get("caption", "")).strip():
            captions.setdefault(str(s.get("video_id")), []).append(str(s["caption"]).strip())
    items, problems = [], []
    for row in videos:
        vid = str(row.get("video_id", "")) if isinstance(row, dict) else ""
        if not vid:
            problems.append((str(row)[:60], "video entry without video_id"))
            continue
        try:
            split = _split(row.get("split", ""), f"video {vid!r}")
        except ValueError as err:
            problems.append((vid, str(err)))
            continue
        path = _find_video(video_dir, vid)
        if path is None:
            problems.append((vid, f"video file not found in {video_dir}"))
        elif not captions.get(vid):
            problems.append((vid, "no captions"))
        else:
            items.append(CaptionItem(vid, path, captions[vid], split))
    return items, problems


def read_nextqa(csv_files: dict[str, str | Path], video_dir: str | Path) -> tuple[list[QAItem], Problems]:
    """Read NExT-QA style multiple-choice CSVs, ``{"train": path, "val": path, "test": path}``."""
    video_dir = Path(video_dir)
    items, problems = [], []
    for split, path in csv_files.items():
        split = _split(split, str(path))
        rows = list(csv.DictReader(_read_text(Path(path)).splitlines()))
        needed = {"video", "question", "answer", "qid", "type", "a0", "a1", "a2", "a3", "a4"}
        if rows and not needed <= set(rows[0]):
            raise ValueError(f"{path}: missing NExT-QA columns {sorted(needed - set(rows[0]))}")
        for line, row in enumerate(rows, start=2):
            qid = f"{row['video']}_{row['qid']}"
            candidates = [row[f"a{i}"].strip() for i in range(5)]
            try:
                answer = int(row["answer"])
            except ValueError:
                problems.append((qid, f"{path} line {line}: answer {row['answer']!r} is not an index"))
                continue
            if not 0 <= answer < 5 or not all(candidates) or not row["question"].strip():
                problems.append((qid, f"{path} line {line}: needs a question, 5 candidates and an answer in 0..4"))
                continue
            video = _find_video(video_dir, row["video"])
            if video is None:
                problems.append((qid, f"video {row['video']!r} not found in {video_dir}"))
                continue
            items.append(QAItem(qid, video, row["question"].strip(), candidates, answer, row["type"], split))
    return items, problems


def read_jsonl_folder(folder: str | Path, annotations: str = "annotations.jsonl") -> tuple[list, Problems]:
    """A folder of videos described by a JSONL file: caption lines become :class:`CaptionItem`, lines
    with a question and candidates :class:`QAItem`. Videos without a line are captionless items.

    An item's id is the line's "id", else the video's file name without extension; a line whose id is
    already taken is a problem (give such lines an "id")."""
    folder = Path(folder)
    items, problems, described = [], [], set()
    seen: dict[str, str] = {}  # id -> where it was first used
    for line_no, line in enumerate(_read_text(folder / annotations).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{annotations} line {line_no}"
        try:
            row = json.loads(line)
            rel = row["video"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            problems.append((where, f"not a JSON object with a 'video' field ({err})"))
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
            split = _split(row.get("split", "test"), where)
            meta = {}
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
                candidates = [str(c) for c in row["candidates"]]
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
                captions = [str(c).strip() for c in row.get("captions", [])]
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
