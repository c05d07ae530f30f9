"""Trained models for inference: a task's checkpoint with the featurization its inputs need.

A checkpoint written by training carries how its data was prepared (frame encoder, clip splitting,
frame sampling, text encoder, limits; see :meth:`pipelines.train.data.ShardDataModule.state_dict`), so new
videos and texts go through exactly the same featurization (:mod:`data_prep.featurize`). Older
checkpoints, or a different choice, take it from a prepared data directory or a data recipe
(``prepared=``). A model's **version** is its class and the hash of its checkpoint file: an index
records it, and searching that index with another model fails with both named. The task module itself
comes from training's one loader, :meth:`~pipelines.train.fusion.FusionModule.from_checkpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from data_prep.featurize import Featurization, Stages, TextFeaturizer, VideoFeaturizer
from data_prep.shards import file_sha256
from pipelines.train import TASKS, FusionModule
from pipelines.train.fusion import read_checkpoint
from pipelines.train.run_all import DEFAULT_CHECKPOINTS

__all__ = ["DEFAULT_CHECKPOINTS", "TrainedModel", "load_model"]


@dataclass
class TrainedModel:
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
        featurizer = VideoFeaturizer(
            self.featurization.video, self.featurization.frames, self.module.device, self.stages
        )
        self._check_width("video", featurizer.encoder.dim, featurizer.encoder.id)
        return featurizer

    @cached_property
    def texts(self) -> TextFeaturizer:
        featurizer = TextFeaturizer(self.featurization.text, self.module.device, self.stages)
        self._check_width("text", featurizer.encoder.dim, featurizer.encoder.id)
        return featurizer

    def _check_width(self, modality: str, width: int, encoder_id: str) -> None:
        """New inputs must be as wide as the model's inputs: a model trained on one encoder's features
        cannot read another's."""
        expected = self.module.encoder.adapters[modality].in_features
        if width != expected:
            raise ValueError(
                f"{self.path}: the model reads {expected}-wide {modality} features, but {encoder_id} gives {width}; "
                "featurize with the encoder it was trained on (its checkpoint records it; see --prepared)"
            )


def file_version(path: Path, class_name: str) -> str:
    return f"{class_name}:{file_sha256(path)[:16]}"


def load_model(
    checkpoint: str | Path | None,
    task: str,
    *,
    prepared: str | Path | None = None,
    device: str | torch.device = "cpu",
    trust: bool = False,
) -> TrainedModel:
    """Load a trained task module for inference.

    Args:
        checkpoint: a Lightning checkpoint of that task; None: ``DEFAULT_CHECKPOINTS[task]`` (``make train``).
        task: "retrieval" (:class:`~pipelines.train.retrieval.RetrievalModule`), "qa"
            (:class:`~pipelines.train.qa.QAModule`) or "rerank" (:class:`~pipelines.train.rerank.RerankModule`).
        prepared: where the featurization comes from when the checkpoint does not carry it (or to override
            it): a prepared task directory or a data recipe YAML.
        trust: load objects other than tensors and plain values too (``--trust-checkpoint``; see
            :func:`~pipelines.train.fusion.read_checkpoint`).

    Raises:
        FileNotFoundError: no such checkpoint (naming it, and ``make train`` for the default).
        ValueError: not a checkpoint, a checkpoint of another task, or no featurization known.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    if checkpoint is None:
        checkpoint = DEFAULT_CHECKPOINTS[task]
        if not checkpoint.is_file():
            raise FileNotFoundError(
                f"no checkpoint given and the default {checkpoint} does not exist: run `make train` "
                f"(or pass --ckpt PATH to a trained {task} checkpoint)"
            )
    path = Path(checkpoint)
    cls = TASKS[task]
    # dual_encoder: a re-ranker's training-time helper, not needed to score pairs
    state = read_checkpoint(path, trust)
    module = cls.from_state(state, path, **({"dual_encoder": None} if task == "rerank" else {}))
    module.eval().to(device)
    carried = next((v["prepared"] for v in state.values() if isinstance(v, dict) and "prepared" in v), None)
    if prepared is not None:
        featurization = Featurization.from_prepared(prepared)
        if carried is not None:  # another featurization for clips and limits is fine, other encoders are not
            trained = Featurization.from_config(carried["config"])
            for part in ("frames", "text"):
                if getattr(trained, part) != getattr(featurization, part):
                    raise ValueError(
                        f"checkpoint {path} was trained on {part} encoded with {getattr(trained, part)}; "
                        f"{prepared} encodes them with {getattr(featurization, part)}: the model cannot read those"
                    )
    else:
        if carried is None:
            raise ValueError(
                f"checkpoint {path} does not record how its data was prepared; pass the prepared "
                "directory or data recipe it was trained on (--prepared data/prepared/synthetic/"
                "retrieval or configs/data/synthetic.yaml)"
            )
        featurization = Featurization.from_config(carried["config"])
    return TrainedModel(module, featurization, path, file_version(path, cls.__name__))
