"""Multiple-choice video QA on the joint hierarchy (video, optional transcript, question, candidates).

One tree holds everything (its layout: :mod:`pipelines.train.layouts`). HSA inside the encoder mixes every
level (patches in a frame, frames in a clip, clips in the video, the video with the question and
candidates); but it ties attention on sibling blocks, so within a layer the question sees the video as one
block and cannot single out "the clip with the red circle". The head after the encoder does that, in one of
two ways (``head``):

- ``pointer``: the question names a clip (attention over the clips' leaf-means, the *anchor*) and how far
  from it the answer lies (a distribution over -``offsets``..+``offsets`` clips: "what happens after ..." is
  +1); the anchor's weights moved by those offsets read the clips once, and every candidate is scored from
  its own features, that read-out, their product and the question.
- ``readout``: a query made of the question's and each candidate's leaf-means attends over the clips, and the
  candidate is scored from its own, the question's, the video's features and that read-out.

Cross-entropy over the candidates; accuracy overall and per question type.

Open-ended QA (``answers``: a vocabulary) classifies instead: the question reads the video the same way
and the answer is one of the vocabulary's texts (a sample's answer text: ``answer_text``, or its correct
candidate). Answers outside the vocabulary are left out of the loss, counted (``*/out_of_vocabulary``)
and scored wrong. ``python -m pipelines.train.qa vocabulary DATA_DIR`` lists a training split's answers.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from data_prep.schema import MAX_ANSWERS, answer_key
from mmhsa.nn import pool_nodes

from .batches import Batch
from .fusion import FusionModule, mlp
from .layouts import LAYOUTS, apply_layout
from .metrics import qa_accuracy

__all__ = ["HEADS", "QAModule"]

HEADS = ("readout", "pointer")  # how candidates read the clips (QAModule's ``head``)


class QAModule(FusionModule):
    """Multiple-choice QA.

    Args:
        head_hidden: hidden width of the candidate scorer (or of the answer classifier).
        answers: None for multiple choice; for open-ended QA the answer vocabulary, as a list or a text file
            with one answer per line (the checkpoint keeps the list itself).
        head: how the question reads the clips, one of :data:`HEADS` (see the module's docstring).
        offsets: the pointer head's reach: the answer lies -offsets..+offsets clips from the named one.
        layout: where the question sits in the tree, one of :data:`~pipelines.train.layouts.LAYOUTS`.
        **fusion: encoder and optimiser settings (:class:`~pipelines.train.fusion.FusionModule`).
    """

    monitor = "val/acc"  # the validation metric the best checkpoint is chosen by

    def __init__(
        self,
        head_hidden: int = 256,
        answers: list[str] | str | None = None,
        head: str = "readout",
        offsets: int = 1,
        layout: str = "joint",
        **fusion,
    ):
        super().__init__(**fusion)
        if head not in HEADS:
            raise ValueError(f"QAModule: head must be one of {HEADS}, got {head!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"QAModule: layout must be one of {LAYOUTS}, got {layout!r}")
        if offsets < 0:
            raise ValueError(f"QAModule: offsets must be >= 0, got {offsets}")
        self.vocabulary = read_vocabulary(answers) if answers is not None else None
        self.save_hyperparameters()
        self.head, self.offsets, self.layout = head, offsets, layout
        dim = self.encoder.dim
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        if head == "pointer":
            self.offset = nn.Linear(dim, 2 * offsets + 1)  # question -> where the answer lies from the named clip
        if self.vocabulary is None and head == "pointer":
            self.query = nn.Linear(dim, dim)  # the question names a clip
            self.scorer = mlp(4 * dim, head_hidden, 1)  # candidate, read-out, their product, question
        elif self.vocabulary is None:
            self.query = nn.Linear(2 * dim, dim)  # question and candidate
            self.scorer = mlp(4 * dim, head_hidden, 1)
        else:
            self.hparams["answers"] = self.vocabulary
            self.answer_ids = {normalise(a): i for i, a in enumerate(self.vocabulary)}
            self.query = nn.Linear(dim, dim)  # the question alone
            self.classifier = mlp(3 * dim, head_hidden, len(self.vocabulary))
        self._outputs: list[tuple[torch.Tensor, torch.Tensor, list[str]]] = []

    @staticmethod
    def slots(batch: Batch, open_ended: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Node ids per sample: video [B], question [B], candidates [B, K] and clips [B, C] (-1 pads).
        ``open_ended``: candidates are not needed (K may be 0)."""
        h = batch.hierarchy
        videos, questions, candidates, clips = [], [], [], []
        for b, root in enumerate(h.tree_node_ptr[:-1].tolist()):
            keys = h.keyed_children(root)
            answers = [keys[answer_key(k)] for k in range(MAX_ANSWERS) if answer_key(k) in keys]
            if "video" not in keys or "question" not in keys or not (answers or open_ended):
                raise ValueError(
                    f"sample {batch.ids[b]!r}: QA needs 'video', 'question' and 'answer_k', it has {sorted(keys)}"
                )
            videos.append(keys["video"])
            questions.append(keys["question"])
            candidates.append(answers)
            clips.append(h.children(keys["video"]))
        device = h.device
        return (
            torch.tensor(videos, device=device),
            torch.tensor(questions, device=device),
            _padded(candidates).to(device),
            _padded(clips).to(device),
        )

    def _read_clips(self, query: torch.Tensor, c: torch.Tensor, clips: torch.Tensor) -> torch.Tensor:
        """Attention read-out over each sample's clips: query [B, K, D], clips c [B, C, D] -> [B, K, D]."""
        logits = query @ self.key(c).transpose(1, 2) / c.shape[-1] ** 0.5  # [B, K, C]
        weights = logits.masked_fill(clips[:, None, :] < 0, float("-inf")).softmax(-1)
        return weights @ self.value(c)

    def _point(self, q: torch.Tensor, c: torch.Tensor, clips: torch.Tensor) -> torch.Tensor:
        """Pointer read-out: the question names a clip (attention over the clips, ``anchor``) and says how far
        from it the answer lies (a distribution over -offsets..+offsets clips); the anchor's weights moved
        by those offsets read the clips. q [B, D], c [B, C, D], clips [B, C] (-1 pads) -> [B, D]."""
        logits = self.query(q)[:, None] @ self.key(c).transpose(1, 2) / c.shape[-1] ** 0.5  # [B, 1, C]
        anchor = logits[:, 0].masked_fill(clips < 0, float("-inf")).softmax(-1)  # [B, C]
        shift = self.offset(q).softmax(-1)  # [B, 2 * offsets + 1], offset -offsets first
        target = torch.zeros_like(anchor)
        for i, o in enumerate(range(-self.offsets, self.offsets + 1)):
            moved = torch.roll(anchor, o, dims=1)  # moved[j] = anchor[j - o]
            if o > 0:
                moved[:, :o] = 0
            elif o < 0:
                moved[:, o:] = 0
            target = target + shift[:, i : i + 1] * moved
        target = target.masked_fill(clips < 0, 0.0)  # weight moved past the last clip reads nothing
        return (target[:, None] @ self.value(c))[:, 0]

    def forward(self, batch: Batch) -> torch.Tensor:
        """Candidate scores [B, K] (-inf where a sample has fewer than K candidates); open-ended: answer
        logits [B, len(vocabulary)]."""
        batch = apply_layout(batch, self.layout)
        x = self.encode(batch)
        h = batch.hierarchy
        videos, questions, candidates, clips = self.slots(batch, open_ended=self.vocabulary is not None)
        v = pool_nodes(x, h, videos)  # [B, D]
        q = pool_nodes(x, h, questions)
        c = pool_nodes(x, h, clips.clamp(min=0).flatten()).view(*clips.shape, -1)  # [B, C, D]
        if self.vocabulary is not None:
            if self.head == "pointer":
                read = self._point(q, c, clips)
            else:
                read = self._read_clips(self.query(q)[:, None], c, clips)[:, 0]
            return self.classifier(torch.cat([q, v, read], -1))
        a = pool_nodes(x, h, candidates.clamp(min=0).flatten()).view(*candidates.shape, -1)  # [B, K, D]
        k = candidates.shape[1]
        q_k = q[:, None].expand(-1, k, -1)
        if self.head == "pointer":
            read = self._point(q, c, clips)[:, None].expand(-1, k, -1)  # one read-out, every candidate meets it
            scores = self.scorer(torch.cat([a, read, a * read, q_k], -1))[..., 0]
        else:
            read = self._read_clips(self.query(torch.cat([q_k, a], -1)), c, clips)  # [B, K, D]
            scores = self.scorer(torch.cat([a, q_k, v[:, None].expand(-1, k, -1), read], -1))[..., 0]
        return scores.masked_fill(candidates < 0, float("-inf"))

    def answers(self, batch: Batch) -> torch.Tensor:
        """[B] the correct candidate's index, or open-ended its vocabulary id (-100 outside the vocabulary)."""
        if self.vocabulary is None:
            return torch.tensor([m["answer"] for m in batch.meta], device=batch.hierarchy.device)
        return torch.tensor(
            [self.answer_ids.get(normalise(answer_text(m)), -100) for m in batch.meta], device=batch.hierarchy.device
        )

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        scores, answers = self(batch), self.answers(batch)
        known = answers != -100
        # Open-ended answers outside the vocabulary teach nothing: out of the loss, and counted.
        loss = F.cross_entropy(scores[known], answers[known]) if known.any() else scores.sum() * 0.0
        self.check_loss(loss, batch_idx, batch.ids)
        self.log("train/loss", loss, batch_size=len(batch), prog_bar=True)
        if self.vocabulary is not None:
            self.log("train/out_of_vocabulary", 1 - known.float().mean(), batch_size=len(batch))
        return loss

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict]:
        """One row per question: id, type, scores (log-probabilities over the candidates, or open-ended the
        five best answers), predicted and true answer."""
        log_p = self(batch).float().log_softmax(-1)
        rows = []
        for b, meta in enumerate(batch.meta):
            row = {"id": batch.ids[b], "type": meta.get("type", ""), "question": meta.get("question")}
            if self.vocabulary is None:
                scores = log_p[b][torch.isfinite(log_p[b])]
                row |= {
                    "candidates": meta.get("candidates"),
                    "scores": [round(x, 5) for x in scores.tolist()],
                    "predicted": int(scores.argmax()),
                    "answer": meta.get("answer"),
                }
            else:
                best = log_p[b].topk(min(5, log_p.shape[1]))
                row |= {
                    "predicted": self.vocabulary[int(best.indices[0])],
                    "answer": answer_text(meta),
                    "top": [[self.vocabulary[int(i)], round(float(s), 5)] for s, i in zip(*best)],
                }
            rows.append(row)
        return rows

    def prediction_files(self, rows: list[dict]) -> dict[str, dict]:
        """Multiple choice: ``eval_mc.json``, ``{"<video>_<qid>": {"prediction": k, "answer": k}}``, the file
        NExT-QA's official ``eval_mc.py`` scores (question ids are NExT-QA's keys when prepared from it)."""
        if self.vocabulary is not None or not rows:
            return {}
        return {"eval_mc.json": {r["id"]: {"prediction": r["predicted"], "answer": r["answer"]} for r in rows}}

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
        metrics = qa_accuracy(scores.float().cpu(), answers.cpu(), types)  # out of the vocabulary (-100): wrong
        if self.vocabulary is not None:
            metrics["out_of_vocabulary"] = float((answers == -100).float().mean())
        metrics = {f"{prefix}/{k}": v for k, v in metrics.items()}
        self.log_dict(metrics, batch_size=len(answers))
        return metrics


