"""One cross-modal hierarchy per sample: video (clips, frames, patches) and texts (sections, sentences,
tokens) under one root, with the position metadata each family's domain needs.

    sample                      named keys: "video", "transcript", "question", "answer_0", ...
    ├── video                   clips at their start time (s)
    │   └── clip                frames at their timestamp (s)
    │       └── frame           patches on the 2-D grid (row, col)
    │           └── patch  ◀ leaf (modality "video")
    └── <text key>              sections by index (or time, for subtitle sections)
        └── section             sentences by index
            └── sentence        tokens by index
                └── token  ◀ leaf (modality "text")

Limits (clips per video, frames per clip, sentences per section, tokens per sentence) are applied by
deterministic even subsampling and counted in :attr:`~data_prep.schema.Sample.dropped`, never silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmhsa import Hierarchy

from .schema import Sample, modality_id

__all__ = ["ClipLeaves", "Limits", "TextLeaves", "assemble", "even_subsample"]


@dataclass
class ClipLeaves:
    """One clip's encoded frames.

    Attributes:
        start, end: clip time span in seconds.
        frame_times: [F] timestamps (s) of the sampled frames.
        patches: [F, gh, gw, C] fp16 patch features.
        frame_indices: the sampled frames' indices in the video, when known (to show them again).
    """

    start: float
    end: float
    frame_times: list[float]
    patches: torch.Tensor
    frame_indices: list[int] | None = None


@dataclass
class TextLeaves:
    """One text's encoded tokens: sections -> sentences -> [T, C] fp16 token features.

    Attributes:
        sections: per section, per sentence, token features [T, C].
        section_times: optional (start, end) seconds per section (subtitles aligned to clips).
    """

    sections: list[list[torch.Tensor]]
    section_times: list[tuple[float, float]] | None = None


@dataclass(frozen=True)
class Limits:
    """Largest counts kept per sample; beyond them items are evenly subsampled (and counted)."""

    max_clips: int = 16
    max_frames: int = 8
    max_sections: int = 16
    max_sentences: int = 16
    max_tokens: int = 64

    def __post_init__(self):
        for name in ("max_clips", "max_frames", "max_sections", "max_sentences", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be >= 1, got {getattr(self, name)}")


def even_subsample(count: int, limit: int) -> list[int]:
    """Indices of at most ``limit`` of ``count`` items, evenly spread, first and last kept."""
    if count <= limit:
        return list(range(count))
    if limit == 1:
        return [count // 2]
    return np.unique(np.round(np.linspace(0, count - 1, limit)).astype(int)).tolist()


class _TreeBuilder:
    """Appends nodes in depth-first pre-order (a parent before its children)."""

    def __init__(self):
        self.parent: list[int] = []
        self.kind: list[str] = []
        self.domain: list[str] = []
        self.coord: list[tuple[float, float]] = []

    def add(self, parent: int, kind: str, domain: str, coord=(0.0, 0.0)) -> int:
        self.parent.append(parent)
        self.kind.append(kind)
        self.domain.append(domain)
        self.coord.append((float(coord[0]), float(coord[1])))
        return len(self.parent) - 1


def _add_video(b: _TreeBuilder, root: int, clips: list[ClipLeaves], limits: Limits, dropped: dict, rows: list):
    video = b.add(root, "video", "key")
    keep = even_subsample(len(clips), limits.max_clips)
    dropped["clips"] = dropped.get("clips", 0) + len(clips) - len(keep)
    for c in keep:
        clip = clips[c]
        if clip.patches.dim() != 4 or clip.patches.shape[0] != len(clip.frame_times) or clip.patches.shape[0] == 0:
            raise ValueError(
                f"clip {c}: patches must be [F, gh, gw, C] with F = {len(clip.frame_times)} frame times "
                f"(F >= 1), got {list(clip.patches.shape)}"
            )
        node = b.add(video, "clip", "time", (clip.start, 0))
        frames = even_subsample(len(clip.frame_times), limits.max_frames)
        dropped["frames"] = dropped.get("frames", 0) + len(clip.frame_times) - len(frames)
        for f in frames:
            frame = b.add(node, "frame", "time", (clip.frame_times[f], 0))
            gh, gw = clip.patches.shape[1:3]
            for r in range(gh):
                for col in range(gw):
                    b.add(frame, "patch", "grid", (r, col))
            rows.append(clip.patches[f].reshape(gh * gw, -1))


def _add_text(b: _TreeBuilder, root: int, key: str, text: TextLeaves, limits: Limits, dropped: dict, rows: list):
    node = b.add(root, key, "key")
    # Sections and sentences without tokens have no leaves: they would be childless nodes.
    spoken = [s for s, section in enumerate(text.sections) if any(len(x) for x in section)]
    keep = [spoken[i] for i in even_subsample(len(spoken), limits.max_sections)]
    unit = "captions" if key == "captions" else "sections"  # a caption is a section: say which were cut
    dropped[unit] = dropped.get(unit, 0) + len(spoken) - len(keep)
    for s in keep:
        timed = text.section_times is not None
        coord = (text.section_times[s][0], 0) if timed else (s, 0)
        section = b.add(node, "section", "time" if timed else "index", coord)
        sentences = [x for x in text.sections[s] if len(x)]
        chosen = even_subsample(len(sentences), limits.max_sentences)
        dropped["sentences"] = dropped.get("sentences", 0) + len(sentences) - len(chosen)
        for i, si in enumerate(chosen):
            sentence = b.add(section, "sentence", "index", (i, 0))
            tokens = sentences[si]
            picked = even_subsample(len(tokens), limits.max_tokens)
            dropped["tokens"] = dropped.get("tokens", 0) + len(tokens) - len(picked)
            for t in range(len(picked)):
                b.add(sentence, "token", "index", (t, 0))
            rows.append(tokens[picked])


def assemble(
    sample_id: str,
    *,
    video: list[ClipLeaves] | None = None,
    texts: dict[str, TextLeaves] | None = None,
    limits: Limits = Limits(),
    meta: dict | None = None,
) -> Sample:
    """Build the sample's hierarchy: a root with the video (if any) and each named text, in order.

    Args:
        sample_id: the sample's id (named in errors).
        video: the clips (at least one) with their encoded frames.
        texts: named texts ("transcript", "captions", "question", "answer_0", ...) with token features.
        limits: subsampling limits.

    Raises:
        ValueError: naming the sample and the problem (nothing to assemble, a text with no tokens,
            malformed features).
    """
    texts = dict(texts or {})
    if not video and not texts:
        raise ValueError(f"sample {sample_id!r}: neither video clips nor texts to assemble")
    b = _TreeBuilder()
    root = b.add(-1, "sample", "set")
    dropped: dict[str, int] = {}
    video_rows: list[torch.Tensor] = []
    text_rows: list[torch.Tensor] = []
    modality: list[int] = []
    keys: list[str] = []
    try:
        if video:
            start = len(b.parent)
            _add_video(b, root, video, limits, dropped, video_rows)
            modality += [modality_id("video")] * sum(k == "patch" for k in b.kind[start:])
            keys.append("video")
        for key, text in texts.items():
            if not any(len(x) for section in text.sections for x in section):
                raise ValueError(f"text {key!r} has no tokens")
            start = len(b.parent)
            _add_text(b, root, key, text, limits, dropped, text_rows)
            modality += [modality_id("text")] * sum(k == "token" for k in b.kind[start:])
            keys.append(key)
    except ValueError as err:
        raise ValueError(f"sample {sample_id!r}: {err}") from None
    # Children of the root sit in the key domain; their coordinate is the key's id.
    coord = [list(c) for c in b.coord]
    children = [i for i, p in enumerate(b.parent) if p == root]
    for i, key in zip(children, keys):
        coord[i][0] = keys.index(key)
    hierarchy = Hierarchy.from_parents(b.parent, kinds=b.kind, domains=b.domain, coords=coord, key_names=keys)
    features = {}
    if video_rows:
        features["video"] = torch.cat(video_rows).to(torch.float16)
    if text_rows:
        features["text"] = torch.cat(text_rows).to(torch.float16)
    leaf_modality = torch.tensor(modality, dtype=torch.long)
    if len(leaf_modality) != hierarchy.num_leaves:
        raise AssertionError(
            f"sample {sample_id!r}: {len(leaf_modality)} leaf modalities for {hierarchy.num_leaves} leaves"
        )
    return Sample(sample_id, hierarchy, features, leaf_modality, dropped, dict(meta or {}))
