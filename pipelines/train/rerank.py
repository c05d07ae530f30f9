"""Cross-modal re-ranking: one joint tree per (video, caption) pair, trained with the dual encoder's hard
negatives.

The dual encoder (:mod:`pipelines.train.retrieval`) embeds each side alone, so a corpus can be indexed once;
it never lets a word look at a clip. The re-ranker puts the video and the caption in one tree (root ->
video, captions), so HSA mixes them at every level, and scores the pair from the leaf-means of the
video, the caption and the whole tree. Training: for every caption of a batch, its video and
``negatives`` other videos of the batch drawn from the frozen dual encoder's similarities (the
hardest are the likeliest; drawing rather than taking the top keeps near-duplicates from always being
the negatives), softmax cross-entropy over the 1 + ``negatives`` pairs. Evaluation: the dual encoder
ranks the whole split; the re-ranker reorders each caption's top ``rerank_k``; t2v R@1/5/10, MdR, MnR
for both, so the gain is measured in the same run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmhsa import Hierarchy
from mmhsa.nn import pool_nodes

from .batches import RetrievalBatch, Trees, sample_part
from .fusion import FusionModule, mlp
from .metrics import recall_summary, retrieval_ranks
from .retrieval import RetrievalModule

__all__ = ["RerankModule", "joint_pairs"]


def _tree(forest: Trees, i: int) -> Trees:
    return sample_part(forest, int(forest.hierarchy.tree_node_ptr[i]))


def joint_pairs(videos: list[Trees], texts: list[Trees], pairs: list[tuple[int, int]]) -> Trees:
    """One tree per (video index, text index) pair: root -> "video", "captions" (the caption's tree)."""
    parts = []
    for v, t in pairs:
        video, text = videos[v], texts[t]
        features = {
            m: torch.cat([p.features[m] for p in (video, text) if m in p.features])
            for m in sorted(set(video.features) | set(text.features))
        }
        parts.append(
            Trees(
                Hierarchy.join([video.hierarchy, text.hierarchy], keys=["video", "captions"]),
                features,
                torch.cat([video.leaf_modality, text.leaf_modality]),
            )
        )
    return Trees.batch(parts)


class RerankModule(FusionModule):
    """Cross-modal pair scorer.

    Args:
        dual_encoder: the retrieval checkpoint whose similarities give the hard negatives (training)
            and the candidates to re-rank (evaluation); kept frozen and not saved with this model.
        negatives: negative videos per caption in training.
        rerank_k: candidates per caption re-ranked in evaluation.
        head_hidden: hidden width of the pair scorer.
        **fusion: encoder and optimiser settings (:class:`~pipelines.train.fusion.FusionModule`); ``init_from``
            the same retrieval checkpoint is a good start.
    """

    monitor = "val/t2v_R@1"  # the validation metric the best checkpoint is chosen by

    def __init__(
        self, dual_encoder: str | None = None, negatives: int = 3, rerank_k: int = 10, head_hidden: int = 256, **fusion
    ):
        super().__init__(**fusion)
        self.save_hyperparameters()
        self.negatives, self.rerank_k = negatives, rerank_k
        self.scorer = mlp(3 * self.encoder.dim, head_hidden, 1)
        self._dual = [None]  # a list: not a registered submodule, so not trained and not checkpointed
        if dual_encoder:
            self._dual[0] = RetrievalModule.from_checkpoint(dual_encoder).eval().requires_grad_(False)
        self._outputs: list = []

    @property
    def dual(self):
        if self._dual[0] is None:
            raise ValueError("RerankModule: training and evaluation need dual_encoder (a retrieval checkpoint)")
        return self._dual[0].to(self.device)

    def score(self, pairs: Trees) -> torch.Tensor:
        """[P] scores of joint (video, caption) trees."""
        x = self.encode(pairs)
        h = pairs.hierarchy
        roots = h.tree_node_ptr[:-1]
        video, caption = roots + 1, h.parent.new_tensor([h.keyed_children(int(r))["captions"] for r in roots])
        pooled = [pool_nodes(x, h, nodes) for nodes in (video, caption, roots)]
        return self.scorer(torch.cat(pooled, -1))[:, 0]

    def score_pairs(self, videos: list[Trees], texts: list[Trees], pairs: list[tuple[int, int]]) -> torch.Tensor:
        """[P] scores of (video index, text index) pairs, each put in one joint tree (:func:`joint_pairs`)."""
        return self.score(joint_pairs(videos, texts, pairs).to(self.device))

    def training_step(self, batch: RetrievalBatch, batch_idx: int) -> torch.Tensor:
        with torch.no_grad():
            self.dual.eval()
            sims = self.dual.embed(batch.texts, "text") @ self.dual.embed(batch.videos, "video").T  # [T, V]
        owner = batch.text_video
        k = min(self.negatives, sims.shape[1] - 1)
        if k < 1:
            raise ValueError(f"batch of {sims.shape[1]} video(s): re-rank training needs at least 2 per batch")
        others = sims.masked_fill(F.one_hot(owner, sims.shape[1]).bool(), float("-inf"))
        drawn = torch.multinomial((others / 0.05).softmax(1), k)  # [T, k], hardest likeliest
        videos = [_tree(batch.videos, i) for i in range(len(batch))]
        texts = [_tree(batch.texts, i) for i in range(len(owner))]
        candidates = torch.cat([owner[:, None], drawn], 1)  # the positive first
        pairs = [(int(v), t) for t in range(len(owner)) for v in candidates[t]]
        logits = self.score_pairs(videos, texts, pairs).view(len(owner), k + 1)
        loss = F.cross_entropy(logits, torch.zeros(len(owner), dtype=torch.long, device=logits.device))
        self.check_loss(loss, batch_idx, batch.ids)
        self.log("train/loss", loss, batch_size=len(owner), prog_bar=True)
        return loss

    # ------------------------------------------------------------------ evaluation
    def _collect(self, batch: RetrievalBatch) -> None:
        cpu = batch.to("cpu")
        self._outputs.append(
            (
                [_tree(cpu.videos, i) for i in range(len(batch))],
                [_tree(cpu.texts, i) for i in range(len(batch.text_video))],
                self.dual.embed(batch.videos, "video"),
                self.dual.embed(batch.texts, "text"),
                batch.text_video,
            )
        )

    @torch.no_grad()
    def rerank(self, sims: torch.Tensor, videos: list[Trees], texts: list[Trees], chunk: int = 64) -> torch.Tensor:
        """Dual-encoder scores [T, V] -> scores whose top ``rerank_k`` per row are reordered by this model
        (placed above every other video, in the re-ranker's order)."""
        k = min(self.rerank_k, sims.shape[1])
        top = sims.topk(k, dim=1).indices  # [T, k]
        pairs = [(int(v), t) for t in range(len(texts)) for v in top[t]]
        scores = torch.cat(
            [
                self.score_pairs(videos, texts, pairs[at : at + chunk]).float().cpu()
                for at in range(0, len(pairs), chunk)
            ]
        ).view(len(texts), k)
        out = sims.float().cpu() - sims.abs().max().item() - 1  # everything else stays below, in its order
        return out.scatter(1, top.cpu(), scores - scores.min(1, keepdim=True).values + 1)

    def _evaluate(self, prefix: str) -> dict[str, float]:
        outputs, self._outputs = self.gathered_outputs(), []
        videos, texts, video_vectors, text_vectors, owners, offset = [], [], [], [], [], 0
        for v, t, ve, te, owner in outputs:
            videos += v
            texts += t
            video_vectors.append(ve.float().cpu())
            text_vectors.append(te.float().cpu())
            owners.append(owner.cpu() + offset)
            offset += len(v)
        owner = torch.cat(owners)
        sims = torch.cat(text_vectors) @ torch.cat(video_vectors).T
        gallery = torch.arange(len(videos))

        def positive(q):
            return owner[q][:, None] == gallery[None, :]

        def ranks(scores):  # the rows are already scores: the "gallery" argument only carries its size
            return retrieval_ranks(scores, torch.empty(len(videos), 0), positive, score=lambda a, _: a)

        metrics = {
            **recall_summary(ranks(sims), prefix="dual_t2v_"),
            **recall_summary(ranks(self.rerank(sims, videos, texts)), prefix="t2v_"),
        }
        metrics = {f"{prefix}/{k}": v for k, v in metrics.items()}
        self.log_dict(metrics, batch_size=len(videos))
        return metrics
