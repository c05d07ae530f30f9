"""MSVD text-video retrieval, as CLIP4Clip's loader reads it (github.com/ArrowLuo/CLIP4Clip,
``dataloaders/dataloader_msvd_retrieval.py``; the lists come from collaborative-experts)::

    msvd_data/raw-captions.pkl                 {"-4wsuPCjDBc_5_15": [["a", "man", "is", ...], ...], ...}
    msvd_data/train_list.txt, val_list.txt, test_list.txt   one video id per line (1,200 / 100 / 670)
    YouTubeClips/-4wsuPCjDBc_5_15.avi          the videos

A caption is its tokens joined by spaces; every caption of a video is kept (each is a query in the test).
The pickle is read with an unpickler that admits plain data only: a crafted file cannot run code.
"""

from __future__ import annotations

from pathlib import Path

from .items import CaptionItem, Problems, VideoFinder, add_caption_item, read_id_list, read_plain_pickle

__all__ = ["read_msvd"]

SPLIT_FILES = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}


def read_msvd(annotations: str | Path, video_dir: str | Path) -> tuple[list[CaptionItem], Problems]:
    """Read MSVD from CLIP4Clip's ``msvd_data`` folder; videos found by id below ``video_dir``.

    Raises:
        FileNotFoundError: a file of the folder is missing (naming it).
        ValueError: ``raw-captions.pkl`` is not a plain dict of caption lists.
    """
    folder, finder = Path(annotations), VideoFinder(video_dir)
    raw = read_plain_pickle(folder / "raw-captions.pkl")
    if not isinstance(raw, dict):
        raise ValueError(f"{folder / 'raw-captions.pkl'}: expected a dict of video id -> captions")
    items, problems = [], []
    for split, name in SPLIT_FILES.items():
        ids, bad = read_id_list(folder / name)
        problems += bad
        for vid in ids:
            captions = []
            for caption in raw.get(vid, []):
                words = caption if isinstance(caption, (list, tuple)) else str(caption).split()
                text = " ".join(str(w) for w in words).strip()
                if text:
                    captions.append(text)
            add_caption_item(items, problems, finder, vid, captions, split, missing="no captions in raw-captions.pkl")
    return items, problems
