"""Does a QA model read the video? Its accuracy when each question is given another video's features.

Every question is scored twice: as prepared, and with its video leaves' features replaced by those of another
video whose video subtree has the same shape (same clips, frames and patches, so the question's tree is
unchanged and only what the video shows differs; partners are taken in turn among the other videos of each
shape). A model that reads the video falls towards chance (1 / candidates) with the other video; one that
answers from the text keeps its accuracy.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import torch

from data_prep.schema import MODALITIES, Sample

from .batches import collate
from .qa import QAModule

__all__ = ["other_video_accuracy", "swapped_videos", "video_shape"]


def video_shape(sample: Sample) -> bytes:
    """What must match for two samples to trade video features: the video subtree's parents and kinds."""
    h = sample.hierarchy
    video = h.subtree(h.keyed_children(0)["video"])
    return video._np["parent"].tobytes() + video._np["kind"].tobytes()


def swapped_videos(samples: Sequence[Sample]) -> list[tuple[Sample, Sample]]:
    """(a question's sample, the same with another video's features) for each sample that has a partner
    (a sample whose video is the only one of its shape has none)."""
    groups = collections.defaultdict(list)
    for s in samples:
        groups[video_shape(s)].append(s)
    pairs = []
    video = MODALITIES.index("video")
    for group in groups.values():
        videos = sorted({_video_id(s) for s in group})
        if len(videos) < 2:
            continue
        by_video = {v: [s for s in group if _video_id(s) == v] for v in videos}
        for i, v in enumerate(videos):
            donor = by_video[videos[(i + 1) % len(videos)]][0]  # the next video of the same shape
            for s in by_video[v]:
                if int((s.leaf_modality == video).sum()) != len(donor.features["video"]):
                    raise AssertionError(f"sample {s.id!r}: its partner {donor.id!r} has another number of patches")
                features = {**s.features, "video": donor.features["video"]}
                pairs.append((s, Sample(s.id, s.hierarchy, features, s.leaf_modality, s.dropped, s.meta)))
    return pairs


@torch.no_grad()
def _correct(model: QAModule, samples: Sequence[Sample], batch_size: int) -> list[bool]:
    out = []
    for at in range(0, len(samples), batch_size):
        batch = collate(samples[at : at + batch_size]).to(model.device)
        out += (model(batch).argmax(-1) == model.answers(batch)).tolist()
    return out


def other_video_accuracy(model: QAModule, samples: Sequence[Sample], batch_size: int = 32) -> list[dict]:
    """Rows (all questions first, then one per question type) of ``questions``, ``accuracy`` with the own
    video, ``accuracy_other_video`` and ``chance``, over the samples that have a partner. The model is put in
    eval mode."""
    model.eval()
    pairs = swapped_videos(samples)
    if not pairs:
        raise ValueError("no two videos of the same tree shape: the probe has nothing to swap")
    own = _correct(model, [p[0] for p in pairs], batch_size)
    other = _correct(model, [p[1] for p in pairs], batch_size)
    chance = [1 / _candidates(p[0]) for p in pairs]
    types = [p[0].meta.get("type", "") for p in pairs]
    rows = []
    for kind in [None, *sorted(set(types))]:
        keep = [i for i, t in enumerate(types) if kind is None or t == kind]
        rows.append(
            {
                "type": kind or "all",
                "questions": len(keep),
                "accuracy": sum(own[i] for i in keep) / len(keep),
                "accuracy_other_video": sum(other[i] for i in keep) / len(keep),
                "chance": sum(chance[i] for i in keep) / len(keep),
            }
        )
    return rows


def _video_id(sample: Sample) -> str:
    """The sample's video (questions of one video never trade with each other); a sample without a
    ``video_id`` is a video of its own."""
    return str(sample.meta.get("video_id", sample.id))


def _candidates(sample: Sample) -> int:
    """How many candidate answers the sample's tree holds."""
    return sum(key.startswith("answer_") for key in sample.hierarchy.keyed_children(0))
