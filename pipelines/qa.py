"""Multiple-choice video QA on the joint hierarchy (video, optional transcript, question, candidates).

One tree holds everything. After the encoder, each candidate reads the video: a query made of the
question's and the candidate's leaf-means attends over the video's clips (their leaf-means), and the
candidate is scored from its own, the question's, the video's and that read-out. HSA inside the encoder
has already mixed every level (patches in a frame, frames in a clip, clips in the video, the video with
the question and candidates); the read-out lets a candidate pick the clip it is about. Cross-entropy
over the candidates; accuracy overall and per question type.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmhsa.nn import pool_nodes

from .data import Batch
from .metrics import qa_accuracy
from .model import FusionModule, mlp

__all__ = ["QAModule"]


class QAModule(FusionModule):
    """Multiple-choice QA.

    Args:
        head_hidden: hidden width of the candidate scorer.
        **fusion: encoder and optimiser settings (:class:`~pipelines.model.FusionModule`).
    """

    def __init__(self, head_hidden: int = 256, **fusion):
        super().__init__(**fusion)
        self.save_hyperparameters()
        dim = self.encoder.dim
        self.query = nn.Linear(2 * dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.scorer = mlp(4 * dim, head_hidden, 1)
        self._outputs: list[tuple[torch.Tensor, torch.Tensor, list[str]]] = []

    @staticmethod
    def slots(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Node ids per sample: video [B], question [B], candidates [B, K] and clips [B, C] (-1 pads)."""
        h = batch.hierarchy
        videos, questions, candidates, clips = [], [], [], []
        for b, root in enumerate(h.tree_node_ptr[:-1].tolist()):
            keys = h.keyed_children(root)
            answers = [keys[k] for k in sorted((k for k in keys if k.startswith("answer_")), key=lambda k: int(k[7:]))]
            if "video" not in keys or "question" not in keys or not answers:
                raise ValueError(f"sample {batch.ids[b]!r}: QA needs 'video', 'question' and 'answer_k', it has "
                                 f"{sorted(keys)}")
            videos.append(keys["video"])
            questions.append(keys["question"])
            candidates.append(answers)
            clips.append(h.children(keys["video"]))
        device = h.device
        return (torch.tensor(videos, device=device), torch.tensor(questions, device=device),
                _padded(candidates).to(device), _padded(clips).to(device))

    def forward(self, batch: Batch) -> torch.Tensor:
        """Candidate scores [B, K]; -inf where a sample has fewer than K candidates."""
        x = self.encode(batch)
        h = batch.hierarchy
        videos, questions, candidates, clips = self.slots(batch)
        v = pool_nodes(x, h, videos)  # [B, D]
        q = pool_nodes(x, h, questions)
        a = pool_nodes(x, h, candidates.clamp(min=0).flatten()).view(*candidates.shape, -1)  # [B, K, D]
        c = pool_nodes(x, h, clips.clamp(min=0).flatten()).view(*clips.shape, -1)  # [B, C, D]
        k = candidates.shape[1]
        q_k = q[:, None].expand(-1, k, -1)
        logits = self.query(torch.cat([q_k, a], -1)) @ self.key(c).transpose(1, 2) / c.shape[-1] ** 0.5  # [B, K, C]
        weights = logits.masked_fill(clips[:, None, :] < 0, float("-inf")).softmax(-1)
        read = weights @ self.value(c)  # [B, K, D]
        scores = self.scorer(torch.cat([a, q_k, v[:, None].expand(-1, k, -1), read], -1))[..., 0]
        return scores.masked_fill(candidates < 0, float("-inf"))

    @staticmethod
    def answers(batch: Batch) -> torch.Tensor:
        return torch.tensor([m["answer"] for m in batch.meta], device=batch.hierarchy.device)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self(batch), self.answers(batch))
        self.check_loss(loss, batch_idx, batch.ids)
        self.log("train/loss", loss, batch_size=len(batch), prog_bar=True)
        return loss

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict]:
        """One row per question: id, type, candidate scores (log-probabilities), predicted and true answer."""
        log_p = self(batch).float().log_softmax(-1)
        rows = []
        for b, meta in enumerate(batch.meta):
            scores = log_p[b][torch.isfinite(log_p[b])]
            rows.append({"id": batch.ids[b], "type": meta.get("type", ""), "question": meta.get("question"),
                         "candidates": meta.get("candidates"), "scores": [round(x, 5) for x in scores.tolist()],
                         "predicted": int(scores.argmax()), "answer": meta.get("answer")})
        return rows

    # ------------------------------------------------------------------ evaluation
    def _collect(self, batch: Batch) -> None:
        scores = self(batch)
        self._outputs.append((scores, self.answers(batch), [m.get("type", "") for m in batch.meta]))

    def _evaluate(self, prefix: str) -> dict[str, float]:
        outputs, self._outputs = self.gathered_outputs(), []
        width = max(s.shape[1] for s, _, _ in outputs)
        scores = torch.cat([F.pad(s, (0, width - s.shape[1]), value=float("-inf")) for s, _, _ in outputs])
        answers = torch.cat([a for _, a, _ in outputs])
        types = [t for _, _, ts in outputs for t in ts]
        metrics = {f"{prefix}/{k}": v for k, v in qa_accuracy(scores.float().cpu(), answers.cpu(), types).items()}
        self.log_dict(metrics, batch_size=len(answers))
        return metrics


def _padded(rows: list[list[int]]) -> torch.Tensor:
    """Ragged lists of node ids -> [len(rows), longest] with -1 padding."""
    table = torch.full((len(rows), max(len(r) for r in rows)), -1, dtype=torch.long)
    for b, r in enumerate(rows):
        table[b, : len(r)] = torch.tensor(r, dtype=torch.long)
    return table
