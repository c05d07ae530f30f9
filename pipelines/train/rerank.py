"""Cross-modal re-ranking: one joint tree per (video, caption) pair, a learnt correction of the dual encoder's score.

The dual encoder (:mod:`pipelines.train.retrieval`) embeds each side alone, so a corpus can be indexed once;
it never lets a word look at a clip. The re-ranker puts the video and the caption in one tree (root ->
video, captions), so HSA mixes them at every level. It is residual: a pair's score is
``a * prior + delta(joint tree)``, with ``prior`` the first stage's (the dual encoder's) cosine similarity of
the pair, ``a`` a learnt scale started at the dual encoder's logit scale and ``delta`` an MLP over the
leaf-means of the video, the caption and the whole tree whose last layer starts at zero: before any
training the re-ranked order is the dual encoder's, and training only has to learn what the joint tree
adds. Training: for every caption of a batch, its video and ``negatives`` other videos of the batch
chosen by the frozen dual encoder's similarities (its top ones, or drawn with the hardest likeliest),
softmax cross-entropy over the 1 + ``negatives`` pairs. Evaluation: the dual encoder ranks the whole
split; the re-ranker reorders each caption's top ``rerank_k``; t2v R@1/5/10, MdR, MnR for both, so the
gain is measured in the same run.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from data_prep.shards import file_sha256
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
    """Residual cross-modal pair scorer: ``a * prior + delta(joint tree)``.

    Args:
        dual_encoder: the retrieval checkpoint whose similarities give the priors and the hard negatives
            (training) and the priors and the candidates to re-rank (evaluation); kept frozen and not saved
            with this model. Its logit scale starts ``a``.
        negatives: negative videos per caption in training.
        negative_temperature: how the negatives are chosen among the batch's other videos: drawn from the
            softmax of the dual encoder's similarities at this temperature (the hardest likeliest; drawing keeps
            near-duplicates from always being the negatives), or, at 0, the dual encoder's top ``negatives`` (the
            candidates evaluation re-ranks are its top ones).
        rerank_k: candidates per caption re-ranked in evaluation.
        head_hidden: hidden width of the correction ``delta``.
        dual_sha256: the sha256 of the dual encoder's checkpoint file, recorded from ``dual_encoder`` (a loaded
            re-ranker keeps it): its priors are that model's cosines, so it re-ranks only that model's indexes.
        head_lr: learning rate of ``delta`` and ``a`` (None: ``lr``). Starting at zero, delta's last layer grows
            by about the learning rate per Adam step, so at the encoder's rate it stays too small within a short
            run to move any candidate (measured: its largest weight under 0.01 after 22 and 44 steps at 5e-4).
        **fusion: encoder and optimiser settings (:class:`~pipelines.train.fusion.FusionModule`); ``init_from``
            the same retrieval checkpoint is a good start.
    """

    monitor = "val/t2v_R@1"  # the validation metric the best checkpoint is chosen by

    def __init__(
        self,
        dual_encoder: str | None = None,
        negatives: int = 3,
        negative_temperature: float = 0.05,
        rerank_k: int = 10,
        head_hidden: int = 256,
        head_lr: float | None = None,
        dual_sha256: str | None = None,
        **fusion,
    ):
        super().__init__(**fusion)
        self.save_hyperparameters()
        self.negatives, self.negative_temperature, self.rerank_k = negatives, negative_temperature, rerank_k
        self.head_lr = self.lr if head_lr is None else head_lr
        self.scorer = mlp(3 * self.encoder.dim, head_hidden, 1)
        # delta = 0 at the start: the untrained re-ranker keeps the dual encoder's order exactly
        nn.init.zeros_(self.scorer[-1].weight)
        nn.init.zeros_(self.scorer[-1].bias)
        self._dual = [None]  # a list: not a registered submodule, so not trained and not checkpointed
        scale = torch.tensor(math.log(1 / 0.07))  # RetrievalModule's initial temperature, without a dual encoder
        if dual_encoder:
            self._dual[0] = RetrievalModule.from_checkpoint(dual_encoder).eval().requires_grad_(False)
            scale = self._dual[0].logit_scale.detach().clamp(max=math.log(100.0))  # its training-time clamp
            dual_sha256 = file_sha256(Path(dual_encoder))
            self.hparams["dual_sha256"] = dual_sha256  # saved: search checks an index's model against it
        self.dual_sha256 = dual_sha256
        # log a: a stays positive (a higher first-stage score never counts against a pair)
        self.prior_log_scale = nn.Parameter(scale.clone().float())
        self._outputs: list = []

    @property
    def dual(self):
        if self._dual[0] is None:
            raise ValueError("RerankModule: training and evaluation need dual_encoder (a retrieval checkpoint)")
        return self._dual[0].to(self.device)

    def score(self, pairs: Trees, prior: torch.Tensor) -> torch.Tensor:
        """[P] scores of joint (video, caption) trees, given each pair's first-stage cosine ``prior`` [P]."""
        x = self.encode(pairs)
        h = pairs.hierarchy
        roots = h.tree_node_ptr[:-1]
        video, caption = roots + 1, h.parent.new_tensor([h.keyed_children(int(r))["captions"] for r in roots])
        pooled = [pool_nodes(x, h, nodes) for nodes in (video, caption, roots)]
        delta = self.scorer(torch.cat(pooled, -1))[:, 0]
        return self.prior_log_scale.exp() * prior.to(delta) + delta

    def score_pairs(
        self, videos: list[Trees], texts: list[Trees], pairs: list[tuple[int, int]], prior: torch.Tensor
    ) -> torch.Tensor:
        """[P] scores of (video index, text index) pairs, each put in one joint tree (:func:`joint_pairs`).

        ``prior`` [P]: each pair's first-stage score, the cosine similarity of the caption's and the video's
        embeddings by the dual encoder (at search time the index's score of the hit).
        """
        return self.score(joint_pairs(videos, texts, pairs).to(self.device), torch.as_tensor(prior).to(self.device))

    def negatives_for(self, sims: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """[T, k] negative videos per caption from the dual encoder's similarities [T, V] (own video excluded)."""
        k = min(self.negatives, sims.shape[1] - 1)
        if k < 1:
            raise ValueError(f"batch of {sims.shape[1]} video(s): re-rank training needs at least 2 per batch")
        others = sims.masked_fill(F.one_hot(owner, sims.shape[1]).bool(), float("-inf"))
        if self.negative_temperature <= 0:
            return others.topk(k, dim=1).indices
        return torch.multinomial((others / self.negative_temperature).softmax(1), k)

    def training_step(self, batch: RetrievalBatch, batch_idx: int) -> torch.Tensor:
        with torch.no_grad():
            self.dual.eval()
            sims = self.dual.embed(batch.texts, "text") @ self.dual.embed(batch.videos, "video").T  # [T, V]
        owner = batch.text_video
        drawn = self.negatives_for(sims, owner)
        k = drawn.shape[1]
        videos = [_tree(batch.videos, i) for i in range(len(batch))]
        texts = [_tree(batch.texts, i) for i in range(len(owner))]
        candidates = torch.cat([owner[:, None], drawn], 1)  # [T, 1 + k], the positive first
        pairs = [(int(v), t) for t in range(len(owner)) for v in candidates[t]]
        prior = sims.gather(1, candidates).flatten()
        logits = self.score_pairs(videos, texts, pairs, prior).view(len(owner), k + 1)
        loss = F.cross_entropy(logits, torch.zeros(len(owner), dtype=torch.long, device=logits.device))
        self.check_loss(loss, batch_idx, batch.ids)
        self.log("train/loss", loss, batch_size=len(owner), prog_bar=True)
        self.log("train/prior_scale", self.prior_log_scale.exp(), batch_size=len(owner))
        return loss

    def optimizer_groups(self) -> list[dict]:
        """The shared groups (:class:`~pipelines.train.fusion.FusionModule`), each split in two: ``delta`` and
        ``a`` at ``head_lr``, the rest at ``lr`` (the schedule scales both)."""
        head = {id(p) for p in (*self.scorer.parameters(), self.prior_log_scale)}
        return [
            {**group, "params": chosen, **({"lr": self.head_lr} if in_head else {})}
            for group in super().optimizer_groups()
            for in_head in (False, True)
            if (chosen := [p for p in group["params"] if (id(p) in head) == in_head])
        ]

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
        """Dual-encoder cosine similarities [T, V] (the priors) -> scores whose top ``rerank_k`` per row are
        reordered by this model (placed above every other video, in the re-ranker's order)."""
        k = min(self.rerank_k, sims.shape[1])
        top = sims.topk(k, dim=1).indices  # [T, k]
        pairs = [(int(v), t) for t in range(len(texts)) for v in top[t]]
        prior = sims.gather(1, top).flatten()
        scores = torch.cat(
            [
                self.score_pairs(videos, texts, pairs[at : at + chunk], prior[at : at + chunk]).float().cpu()
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