def _padded(rows: list[list[int]]) -> torch.Tensor:
    """Ragged lists of node ids -> [len(rows), longest] with -1 padding."""
    table = torch.full((len(rows), max(len(r) for r in rows)), -1, dtype=torch.long)
    for b, r in enumerate(rows):
        table[b, : len(r)] = torch.tensor(r, dtype=torch.long)
    return table


def normalise(answer: str) -> str:
    """Answers compare case- and space-insensitively ("Red " == "red")."""
    return " ".join(answer.lower().split())


def answer_text(meta: dict) -> str:
    """A sample's answer as text: open-ended ``answer_text``, or its correct candidate."""
    if meta.get("answer_text"):
        return meta["answer_text"]
    candidates, answer = meta.get("candidates") or [], meta.get("answer", -1)
    return candidates[answer] if 0 <= answer < len(candidates) else ""


def read_vocabulary(answers: list[str] | str) -> list[str]:
    """The answer vocabulary from a list or a file (one answer per line); duplicates or empties are errors."""
    if isinstance(answers, str):
        path = Path(answers)
        if not path.is_file():
            raise ValueError(f"answer vocabulary file {answers!r} not found")
        answers = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    vocabulary = [str(a).strip() for a in answers]
    seen: dict[str, str] = {}
    for a in vocabulary:
        if not a:
            raise ValueError("the answer vocabulary holds an empty answer")
        if normalise(a) in seen:
            raise ValueError(f"the answer vocabulary holds {a!r} twice (as {seen[normalise(a)]!r})")
        seen[normalise(a)] = a
    if not vocabulary:
        raise ValueError("the answer vocabulary is empty")
    return vocabulary


def training_answers(data_dir: str, top: int | None = None) -> list[tuple[str, int]]:
    """The answers of a prepared QA directory's training split, most frequent first, with their counts."""
    from data_prep.shards import ShardDataset

    data = ShardDataset(data_dir)
    counts: collections.Counter = collections.Counter()
    first: dict[str, str] = {}
    for i in range(len(data)):
        meta = data[i].meta
        text = answer_text(meta)
        if meta.get("split", "train") == "train" and text:
            first.setdefault(normalise(text), text.strip())
            counts[normalise(text)] += 1
    return [(first[a], n) for a, n in counts.most_common(top)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="QA tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("vocabulary", help="print the training split's answers, most frequent first (one per line)")
    p.add_argument("data_dir", help="a prepared QA directory")
    p.add_argument("--top", type=int, default=None, help="keep the N most frequent")
    args = parser.parse_args(argv)
    answers = training_answers(args.data_dir, args.top)
    if not answers:
        print(f"{args.data_dir}: no answers in its training split", file=sys.stderr)
        return 2
    print("\n".join(a for a, _ in answers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
