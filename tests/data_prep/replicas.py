"""Tiny replicas of the real benchmark downloads: the owners' folder layout, file names, field names and
order, id styles and quirks, with real (small) videos, made by code.

Sources of each structure: MSR-VTT's official ``*_videodatainfo.json`` (keys "start time"/"end time" with a
space, "split" train/validate/test, 20 captions per video with a running "sen_id"); CLIP4Clip's
``msrvtt_data`` (ArrowLuo/CLIP4Clip, ``dataloaders/dataloader_msrvtt_retrieval.py``: ``MSRVTT_data.json``,
``MSRVTT_train.9k.csv`` and ``.7k.csv`` with column video_id, ``MSRVTT_JSFUSION_test.csv`` with
``key,vid_key,video_id,sentence``; videos in ``MSRVTT/videos/all``); NExT-QA (doc-doc/NExT-QA:
``{train,val,test}.csv`` with ``video,frame_count,width,height,question,answer,qid,type,a0..a4``,
``map_vid_vidorID.json`` mapping a video id to ``<4-digit folder>/<id>``, videos in ``NExTVideo/<folder>/``).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

from tests.data_prep.videos import scene_frames, write_video

MSRVTT_CAPTIONS = 20


def sample_video(folder: Path) -> Path:
    """One real 2 s H.264 video (two scenes) that the replicas copy under each of their ids."""
    path = folder / "sample.mp4"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        write_video(path, scene_frames((6, 6), 48, 64), fps=6)
    return path


def _copy(video: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(video, target)


def _msrvtt_json(ids: list[str], splits: list[str]) -> dict:
    videos = [
        {"category": i % 20, "url": f"https://www.youtube.com/watch?v=yt{i:04d}", "video_id": vid,
         "start time": 10.0 + i, "end time": 25.5 + i, "split": split, "id": int(vid[5:])}
        for i, (vid, split) in enumerate(zip(ids, splits))
    ]  # fmt: skip
    sentences = [
        {"caption": f"caption {c} of {vid} a person is cooking", "video_id": vid, "sen_id": n}
        for n, (vid, c) in enumerate((vid, c) for vid in ids for c in range(MSRVTT_CAPTIONS))
    ]
    return {"info": {"contributor": "replica", "data_created": "2016-04-01", "version": "1.0", "year": 2016,
                     "description": "MSR-VTT replica"}, "videos": videos, "sentences": sentences}  # fmt: skip


def msrvtt_official(root: Path, train: int = 4, validate: int = 2, test: int = 3) -> Path:
    """The official release: two JSON files, ``TrainValVideo/`` and ``TestVideo/``. Ids run on across splits
    (video0 .. video{n-1}), as in the real files."""
    video = sample_video(root / ".src")
    ids = [f"video{i}" for i in range(train + validate + test)]
    splits = ["train"] * train + ["validate"] * validate + ["test"] * test
    both = _msrvtt_json(ids, splits)
    for name, keep in (("train_val_videodatainfo.json", ("train", "validate")), ("test_videodatainfo.json", ("test",))):
        chosen = {v["video_id"] for v in both["videos"] if v["split"] in keep}
        part = {"info": both["info"], "videos": [v for v in both["videos"] if v["video_id"] in chosen],
                "sentences": [s for s in both["sentences"] if s["video_id"] in chosen]}  # fmt: skip
        (root / name).write_text(json.dumps(part), encoding="utf-8")
    for vid, split in zip(ids, splits):
        _copy(video, root / ("TestVideo" if split == "test" else "TrainValVideo") / f"{vid}.mp4")
    return root


def _csv(rows: list[list], header: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def msrvtt_clip4clip(root: Path, train_9k: int = 6, train_7k: int = 5, test: int = 3) -> tuple[Path, Path]:
    """CLIP4Clip's ``msrvtt_data/`` and the videos in ``MSRVTT/videos/all/``: the 9k list, the 7k list (a
    subset of it here), and the JSFusion test videos with one sentence each. Returns (annotations, videos)."""
    video = sample_video(root / ".src")
    total = train_9k + test
    ids = [f"video{i}" for i in range(total)]
    data = _msrvtt_json(ids, ["train"] * train_9k + ["test"] * test)
    folder = root / "msrvtt_data"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MSRVTT_data.json").write_text(json.dumps(data), encoding="utf-8")
    (folder / "MSRVTT_train.9k.csv").write_text(_csv([[v] for v in ids[:train_9k]], ["video_id"]))
    (folder / "MSRVTT_train.7k.csv").write_text(_csv([[v] for v in ids[:train_7k]], ["video_id"]))
    tested = ids[train_9k:]
    rows = [[f"ret{k}", f"msr{vid[5:]}", vid, f"the one test sentence of {vid}"] for k, vid in enumerate(tested)]
    (folder / "MSRVTT_JSFUSION_test.csv").write_text(_csv(rows, ["key", "vid_key", "video_id", "sentence"]))
    for vid in ids:
        _copy(video, root / "MSRVTT" / "videos" / "all" / f"{vid}.mp4")
    return folder, root / "MSRVTT" / "videos" / "all"


NEXTQA_HEADER = ["video", "frame_count", "width", "height", "question", "answer", "qid", "type",
                 "a0", "a1", "a2", "a3", "a4"]  # fmt: skip
NEXTQA_TYPES = ["CW", "CH", "TN", "TC", "TP", "DL", "DC", "DO"]


def nextqa(root: Path, videos: dict[str, int] | None = None) -> tuple[Path, Path]:
    """NExT-QA as distributed: ``nextqa/{train,val,test}.csv`` with ``map_vid_vidorID.json`` beside them, the
    videos in ``NExTVideo/<4-digit folder>/<id>.mp4``. Quirks kept: stray spaces around fields, a repeated
    candidate, non-ASCII text, integer-looking video ids. Returns (annotations folder, video folder)."""
    video = sample_video(root / ".src")
    videos = videos or {"train": 3, "val": 2, "test": 2}
    folder = root / "nextqa"
    folder.mkdir(parents=True, exist_ok=True)
    mapping, n = {}, 0
    for split, count in videos.items():
        rows = []
        for _ in range(count):
            vid = str(2909445186 + 1000 * n)
            mapping[vid] = f"{1000 + n % 3:04d}/{vid}"
            _copy(video, root / "NExTVideo" / f"{mapping[vid]}.mp4")
            for q, qtype in enumerate(NEXTQA_TYPES[(n % 2) * 4 : (n % 2) * 4 + 4]):
                candidates = ["the man", "the dog ", "the man", "a café owner", "nobody"]  # a repeated candidate
                rows.append([vid, 48, 64, 48, f" why did the man wave {q}? ", (n + q) % 5, q, qtype, *candidates])
            n += 1
        (folder / f"{split}.csv").write_text(_csv(rows, NEXTQA_HEADER), encoding="utf-8")
    (folder / "map_vid_vidorID.json").write_text(json.dumps(mapping), encoding="utf-8")
    return folder, root / "NExTVideo"


def msvd(root: Path, splits: dict[str, int] | None = None) -> tuple[Path, Path]:
    """CLIP4Clip's ``msvd_data/`` (``raw-captions.pkl``: id -> captions as token lists; the three list files)
    and ``YouTubeClips/<id>.avi`` (real AVI files, MPEG-4 in an AVI container). YouTube-style ids with
    dashes and underscores. Returns (annotations, videos)."""
    import pickle

    splits = splits or {"train": 3, "val": 1, "test": 2}
    folder, clips = root / "msvd_data", root / "YouTubeClips"
    folder.mkdir(parents=True, exist_ok=True)
    clips.mkdir(parents=True, exist_ok=True)
    avi = clips.parent / ".src" / "sample.avi"
    if not avi.exists():
        avi.parent.mkdir(parents=True, exist_ok=True)
        write_video(avi, scene_frames((6, 6), 48, 64), fps=6, codec="mpeg4")
    captions, n = {}, 0
    for split, count in splits.items():
        ids = [f"-4wsuPCjD_{n + k}_{5 * (n + k)}_{5 * (n + k) + 10}" for k in range(count)]
        n += count
        (folder / f"{split}_list.txt").write_text("".join(f"{vid}\n" for vid in ids))
        for k, vid in enumerate(ids):
            shutil.copyfile(avi, clips / f"{vid}.avi")
            captions[vid] = [["a", "man", "is", "slicing", "a", "tomato", str(c)] for c in range(3 + k % 3)]
    (folder / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    return folder, clips


def didemo(root: Path, splits: dict[str, int] | None = None) -> tuple[Path, Path]:
    """DiDeMo as CLIP4Clip reads it: ``{split}_data.json`` (LocalizingMoments' entries, several descriptions
    per video, 5-second chunk times) and ``{split}_list.txt`` of file names with their original extensions;
    the videos under those names, one saved as the download script does (``<name>.mp4`` appended)."""
    video = sample_video(root / ".src")
    splits = splits or {"train": 3, "val": 1, "test": 2}
    folder, videos = root / "didemo", root / "videos"
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for split, count in splits.items():
        names, data = [], []
        for _ in range(count):
            name = f"{1000 + n}@N0{n % 3}_{6060447507 + n}_dc1a90b8ef.{('mov', 'avi', 'mp4')[n % 3]}"
            names.append(name)
            _copy(video, videos / (f"{name}.mp4" if n == 1 else name))
            for d in range(4):
                data.append({"annotation_id": 4 * n + d, "description": f"the camera pans left {d}",
                             "dl_link": "https://example.invalid/video", "num_segments": 6,
                             "times": [[d, d], [d, d + 1], [d, d], [d, d]], "video": name})  # fmt: skip
            n += 1
        (folder / f"{split}_list.txt").write_text("".join(f"{name}\n" for name in names))
        (folder / f"{split}_data.json").write_text(json.dumps(data))
    return folder, videos


def activitynet(root: Path, train: int = 3, test: int = 2) -> tuple[Path, Path]:
    """ActivityNet Captions' ``captions.zip`` files (``train.json``, ``val_1.json``: ``"v_<id>"`` -> duration,
    timestamps, sentences that start with a space; the id lists, one id without captions) and the videos
    named by the id without ``v_``."""
    video = sample_video(root / ".src")
    folder, videos = root / "activitynet", root / "videos"
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for captions, ids, count in (("train.json", "train_ids.json", train), ("val_1.json", "val_ids.json", test)):
        data = {}
        for _ in range(count):
            vid = f"v_QOlSCBRm{n:03d}"
            _copy(video, videos / f"{vid[2:]}.mp4")
            data[vid] = {"duration": 82.73, "timestamps": [[0.28, 55.15], [13.79, 54.32]],
                         "sentences": [f"A young woman is seen standing {n}. ", " She then dances."]}  # fmt: skip
            n += 1
        (folder / captions).write_text(json.dumps(data))
        (folder / ids).write_text(json.dumps([*data, "v_noCaptions"]))
    return folder, videos
