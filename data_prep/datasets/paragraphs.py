"""Paragraph-to-video retrieval: DiDeMo and ActivityNet Captions, as CLIP4Clip's loaders read them
(github.com/ArrowLuo/CLIP4Clip, ``dataloaders/dataloader_{didemo,activitynet}_retrieval.py``). Each video's
descriptions are joined into one paragraph, its one caption.

DiDeMo (LisaAnne/LocalizingMoments; the lists from collaborative-experts)::

    didemo/{train,val,test}_data.json    [{"annotation_id", "description", "dl_link", "num_segments",
                                           "times", "video": "<file name with its extension>"}, ...]
    didemo/{train,val,test}_list.txt     the videos of each split, by file name
    videos/35034348999@N01_6060447507_dc1a90b8ef.mov (or .mov.mp4, as the download script saves it)

ActivityNet Captions (its ``captions.zip``)::

    activitynet/train.json, val_1.json   {"v_QOlSCBRmfWY": {"duration", "timestamps", "sentences"}, ...}
    activitynet/train_ids.json, val_ids.json   ["v_QOlSCBRmfWY", ...]
    videos/QOlSCBRmfWY.mp4                the id without its "v_" (as CLIP4Clip finds them), or with it

ActivityNet's ``val_1`` is the test split (CLIP4Clip and the papers): there is no validation split.
"""

from __future__ import annotations

from pathlib import Path

from .items import CaptionItem, Problems, VideoFinder, add_caption_item, read_id_list, read_json, undecodable

__all__ = ["read_activitynet", "read_didemo"]


def _paragraph(sentences: list) -> str:
    return " ".join(" ".join(str(s).split()) for s in sentences if str(s).strip())


def read_didemo(annotations: str | Path, video_dir: str | Path) -> tuple[list[CaptionItem], Problems]:
    """Read DiDeMo's ``{split}_data.json`` and ``{split}_list.txt`` files (train, val, test).

    Raises:
        FileNotFoundError: a file is missing (naming it).
        ValueError: a data file that is not a JSON list of descriptions (naming it).
    """
    folder, finder = Path(annotations), VideoFinder(video_dir)
    items, problems = [], []
    for split in ("train", "val", "test"):
        path = folder / f"{split}_data.json"
        data = read_json(path)
        if not isinstance(data, list) or not all(isinstance(d, dict) and "video" in d for d in data):
            raise ValueError(f"{path}: expected a list of {{'video', 'description', ...}}")
        descriptions: dict[str, list[str]] = {}
        for n, entry in enumerate(data):
            problem = undecodable(entry)
            if problem is None:
                descriptions.setdefault(str(entry["video"]), []).append(str(entry.get("description", "")))
            else:  # its video keeps the other descriptions
                problems.append((f"{path.name} [{n}]", f"{path}: [{n}] (video {entry['video']!r}): {problem}"))
        videos, bad = read_id_list(folder / f"{split}_list.txt")
        problems += bad
        for video in videos:
            paragraph = _paragraph(descriptions.get(video, []))
            add_caption_item(items, problems, finder, video, [paragraph] if paragraph else [], split,
                             missing="no descriptions")  # fmt: skip
    return items, problems


def read_activitynet(annotations: str | Path, video_dir: str | Path) -> tuple[list[CaptionItem], Problems]:
    """Read ActivityNet Captions: ``train.json`` with ``train_ids.json`` (train) and ``val_1.json`` with
    ``val_ids.json`` (test).

    Raises:
        FileNotFoundError: a file is missing (naming it).
        ValueError: a caption file that is not a JSON object of videos (naming it).
    """
    folder, finder = Path(annotations), VideoFinder(video_dir)
    items, problems = [], []
    for split, captions, ids in (("train", "train.json", "train_ids.json"), ("test", "val_1.json", "val_ids.json")):
        data, listed = read_json(folder / captions), read_json(folder / ids)
        if not isinstance(data, dict) or not isinstance(listed, list):
            raise ValueError(f"{folder}: expected {captions} to map video ids to captions and {ids} to list ids")
        bad = {vid: problem for vid, entry in data.items() if (problem := undecodable([vid, entry]))}
        problems += [(f"{captions} {vid!r}", f"{folder / captions}: video {vid!r}: {p}") for vid, p in bad.items()]
        for n, vid in enumerate(str(v) for v in listed):
            problem = undecodable(vid)
            if problem is not None:
                problems.append((f"{ids} [{n}]", f"{folder / ids}: [{n}] {vid!r}: {problem}"))
            if problem is not None or vid in bad or vid not in data:
                continue  # reported, or an id without captions in this file (CLIP4Clip keeps those in both)
            sentences = data[vid].get("sentences", []) if isinstance(data[vid], dict) else []
            bare = vid[2:] if vid.startswith("v_") else vid
            paragraph = _paragraph(sentences)
            add_caption_item(items, problems, finder, vid, [paragraph] if paragraph else [], split, names=(bare, vid),
                             missing="no descriptions")  # fmt: skip
    return items, problems
