"""Trained models on new inputs: checkpoints with their featurization, and the trees they consume.

A checkpoint written by training carries how its data was prepared (frame encoder, clip splitting,
frame sampling, text encoder, limits; see :meth:`pipelines.data.ShardDataModule.state_dict`), so new
videos and texts go through exactly the same featurization (:mod:`data_prep.featurize`). Older
checkpoints, or a different choice, take it from a prepared data directory or a data recipe
(``prepared=``). A model's **version** is its class and the hash of its checkpoint file: an index
records it, and searching that index with another model fails with both named.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import torch

from data_prep.assemble import ClipLeaves, Limits, TextLeaves, assemble
from data_prep.featurize import Stages, TextFeaturizer, VideoConfig, VideoFeaturizer
from data_prep.shards import file_sha256
from data_prep.text import split_sentences
from mmhsa.encoders.frames import PatchEncoderConfig
from mmhsa.encoders.text import TextEncoderConfig
from mmhsa.nn import pool_nodes

from .data import Trees, sample_part
from .model import FusionModule

__all__ = ["DEFAULT_CHECKPOINTS", "Featurization", "Model", "embed_videos", "load_model", "text_trees", "video_trees"]

# Where `make train` leaves the HSA models that inference uses when no checkpoint is given.
DEFAULT_CHECKPOINTS = {task: Path(f"runs/default/{task}.ckpt") for task in ("retrieval", "qa", "rerank")}


@dataclass(frozen=True)
class Featurization:
    """How inputs become leaves: the preparation settings a model was trained with."""

    video: VideoConfig
    frames: PatchEncoderConfig
    text: TextEncoderConfig
    limits: Limits

    @classmethod
    def from_config(cls, config: dict) -> "Featurization":
        """From a prepared manifest's ``config`` (or a data recipe): keys video, frames, text, limits."""
        from jsonargparse import ArgumentParser

        parser = ArgumentParser()  # builds the nested dataclasses from plain dicts, checking every field
        parser.add_class_arguments(cls, nested_key=None)
        return cls(**parser.instantiate_classes(parser.parse_object({k: config.get(k, {}) for k in
                                                                     ("video", "frames", "text", "limits")})))

    @classmethod
    def from_prepared(cls, source: str | Path) -> "Featurization":
        """From a prepared task directory (its manifest.json) or a data recipe YAML (configs/data/*.yaml)."""
        source = Path(source)
        if source.is_dir():
            manifest = source / "manifest.json"
            if not manifest.is_file():
                raise FileNotFoundError(f"{source}: not a prepared task directory (no manifest.json)")
            return cls.from_config(json.loads(manifest.read_text(encoding="utf-8"))["config"])
        if not source.is_file():
            raise FileNotFoundError(f"{source}: no such prepared directory or data recipe")
        import yaml

        return cls.from_config(yaml.safe_load(source.read_text(encoding="utf-8")) or {})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Model:
    """A task module ready for inference, with the featurization it expects.

    Attributes:
        module: the task module (eval mode).
        featurization: how its inputs are prepared.
        path: the checkpoint file.
        version: "<ClassName>:<first 16 hex digits of the checkpoint's sha256>".
    """

    module: FusionModule
    featurization: Featurization
    path: Path
    version: str

    @cached_property
    def stages(self) -> Stages:
        return Stages()

    @cached_property
    def videos(self) -> VideoFeaturizer:
        """The video featurizer on the module's device (built on first use: search needs only text)."""
        return VideoFeaturizer(self.featurization.video, self.featurization.frames, self.module.device, self.stages)

    @cached_property
    def texts(self) -> TextFeaturizer:
        return TextFeaturizer(self.featurization.text, self.module.device, self.stages)


def file_version(path: Path, class_name: str) -> str:
    return f"{class_name}:{file_sha256(path)[:16]}"


