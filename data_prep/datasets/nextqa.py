"""NExT-QA multiple-choice QA, read as its owners distribute it (github.com/doc-doc/NExT-QA).

    nextqa/train.csv, val.csv, test.csv     video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4
    nextqa/map_vid_vidorID.json              {"2909445186": "0101/2909445186", ...}
    NExTVideo/0101/2909445186.mp4            the videos, in numbered folders

``answer`` is the index (0-4) of the right candidate; ``type`` one of CW, CH (causal), TN, TC, TP
(temporal), DL, DC, DO (descriptive). A question's key is ``<video>_<qid>``, as in the official
``eval_mc.py``. The map file is looked for beside the CSVs, then in the video folder and the folder above
it; without one, videos are found anywhere below the video folder. Fields may carry stray spaces.
"""

from __future__ import annotations

from pathlib import Path

from .items import Problems, QAItem, VideoFinder, parse_split, read_csv, read_json, undecodable

__all__ = ["NEXTQA_COLUMNS", "NEXTQA_MAP", "read_nextqa", "read_video_map"]

NEXTQA_COLUMNS = ("video", "frame_count", "width", "height", "question", "answer", "qid", "type",
                  "a0", "a1", "a2", "a3", "a4")  # fmt: skip
NEXTQA_MAP = "map_vid_vidorID.json"
CANDIDATES = 5


def read_video_map(path: Path) -> tuple[dict[str, str], Problems]:
    """NExT-QA's ``map_vid_vidorID.json``: video id -> its path under the video folder, without extension;
    and its entries that are not UTF-8, as problems (left out of the map).

    Raises:
        ValueError: naming the file, when it is not a JSON object of strings.
    """
    mapping = read_json(path)
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise ValueError(f"{path}: not NExT-QA's video map (expected a JSON object of video id -> 'folder/video')")
    kept, problems = {}, []
    for key, value in mapping.items():
        problem = undecodable([key, value])
        if problem is None:
            kept[str(key).strip()] = value.strip()
        else:
            problems.append((f"{path.name} entry {key!r}", f"{path}: entry {key!r}: {problem}"))
    return kept, problems


def _find_map(csv_files: dict[str, str | Path], video_dir: Path) -> Path | None:
    folders = [Path(p).parent for p in csv_files.values()] + [video_dir, video_dir.parent]
    return next((f / NEXTQA_MAP for f in folders if (f / NEXTQA_MAP).is_file()), None)


def read_nextqa(
    csv_files: dict[str, str | Path], video_dir: str | Path, video_map: str | Path | None = None
) -> tuple[list[QAItem], Problems]:
    """Read NExT-QA CSVs, ``{"train": path, "val": path, "test": path}``.

    Args:
        csv_files: split -> CSV file.
        video_dir: the video folder (``NExTVideo``, or a flat folder of ``<video>.mp4``).
        video_map: the ``map_vid_vidorID.json`` file; None: looked for (see the module's docstring).

    Raises:
        FileNotFoundError: a CSV or the given map does not exist.
        ValueError: a CSV without NExT-QA's columns, or a map that is not one (naming the file).
    """
    video_dir = Path(video_dir)
    map_path = Path(video_map) if video_map is not None else _find_map(csv_files, video_dir)
    mapping, problems = read_video_map(map_path) if map_path is not None else ({}, [])
    finder = VideoFinder(video_dir, mapping)
    items = []
    needed = {"video", "question", "answer", "qid", "type", *(f"a{i}" for i in range(CANDIDATES))}
    for split, path in csv_files.items():
        split = parse_split(split, str(path))
        rows, bad = read_csv(Path(path), needed, "NExT-QA")
        problems += bad
        for line, row in rows:
            qid = f"{row['video']}_{row['qid']}"
            candidates = [row[f"a{i}"] for i in range(CANDIDATES)]
            try:
                answer = int(row["answer"])
            except ValueError:
                problems.append((qid, f"{path} line {line}: answer {row['answer']!r} is not an index"))
                continue
            if not 0 <= answer < CANDIDATES or not all(candidates) or not row["question"]:
                problems.append((qid, f"{path} line {line}: needs a question, 5 candidates and an answer in 0..4"))
                continue
            video = finder.find(row["video"])
            if video is None:
                problems.append((qid, f"{path} line {line}: {finder.why_missing(row['video'])}"))
                continue
            items.append(QAItem(qid, video, row["question"], candidates, answer, row["type"], split))
    return items, problems
