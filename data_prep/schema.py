"""The sample schema: what one prepared sample holds, and the names every layer agrees on.

A sample is one tree (root = the sample) whose root children are named slots (:data:`ROOT_KEYS`):

    sample                      named keys: "video", "transcript", "captions", "question", "answer_0", ...
    ├── video ── clip ── frame ── patch   ◀ leaf of modality "video"
    └── <text key> ── section ── sentence ── token   ◀ leaf of modality "text"

Each leaf has a modality (:data:`MODALITIES`; its id is its position there), and each modality its own
feature width. The preparation (:mod:`data_prep.assemble`), the shards (:mod:`data_prep.shards`), the
training batches and the model's input adapters all read these names from here, so they cannot
disagree. The full layout on disk is described in ``docs/data.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mmhsa import Hierarchy

__all__ = [
    "DEFAULT_FEATURE_DIMS",
    "MAX_ANSWERS",
    "MODALITIES",
    "ROOT_KEYS",
    "Sample",
    "answer_key",
    "feature_dims",
    "modality_id",
]

# Leaf modalities, in id order (``Sample.leaf_modality`` holds the index into this tuple).
MODALITIES = ("video", "text")

# Candidate answers a multiple-choice sample can hold ("answer_0" .. "answer_9").
MAX_ANSWERS = 10

# Named slots of a sample's root, in the order the position encoders number them (the key vocabulary).
ROOT_KEYS = ("video", "transcript", "captions", "question", *(f"answer_{k}" for k in range(MAX_ANSWERS)))

# Feature widths of the default encoders (EfficientNet-Lite0 patches, MiniLM-L6 tokens): what a prepared
# directory whose manifest does not record its widths (prepared before they were recorded) was made with.
DEFAULT_FEATURE_DIMS = {"video": 1280, "text": 384}


def modality_id(name: str) -> int:
    """The id of a modality ("video" -> 0, "text" -> 1)."""
    if name not in MODALITIES:
        raise ValueError(f"unknown modality {name!r}; expected one of {MODALITIES}")
    return MODALITIES.index(name)


def answer_key(k: int) -> str:
    """The root key of candidate answer ``k``."""
    if not 0 <= k < MAX_ANSWERS:
        raise ValueError(f"candidate answer {k}: a sample holds at most {MAX_ANSWERS} (0..{MAX_ANSWERS - 1})")
    return f"answer_{k}"


def feature_dims(manifest: dict | None) -> dict[str, int]:
    """Feature width per modality of a prepared directory, from its manifest (``feature_dims``), else the
    default encoders' widths."""
    recorded = (manifest or {}).get("feature_dims") or {}
    return {m: int(recorded.get(m, DEFAULT_FEATURE_DIMS[m])) for m in MODALITIES}


@dataclass
class Sample:
    """A sample's hierarchy and its leaf features, leaves in hierarchy order.

    Attributes:
        id: the sample's id.
        hierarchy: one tree (root = the sample).
        features: per modality, [N_m, C_m] fp16 rows of that modality's leaves in leaf order.
        leaf_modality: [N] index into :data:`MODALITIES` for each leaf.
        dropped: what the limits removed, e.g. {"clips": 3, "tokens": 10}.
        meta: free-form metadata (question type, answer index, source path, ...).
    """

    id: str
    hierarchy: Hierarchy
    features: dict[str, torch.Tensor]
    leaf_modality: torch.Tensor
    dropped: dict[str, int] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