def load_model(checkpoint: str | Path | None, task: str, *, prepared: str | Path | None = None,
               device: str | torch.device = "cpu") -> Model:
    """Load a trained task module for inference.

    Args:
        checkpoint: a Lightning checkpoint of that task; None: ``DEFAULT_CHECKPOINTS[task]`` (``make train``).
        task: "retrieval" (:class:`~pipelines.retrieval.RetrievalModule`), "qa" (:class:`~pipelines.qa.QAModule`)
            or "rerank" (:class:`~pipelines.rerank.RerankModule`).
        prepared: where the featurization comes from when the checkpoint does not carry it (or to override
            it): a prepared task directory or a data recipe YAML.

    Raises:
        FileNotFoundError: no such checkpoint (naming it, and ``make train`` for the default).
        ValueError: not a checkpoint, a checkpoint of another task, or no featurization known.
    """
    from .qa import QAModule
    from .rerank import RerankModule
    from .retrieval import RetrievalModule

    classes = {"retrieval": RetrievalModule, "qa": QAModule, "rerank": RerankModule}
    if task not in classes:
        raise ValueError(f"task must be one of {sorted(classes)}, got {task!r}")
    if checkpoint is None:
        checkpoint = DEFAULT_CHECKPOINTS[task]
        if not checkpoint.is_file():
            raise FileNotFoundError(f"no checkpoint given and the default {checkpoint} does not exist: run `make train` "
                                    f"(or pass --ckpt PATH to a trained {task} checkpoint)")
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        hparams, weights = dict(state["hyper_parameters"]), state["state_dict"]
    except Exception as err:  # a truncated or foreign file fails in many ways inside torch.load
        raise ValueError(f"checkpoint {path}: not a readable mmhsa checkpoint ({type(err).__name__}: {err})") from None
    cls = classes[task]
    class_path = state.get("mmhsa_class") or hparams.get("_class_path", "")
    if not class_path.endswith(f".{cls.__name__}"):
        raise ValueError(f"checkpoint {path} is a {class_path.rsplit('.', 1)[-1] or 'unknown'} model; this command "
                         f"needs a {cls.__name__} ({task}) checkpoint")
    hparams = {k: v for k, v in hparams.items() if not k.startswith("_")}
    hparams["init_from"] = None  # the weights below are the trained ones
    hparams.pop("dual_encoder", None)  # a re-ranker's training-time helper, not needed to score pairs
    module = cls(**hparams)
    try:
        module.load_state_dict(weights)
    except RuntimeError as err:  # e.g. a checkpoint from an earlier mmhsa whose layers had other shapes
        first = str(err).split("\n\t", 2)[1] if "\n\t" in str(err) else str(err)
        raise ValueError(f"checkpoint {path}: its weights do not fit this version of {cls.__name__} ({first}); "
                         "it was probably saved by an earlier mmhsa: retrain it (make train)") from None
    module.eval().to(device)
    if prepared is not None:
        featurization = Featurization.from_prepared(prepared)
    else:
        carried = next((v["prepared"] for v in state.values() if isinstance(v, dict) and "prepared" in v), None)
        if carried is None:
            raise ValueError(f"checkpoint {path} does not record how its data was prepared; pass the prepared "
                             "directory or data recipe it was trained on (--prepared data/prepared/synthetic/"
                             "retrieval or configs/data/synthetic.yaml)")
        featurization = Featurization.from_config(carried["config"])
    return Model(module, featurization, path, file_version(path, cls.__name__))


def text_trees(model: Model, texts: list[str]) -> tuple[Trees, list[dict[str, int]]]:
    """Texts -> one tree each (sentences -> tokens), as captions were in training; and per text what the
    limits dropped (e.g. ``{"tokens": 12}`` for a very long text; empty when nothing was).

    Raises:
        ValueError: naming the text (by position) that holds no words.
    """
    sections = []
    for i, text in enumerate(texts):
        sentences = split_sentences(text)
        if not sentences:
            raise ValueError(f"text {i} ({text[:40]!r}) is empty: nothing to encode")
        sections.append(sentences)
    leaves = model.texts(sections)
    parts, dropped = [], []
    for i, section in enumerate(leaves.sections):
        sample = assemble(f"text {i}", texts={"captions": TextLeaves([section])}, limits=model.featurization.limits)
        caption = sample.hierarchy.children(sample.hierarchy.keyed_children(0)["captions"])[0]
        parts.append(sample_part(sample, caption))
        dropped.append({k: n for k, n in sample.dropped.items() if n})
    return Trees.batch(parts), dropped


def video_trees(clips: list[ClipLeaves], limits: Limits) -> tuple[Trees, list[tuple[Trees, int]]]:
    """One video's trees: the whole video (clips evenly subsampled to ``limits.max_clips``, as in training),
    and windows of at most ``max_clips`` consecutive clips with the index of their first clip (each
    clip's embedding is read in the context of its neighbours, however long the video).
    """
    def tree(part: list[ClipLeaves]) -> Trees:
        sample = assemble("video", video=part, limits=limits)
        return sample_part(sample, sample.hierarchy.keyed_children(0)["video"])

    size = limits.max_clips
    windows = [(tree(clips[at:at + size]), at) for at in range(0, len(clips), size)]
    whole = windows[0][0] if len(clips) <= size else tree(clips)  # assemble subsamples evenly
    return whole, windows


@torch.no_grad()
def embed_videos(model: Model, videos: list[list[ClipLeaves]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per video: its embedding [E] and its clips' embeddings [C, E] (unit vectors, float32).

    All trees of all videos go through the encoder as one forest.
    """
    module = model.module
    limits = model.featurization.limits
    forests, plan = [], []
    for clips in videos:
        whole, windows = video_trees(clips, limits)
        plan.append((len(forests), [(len(forests) + 1 + w, at) for w, (_, at) in enumerate(windows)], len(clips)))
        forests += [whole] + [t for t, _ in windows]
    trees = Trees.batch(forests).to(module.device)
    x = module.encode(trees)
    h = trees.hierarchy
    roots = h.tree_node_ptr[:-1]
    video_vectors = module.project(pool_nodes(x, h, roots), "video")  # [T, E]
    clip_nodes = torch.nonzero(h.depth == 1).flatten()  # a video tree's root is the video; its children the clips
    clip_vectors = module.project(pool_nodes(x, h, clip_nodes), "video")
    clip_tree = torch.searchsorted(roots, clip_nodes, right=True) - 1
    out = []
    for whole, windows, count in plan:
        rows = torch.cat([clip_vectors[clip_tree == t] for t, _ in windows])
        if len(rows) != count:
            raise AssertionError(f"{len(rows)} clip embeddings for {count} clips")
        out.append((video_vectors[whole].float().cpu(), rows.float().cpu()))
    return out
