"""MSR-VTT text-video retrieval, in both of the forms it is distributed in, with the protocols papers use.

The official release (Xu et al., CVPR 2016)::

    train_val_videodatainfo.json   {"info", "videos": [{"id", "video_id": "video0", "category", "url",
    test_videodatainfo.json          "start time", "end time", "split": "train"|"validate"|"test"}],
                                    "sentences": [{"sen_id", "video_id", "caption"}]}
    TrainValVideo/video0.mp4 ...   6,513 train + 497 validate videos; TestVideo/: 2,990 test; 20 captions each

CLIP4Clip's distribution (``msrvtt_data.zip``; github.com/ArrowLuo/CLIP4Clip, the retrieval papers' split)::

    MSRVTT_data.json               the same "videos" and "sentences", for all 10,000 videos
    MSRVTT_train.9k.csv            column video_id: the 9,000 training videos of "9k-1kA"
    MSRVTT_train.7k.csv            the 7,010 of "7k-1kA" (the official train + validate)
    MSRVTT_JSFUSION_test.csv       key,vid_key,video_id,sentence: 1,000 test videos, one sentence each
    MSRVTT/videos/all/video0.mp4   the videos

Protocols (``protocol=``): "9k-1kA" (the default when CLIP4Clip's files are there: what papers compare),
"7k-1kA" (training on the 7k list), both tested on the 1,000 JSFusion videos with their one sentence each
(1,000 queries against 1,000 videos) and with no validation split of their own; "full" (the default for
the official files): the official train / validate / test splits, every caption of every video. A
training video keeps all its captions. Videos are found by id anywhere below ``video_dir``.
"""

from __future__ import annotations

from pathlib import Path

from .items import CaptionItem, Problems, VideoFinder, add_caption_item, parse_split, read_csv, read_json, undecodable

__all__ = ["MSRVTT_PROTOCOLS", "read_msrvtt"]

MSRVTT_PROTOCOLS = ("9k-1kA", "7k-1kA", "full")
OFFICIAL = ("train_val_videodatainfo.json", "test_videodatainfo.json")
CLIP4CLIP = {"data": "MSRVTT_data.json", "9k-1kA": "MSRVTT_train.9k.csv", "7k-1kA": "MSRVTT_train.7k.csv",
             "test": "MSRVTT_JSFUSION_test.csv"}  # fmt: skip


def _load(path: Path) -> tuple[list[dict], list[dict]]:
    """The "videos" and "sentences" of an MSR-VTT JSON file."""
    data = read_json(path)
    try:
        videos, sentences = data["videos"], data["sentences"]
        if not isinstance(videos, list) or not isinstance(sentences, list):
            raise TypeError("'videos' and 'sentences' must be lists")
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: not MSR-VTT style annotations ({err})") from None
    return videos, sentences


def _unreadable(path: Path, part: str, n: int, row: dict) -> tuple[str, str] | None:
    """The problem of row ``n`` of ``part`` ("videos", "sentences") when it holds a byte that is not UTF-8."""
    problem = undecodable(row)
    if problem is None:
        return None
    return f"{path.name} {part}[{n}]", f"{path}: {part}[{n}] (video {row.get('video_id')!r}): {problem}"


def _captions(path: Path, sentences: list[dict]) -> tuple[dict[str, list[str]], Problems]:
    """Each video's captions; a sentence that is not UTF-8 is a problem instead (its video keeps the others)."""
    captions: dict[str, list[str]] = {}
    problems = []
    for n, s in enumerate(sentences):
        if not isinstance(s, dict):
            continue
        problem = _unreadable(path, "sentences", n, s)
        if problem is not None:
            problems.append(problem)
        elif str(s.get("caption", "")).strip():
            captions.setdefault(str(s.get("video_id")), []).append(str(s["caption"]).strip())
    return captions, problems


