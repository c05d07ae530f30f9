"""Benchmark readers: each benchmark's annotation files, as its owners distribute them, into one item list.

One module per format: :mod:`~data_prep.datasets.msrvtt` (the official release and CLIP4Clip's, with the
9k-1kA / 7k-1kA / full protocols), :mod:`~data_prep.datasets.nextqa` (the CSVs, the video map and
numbered folders), :mod:`~data_prep.datasets.msvd`, :mod:`~data_prep.datasets.paragraphs` (DiDeMo and
ActivityNet Captions, paragraph-to-video), :mod:`~data_prep.datasets.jsonl` (the user's own videos). Every reader
returns ``(items, problems)``: a row that names a missing video, is malformed, or holds a byte that is not
UTF-8, becomes a problem ``(item id, message)`` naming the file and the line or entry, and the rest is read;
a missing annotation file, or one whose structure is unreadable, raises, naming it.
The formats, where to put the files and what to compare with: ``docs/datasets.md``.
"""

from .items import VIDEO_EXTENSIONS, CaptionItem, Problems, QAItem, VideoFinder
from .jsonl import read_jsonl_folder
from .msrvtt import MSRVTT_PROTOCOLS, read_msrvtt
from .msvd import read_msvd
from .nextqa import read_nextqa
from .paragraphs import read_activitynet, read_didemo

__all__ = [
    "MSRVTT_PROTOCOLS", "VIDEO_EXTENSIONS", "CaptionItem", "Problems", "QAItem", "VideoFinder", "read_activitynet",
    "read_didemo", "read_jsonl_folder", "read_msrvtt", "read_msvd", "read_nextqa",
]  # fmt: skip
