"""Text-video retrieval: a dual encoder over the video tree and the caption trees of each sample.

Both sides go through the same hierarchical encoder (modality-specific projections inside), are
leaf-mean pooled per tree and projected into a shared space; the loss is the symmetric InfoNCE with a
learnable temperature. A video with several captions has several positives: text-to-video is a plain
cross-entropy, video-to-text sums the probability of all its captions. Videos can be indexed once and
searched with any text.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .data import RetrievalBatch, Trees
from .metrics import recall_summary, retrieval_ranks
from .model import FusionModule, pool_roots

__all__ = ["RetrievalModule"]


class RetrievalModule(FusionModule):
    """Dual-encoder retrieval.

    Args:
        embed_dim: width of the shared embedding space.
        temperature: initial softmax temperature (learned; clamped at 1/100).
        **fusion: encoder and optimiser settings (:class:`~pipelines.model.FusionModule`).
    """

    def __init__(self, embed_dim: int = 128, temperature: float = 0.07, **fusion):
        super().__init__(**fusion)
        self.save_hyperparameters()
        dim = self.encoder.dim
        self.video_head = nn.Linear(dim, embed_dim)
        self.text_head = nn.Linear(dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)))
        self._outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def embed(self, trees: Trees, side: str) -> torch.Tensor:
        """[T, embed_dim] unit vectors, one per tree; ``side``: "video" or "text"."""
        return self.project(pool_roots(self.encode(trees), trees.hierarchy), side)

    def project(self, pooled: torch.Tensor, side: str) -> torch.Tensor:
        """Leaf-mean encoder features of nodes [K, dim] -> [K, embed_dim] unit vectors in the shared space."""
        head = self.video_head if side == "video" else self.text_head
        return F.normalize(head(pooled), dim=-1)

    def training_step(self, batch: RetrievalBatch, batch_idx: int) -> torch.Tensor:
        videos, texts = self.embed(batch.videos, "video"), self.embed(batch.texts, "text")
        scale = self.logit_scale.exp().clamp(max=100.0)
        logits = scale * texts @ videos.T  # [T, V]
        t2v = F.cross_entropy(logits, batch.text_video)
        positive = batch.text_video[None, :] == torch.arange(len(videos), device=logits.device)[:, None]  # [V, T]
        by_video = logits.T
        v2t = (torch.logsumexp(by_video, 1) - torch.logsumexp(by_video.masked_fill(~positive, -math.inf), 1)).mean()
        loss = (t2v + v2t) / 2
        self.check_loss(loss, batch_idx, batch.ids)
        self.log("train/loss", loss, batch_size=len(videos), prog_bar=True)
        self.log("train/temperature", 1 / scale, batch_size=len(videos))
        return loss

    # ------------------------------------------------------------------ evaluation
    def _collect(self, batch: RetrievalBatch) -> None:
        self._outputs.append((self.embed(batch.videos, "video"), self.embed(batch.texts, "text"), batch.text_video))

    def _evaluate(self, prefix: str) -> dict[str, float]:
        videos, texts, owners, offset = [], [], [], 0
        outputs, self._outputs = self.gathered_outputs(), []
        for v, t, owner in outputs:
            videos.append(v)
            texts.append(t)
            owners.append(owner + offset)
            offset += len(v)
        videos, texts, owner = torch.cat(videos).float(), torch.cat(texts).float(), torch.cat(owners)
        gallery = torch.arange(len(videos), device=owner.device)
        t2v = retrieval_ranks(texts, videos, lambda q: owner[q][:, None] == gallery[None, :])
        v2t = retrieval_ranks(videos, texts, lambda q: q[:, None] == owner[None, :])
        metrics = {**recall_summary(t2v, prefix="t2v_"), **recall_summary(v2t, prefix="v2t_")}
        metrics = {f"{prefix}/{k}": v for k, v in metrics.items()}
        self.log_dict(metrics, batch_size=len(videos))
        return metrics
