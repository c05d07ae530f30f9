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

from .batches import RetrievalBatch, Trees
from .fusion import FusionModule, pool_roots
from .metrics import recall_summary, retrieval_ranks

__all__ = ["RetrievalModule", "reverse_frames"]


def reverse_frames(videos: Trees) -> Trees:
    """The same video trees with each clip's frames in reverse order (clip order and timestamps kept).

    Every motion is turned around (up <-> down, left <-> right) while colours, shapes and scene order stay:
    a hard negative that only a model that sees motion can tell from the original.
    """
    h = videos.hierarchy
    if "clip" not in h.kind_names or set(videos.features) != {"video"}:
        raise ValueError(
            f"reverse_frames needs video trees (clips of frames), got kinds {h.kind_names} and "
            f"modalities {sorted(videos.features)}"
        )
    order = torch.arange(h.num_leaves)
    for clip in torch.nonzero(h.kind == h.kind_names.index("clip")).flatten().tolist():
        frames = h.children(clip)
        starts, ends = h.leaf_start[frames].tolist(), h.leaf_end[frames].tolist()
        sizes = {e - s for s, e in zip(starts, ends)}
        if len(sizes) != 1:
            raise ValueError(f"reverse_frames: clip node {clip} has frames of different leaf counts {sorted(sizes)}")
        order[starts[0] : ends[-1]] = torch.cat([torch.arange(s, e) for s, e in zip(starts[::-1], ends[::-1])])
    return Trees(
        h, {"video": videos.features["video"][order.to(videos.features["video"].device)]}, videos.leaf_modality
    )


class RetrievalModule(FusionModule):
    """Dual-encoder retrieval.

    Args:
        embed_dim: width of the shared embedding space.
        temperature: initial softmax temperature (learned; clamped at 1/100).
        reversed_negatives: also train each caption against its video with every clip's frames reversed
            (:func:`reverse_frames`), in a two-way softmax of its own. Validation always reports
            ``forward_vs_reversed``: how often a caption prefers its video to that reversed copy.
        **fusion: encoder and optimiser settings (:class:`~pipelines.train.fusion.FusionModule`).
    """

    monitor = "val/t2v_R@1"  # the validation metric the best checkpoint is chosen by

    def __init__(self, embed_dim: int = 128, temperature: float = 0.07, reversed_negatives: bool = False, **fusion):
        super().__init__(**fusion)
        self.save_hyperparameters()
        self.reversed_negatives = reversed_negatives
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
        if self.reversed_negatives:  # each caption must also beat its video played backwards in every clip
            backwards = self.embed(reverse_frames(batch.videos), "video")[batch.text_video]
            own = logits.gather(1, batch.text_video[:, None])[:, 0]
            pair = torch.stack([own, scale * (texts * backwards).sum(-1)], 1)  # [T, 2]
            # its own term: one such column among the batch's videos would get ~1/V of the gradient
            t2v = t2v + F.cross_entropy(pair, torch.zeros_like(batch.text_video))
        positive = batch.text_video[None, :] == torch.arange(len(videos), device=logits.device)[:, None]  # [V, T]
        by_video = logits.T
        v2t = (torch.logsumexp(by_video, 1) - torch.logsumexp(by_video.masked_fill(~positive, -math.inf), 1)).mean()
        loss = (t2v + v2t) / 2
        self.check_loss(loss, batch_idx, batch.ids)
        self.log("train/loss", loss, batch_size=len(videos), prog_bar=True)
        self.log("train/temperature", 1 / scale, batch_size=len(videos))
        return loss

    def predict_step(self, batch: RetrievalBatch, batch_idx: int) -> list[dict]:
        """One row per video (id, embedding) and one per caption (its video's id, caption number, embedding)."""
        videos, texts = self.embed(batch.videos, "video").float(), self.embed(batch.texts, "text").float()
        rows = [{"id": i, "kind": "video", "embedding": v.tolist()} for i, v in zip(batch.ids, videos)]
        number = [int((batch.text_video[:t] == batch.text_video[t]).sum()) for t in range(len(texts))]
        rows += [
            {"id": batch.ids[int(owner)], "kind": "caption", "caption": n, "embedding": t.tolist()}
            for owner, n, t in zip(batch.text_video, number, texts)
        ]
        return rows

    # ------------------------------------------------------------------ evaluation
    def _collect(self, batch: RetrievalBatch) -> None:
        videos, texts = self.embed(batch.videos, "video"), self.embed(batch.texts, "text")
        # Does the model see motion? Each caption against its video and that video played backwards.
        backwards = self.embed(reverse_frames(batch.videos), "video")[batch.text_video]
        forward_wins = (texts * videos[batch.text_video]).sum(-1) > (texts * backwards).sum(-1)
        self._outputs.append((videos, texts, batch.text_video, forward_wins))

    def _evaluate(self, prefix: str) -> dict[str, float]:
        videos, texts, owners, wins, offset = [], [], [], [], 0
        outputs, self._outputs = self.gathered_outputs(), []
        for v, t, owner, forward_wins in outputs:
            videos.append(v)
            texts.append(t)
            owners.append(owner + offset)
            wins.append(forward_wins)
            offset += len(v)
        videos, texts, owner = torch.cat(videos).float(), torch.cat(texts).float(), torch.cat(owners)
        gallery = torch.arange(len(videos), device=owner.device)
        t2v = retrieval_ranks(texts, videos, lambda q: owner[q][:, None] == gallery[None, :])
        v2t = retrieval_ranks(videos, texts, lambda q: q[:, None] == owner[None, :])
        metrics = {
            **recall_summary(t2v, prefix="t2v_"),
            **recall_summary(v2t, prefix="v2t_"),
            "forward_vs_reversed": torch.cat(wins).float().mean().item(),
        }
        metrics = {f"{prefix}/{k}": v for k, v in metrics.items()}
        self.log_dict(metrics, batch_size=len(videos))
        return metrics