def _official(files: list[Path], finder: VideoFinder) -> tuple[list[CaptionItem], Problems]:
    """Every video of the files with its own split and all its captions (the "full" protocol)."""
    items, problems = [], []
    for path in files:
        videos, sentences = _load(path)
        captions, bad = _captions(path, sentences)
        problems += bad
        for n, row in enumerate(videos):
            vid = str(row.get("video_id", "")) if isinstance(row, dict) else ""
            if not vid:
                problems.append((str(row)[:60], f"{path.name}: video entry without video_id"))
                continue
            problem = _unreadable(path, "videos", n, row)
            if problem is not None:
                problems.append(problem)
                continue
            try:
                split = parse_split(row.get("split", ""), f"video {vid!r}")
            except ValueError as err:
                problems.append((vid, str(err)))
                continue
            add_caption_item(items, problems, finder, vid, captions.get(vid, []), split)
    return items, problems


def _clip4clip(folder: Path, protocol: str, finder: VideoFinder) -> tuple[list[CaptionItem], Problems]:
    """A training list with every caption of its videos, and the JSFusion test videos with one sentence each."""
    data = folder / CLIP4CLIP["data"]
    captions, problems = _captions(data, _load(data)[1])
    items = []
    test, bad_test = read_csv(folder / CLIP4CLIP["test"], {"video_id", "sentence"}, "MSR-VTT")
    train, bad_train = read_csv(folder / CLIP4CLIP[protocol], {"video_id"}, "MSR-VTT")
    problems += bad_test + bad_train
    tested = {row["video_id"] for _, row in test}
    for _, row in train:
        if row["video_id"] in tested:
            problems.append((row["video_id"], f"{CLIP4CLIP[protocol]}: a test video of the 1kA split"))
        else:
            add_caption_item(items, problems, finder, row["video_id"], captions.get(row["video_id"], []), "train")
    seen: set[str] = set()
    for line, row in test:
        vid = row["video_id"]
        if vid in seen:
            problems.append((f"{vid} ({CLIP4CLIP['test']} line {line})", f"video {vid!r} is listed twice"))
            continue
        seen.add(vid)
        add_caption_item(items, problems, finder, vid, [row["sentence"]] if row["sentence"] else [], "test")
    return items, problems


def read_msrvtt(
    annotations: str | Path, video_dir: str | Path, protocol: str | None = None
) -> tuple[list[CaptionItem], Problems]:
    """Read MSR-VTT: one caption JSON file, or a folder holding the official files or CLIP4Clip's.

    Args:
        annotations: a JSON file (its own splits), or the folder of the official release or of CLIP4Clip's
            ``msrvtt_data``.
        video_dir: where the videos are (found by id anywhere below it).
        protocol: one of :data:`MSRVTT_PROTOCOLS`; None: "9k-1kA" when CLIP4Clip's files are in the folder,
            else "full".

    Raises:
        FileNotFoundError: an annotation file the protocol needs is missing (all of them named).
        ValueError: an unknown protocol, or a file that is not what it should be (naming it).
    """
    annotations = Path(annotations)
    finder = VideoFinder(video_dir)
    if protocol is not None and protocol not in MSRVTT_PROTOCOLS:
        raise ValueError(f"MSR-VTT protocol must be one of {MSRVTT_PROTOCOLS}, got {protocol!r}")
    if not annotations.exists():
        raise FileNotFoundError(f"annotation file {annotations} does not exist (an MSR-VTT JSON file or folder)")
    if annotations.is_file():
        if protocol not in (None, "full"):
            raise ValueError(f"protocol {protocol!r} reads CLIP4Clip's folder of files, not one file ({annotations})")
        return _official([annotations], finder)
    has_clip4clip = (annotations / CLIP4CLIP["data"]).is_file()
    protocol = protocol or ("9k-1kA" if has_clip4clip else "full")
    if protocol == "full":
        files = [annotations / name for name in OFFICIAL if (annotations / name).is_file()]
        if not files and has_clip4clip:
            files = [annotations / CLIP4CLIP["data"]]  # the same videos, with their official splits
        if not files:
            raise FileNotFoundError(f"{annotations}: no {' or '.join(OFFICIAL)} (MSR-VTT's official annotation files)")
        return _official(files, finder)
    missing = [name for name in (CLIP4CLIP["data"], CLIP4CLIP[protocol], CLIP4CLIP["test"])
               if not (annotations / name).is_file()]  # fmt: skip
    if missing:
        raise FileNotFoundError(
            f"{annotations}: protocol {protocol} needs {', '.join(missing)} (CLIP4Clip's msrvtt_data)"
        )
    return _clip4clip(annotations, protocol, finder)
