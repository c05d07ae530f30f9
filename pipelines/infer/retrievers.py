"""Dual encoders that index and search use: a trained retrieval model, or CLIP zero-shot (meanP).

Both give the same things: a ``version`` (recorded in an index and checked by every search), the
``featurization`` of new videos, ``videos`` (the featurizer), ``embed_videos`` (per video its embedding and
its clips', unit vectors) and ``embed_texts`` (unit query vectors), on ``module``'s device.

:class:`ClipMeanP` needs no training: every sampled frame goes through the open_clip image tower (its
projected, text-aligned embedding), a clip's embedding is the mean of its frames' and a video's the mean
of all its frames' (each frame L2-normalised first, the mean normalised again), and a query is the open_clip
text embedding. That is the zero-shot meanP baseline of CLIP4Clip (Luo et al., 2021, Sec. 3.2 and Table 1),
with the frames the data recipe samples (its clips and ``frames_per_clip``).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import torch
import torch.nn.functional as F

from data_prep.assemble import ClipLeaves
from data_prep.featurize import Featurization, Stages, VideoFeaturizer
from data_prep.shards import file_sha256
from data_prep.text import check_text
from mmhsa.encoders.weights import OPEN_CLIP_DIR, open_clip_model

from .checkpoints import TrainedModel, load_model
from .trees import embed_videos, text_trees

__all__ = ["ClipMeanP", "TrainedRetriever", "load_retriever", "recorded_retriever"]

TRAINED, CLIP_MEANP = "trained", "clip_meanp"


class TrainedRetriever:
    """A trained retrieval checkpoint (:class:`~pipelines.train.retrieval.RetrievalModule`)."""

    kind = TRAINED

    def __init__(self, model: TrainedModel):
        self.model = model
        self.module, self.path, self.version = model.module, model.path, model.version
        self.featurization, self.stages = model.featurization, model.stages
        self.embed_dim = model.module.hparams.embed_dim

    @property
    def videos(self) -> VideoFeaturizer:
        return self.model.videos

    @property
    def texts(self):
        return self.model.texts

    def embed_videos(self, videos: list[list[ClipLeaves]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return embed_videos(self.model, videos)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> tuple[torch.Tensor, list[dict]]:
        """[Q, E] unit vectors; and what the limits dropped of each text."""
        trees, dropped = text_trees(self.model, texts)
        return self.module.embed(trees.to(self.module.device), "text").float().cpu(), dropped


def _weights_digest(name: str, weights: str | None) -> str:
    """sha256 (16 hex digits) of the weight file(s) a CLIP model is built from, or of its name if random."""
    digest = hashlib.sha256(name.encode())
    files = []
    if name.startswith(OPEN_CLIP_DIR):
        folder = Path(name.removeprefix(OPEN_CLIP_DIR))
        files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    elif weights not in (None, "random"):
        files = [Path(weights)]
    for path in files:
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()[:16]


class ClipMeanP:
    """Zero-shot retrieval with the open_clip model of a data recipe's frame encoder (see the module's text).

    Args:
        featurization: a featurization whose ``frames`` are an open_clip model (its patch or pooled output;
            frames are encoded pooled here).
        source: where it came from (a data recipe or prepared directory), recorded in the index.
        device: where both towers run.

    Raises:
        ValueError: the frame encoder is not open_clip, or its weights cannot be loaded (named).
    """

    kind = CLIP_MEANP

    def __init__(self, featurization: Featurization, source: str | Path, device: str | torch.device = "cpu"):
        import open_clip

        frames = featurization.frames
        if frames.source != "open_clip":
            raise ValueError(
                f"{source}: zero-shot search needs an open_clip frame encoder (frames: {{source: open_clip, name, "
                f"weights}}); this recipe's is {frames.source} {frames.name!r}"
            )
        self.featurization = replace(featurization, frames=replace(frames, output="pooled"))
        self.path = Path(source)
        self.module = open_clip_model(frames.name, frames.weights).eval().to(device)
        self.module.visual = None  # the image tower runs in the video featurizer; this copy embeds text
        self.tokenizer = open_clip.get_tokenizer(frames.name)
        self.context = int(self.module.positional_embedding.shape[0])
        self.version = f"ClipMeanP:{_weights_digest(frames.name, frames.weights)}"
        self.embed_dim = int(self.embed_texts(["a"])[0].shape[1])

    @cached_property
    def stages(self) -> Stages:
        return Stages()

    @cached_property
    def videos(self) -> VideoFeaturizer:
        device = next(self.module.parameters()).device
        return VideoFeaturizer(self.featurization.video, self.featurization.frames, device, self.stages)

    def embed_videos(self, videos: list[list[ClipLeaves]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per video: the mean of its frames' unit CLIP embeddings [E] and each clip's [C, E], normalised."""
        out = []
        for clips in videos:
            per_clip = [F.normalize(c.patches[:, 0, 0].float(), dim=-1) for c in clips]  # [k, E] each
            video = F.normalize(torch.cat(per_clip).mean(0), dim=-1)
            out.append((video, F.normalize(torch.stack([f.mean(0) for f in per_clip]), dim=-1)))
        return out

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> tuple[torch.Tensor, list[dict]]:
        """[Q, E] unit CLIP text embeddings; and per text the BPE tokens cut beyond the context length."""
        texts = [check_text(t, f"text {i}") for i, t in enumerate(texts)]
        device = next(self.module.parameters()).device
        dropped = [
            {"tokens": n} if (n := len(self.tokenizer.encode(t)) - (self.context - 2)) > 0 else {} for t in texts
        ]
        vectors = self.module.encode_text(self.tokenizer(texts, context_length=self.context).to(device))
        return F.normalize(vectors.float(), dim=-1).cpu(), dropped


def load_retriever(
    checkpoint: str | None = None, prepared: str | None = None, zero_shot: str | None = None, trust: bool = False
) -> TrainedRetriever | ClipMeanP:
    """A trained checkpoint (default: ``make train``'s; ``trust``: see :func:`load_model`), or with
    ``zero_shot`` (a data recipe or prepared directory with an open_clip frame encoder) CLIP meanP."""
    if zero_shot is not None:
        if checkpoint is not None or prepared is not None:
            raise ValueError("--zero-shot takes its model from the recipe: give no --ckpt or --prepared with it")
        return ClipMeanP(Featurization.from_prepared(zero_shot), zero_shot)
    return TrainedRetriever(load_model(checkpoint, "retrieval", prepared=prepared, trust=trust))


def recorded_retriever(manifest: dict, checkpoint: str | None = None, prepared: str | None = None, trust: bool = False):
    """The dual encoder an index records (its ``model`` and ``featurization``); ``checkpoint`` and
    ``prepared`` replace a trained model's."""
    recorded = manifest["model"]
    if recorded.get("kind", TRAINED) == CLIP_MEANP and checkpoint is None:
        return ClipMeanP(Featurization.from_config(manifest["featurization"]), recorded["path"])
    if checkpoint is None:  # the file the index names: loaded only if it is the file that built the index
        checkpoint = recorded["path"]
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"the index's model {checkpoint} is gone: give the checkpoint with --ckpt")
        expected = recorded.get("sha256") or recorded["version"].rsplit(":", 1)[-1]
        if not file_sha256(Path(checkpoint)).startswith(expected):
            raise ValueError(
                f"the index's model file {checkpoint} has changed since the index was built (sha256 is not the "
                f"recorded {expected[:16]}): not loading it; give the index's model with --ckpt"
            )
    return load_retriever(checkpoint, prepared, trust=trust)
