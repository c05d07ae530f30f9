"""``mmhsa ask``: questions about videos with a trained QA model.

One question (``mmhsa ask VIDEO "question" --choices "a" "b" ...``; an open-ended model answers from its
vocabulary, without choices) or a NExT-QA CSV of them (multiple-choice models)
(``mmhsa ask --csv questions.csv --videos DIR``; each video is featurized once for all its questions).
Each video goes through the featurization the model was trained with; each question becomes the
joint tree of training (video, question, answer_0..answer_K-1) and the model scores every choice.
A video that cannot be read fails its questions (reported with the reason), the others are answered.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

from data_prep.assemble import ClipLeaves, assemble
from data_prep.datasets import QAItem, read_nextqa
from data_prep.schema import MAX_ANSWERS, answer_key
from data_prep.text import check_text, split_sentences
from pipelines.train.batches import collate
from pipelines.train.metrics import qa_accuracy

from .checkpoints import TrainedModel, load_model

__all__ = ["Asker"]


class Asker:
    """A QA model with its featurization.

    Args:
        checkpoint: a QA checkpoint (default: the one ``make train`` leaves).
        prepared: featurization source for checkpoints that do not carry it.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        prepared: str | None = None,
        device: str = "cpu",
        trust_checkpoint: bool = False,
    ):
        self.model: TrainedModel = load_model(
            checkpoint, "qa", prepared=prepared, device=device, trust=trust_checkpoint
        )
        self.vocabulary: list[str] | None = getattr(self.model.module, "vocabulary", None)  # open-ended

    def clips(self, video: str | Path) -> list[ClipLeaves]:
        """The video's clips, featurized as in training (clips subsampled to the model's limit).

        Raises:
            ValueError: naming the video and the problem (unreadable, no clip).
        """
        featurizer = self.model.videos
        return featurizer.featurize(featurizer.open_group([Path(video)])[0], self.model.featurization.limits.max_clips)

    def sample(self, clips: list[ClipLeaves], question: str, choices: list[str], sample_id: str = "question"):
        """The joint tree of one question (what the QA model was trained on)."""
        check_text(question, f"{sample_id}: the question")
        for k, choice in enumerate(choices):
            check_text(choice, f"{sample_id}: choice {k}")
        if self.vocabulary is not None:
            if choices:
                raise ValueError(
                    f"{sample_id}: this model is open-ended (answers from its vocabulary of "
                    f"{len(self.vocabulary)}); ask without choices"
                )
        elif not 2 <= len(choices) <= MAX_ANSWERS:
            raise ValueError(f"{sample_id}: give 2 to {MAX_ANSWERS} choices, got {len(choices)}")
        empty = [i for i, c in enumerate(choices) if not c.strip()]
        if empty:
            raise ValueError(f"{sample_id}: choice {empty[0]} is empty")
        texts = [split_sentences(question)] + [split_sentences(c) for c in choices]
        leaves = self.model.texts(texts)
        named = {"question": type(leaves)([leaves.sections[0]])}
        named.update({answer_key(i): type(leaves)([section]) for i, section in enumerate(leaves.sections[1:])})
        return assemble(sample_id, video=clips, texts=named, limits=self.model.featurization.limits)

    @torch.no_grad()
    def scores(self, samples: list) -> torch.Tensor:
        """[B, K] choice probabilities (padded choices get 0)."""
        module = self.model.module
        return module(collate(samples).to(module.device)).softmax(-1).float().cpu()

    def ask(self, video: str | Path, question: str, choices: list[str] | None = None) -> dict:
        """Answer one question: {"video", "question", "choices", "probabilities", "answer", "answer_text"};
        open-ended, the choices are the model's five most likely answers."""
        choices = list(choices or [])
        probabilities = self.scores([self.sample(self.clips(video), question, choices)])[0]
        if self.vocabulary is not None:
            best = probabilities.topk(min(5, len(self.vocabulary)))
            choices, probabilities = [self.vocabulary[int(i)] for i in best.indices], best.values
        probabilities = probabilities[: len(choices)]
        best = int(probabilities.argmax())
        return {
            "video": str(video),
            "question": question,
            "choices": choices,
            "probabilities": [round(p, 4) for p in probabilities.tolist()],
            "answer": best,
            "answer_text": choices[best],
        }

    def ask_many(self, items: list[QAItem], batch_size: int = 16) -> tuple[list[dict], list[dict]]:
        """Answer labelled questions (NExT-QA rows), each video featurized once.

        Returns:
            predictions (id, video, type, answer, predicted, probabilities) and failures (id, video, error).
        """
        if self.vocabulary is not None:
            raise ValueError(
                "labelled questions (NExT-QA CSV) are multiple choice: use a multiple-choice model, "
                "not an open-ended one"
            )
        by_video: dict[Path, list[QAItem]] = defaultdict(list)
        for item in items:
            by_video[item.video].append(item)
        predictions, failures = [], []
        for video, questions in by_video.items():
            try:
                clips = self.clips(video)
            except ValueError as err:
                failures += [{"id": q.id, "video": str(video), "error": str(err)} for q in questions]
                continue
            for at in range(0, len(questions), batch_size):
                chunk, samples = [], []
                for q in questions[at : at + batch_size]:
                    try:
                        samples.append(self.sample(clips, q.question, q.candidates, q.id))
                        chunk.append(q)
                    except ValueError as err:
                        failures.append({"id": q.id, "video": str(video), "error": str(err)})
                if not samples:
                    continue
                for q, p in zip(chunk, self.scores(samples)):
                    p = p[: len(q.candidates)]
                    predictions.append(
                        {
                            "id": q.id,
                            "video": str(video),
                            "type": q.type,
                            "answer": q.answer,
                            "predicted": int(p.argmax()),
                            "probabilities": [round(x, 4) for x in p.tolist()],
                        }
                    )
        return predictions, failures


def answer_csv(asker: Asker, csv_path: str, video_dir: str, out: str | None) -> dict:
    """Answer every question of a NExT-QA CSV; accuracy overall and per type; predictions to ``out``."""
    items, problems = read_nextqa({"test": csv_path}, video_dir)
    predictions, failures = asker.ask_many(items)
    failures = [{"id": qid, "video": "", "error": problem} for qid, problem in problems] + failures
    report = {"questions": len(items) + len(problems), "answered": len(predictions), "failed": failures}
    if predictions:
        scores = torch.full((len(predictions), MAX_ANSWERS), float("-inf"))
        for row, p in enumerate(predictions):
            scores[row, : len(p["probabilities"])] = torch.tensor(p["probabilities"])
        answers = torch.tensor([p["answer"] for p in predictions])
        report["accuracy"] = qa_accuracy(scores, answers, [p["type"] for p in predictions])
    if out:
        with open(out, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, ["id", "video", "type", "answer", "predicted", "probabilities"])
            writer.writeheader()
            writer.writerows({**p, "probabilities": json.dumps(p["probabilities"])} for p in predictions)
    return report


def print_answer(result: dict, stream=None) -> None:
    stream = stream or sys.stdout
    print(f"{result['video']}\nQ: {result['question']}", file=stream)
    for i, (choice, p) in enumerate(zip(result["choices"], result["probabilities"])):
        mark = "->" if i == result["answer"] else "  "
        print(f" {mark} {i}. {choice}  ({p:.3f})", file=stream)
