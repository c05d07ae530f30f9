"""Tiny prepared samples with random features (and a readable answer) for the pipeline tests."""

import torch

from data_prep.assemble import ClipLeaves, TextLeaves, assemble
from data_prep.schema import DEFAULT_FEATURE_DIMS

V, T = DEFAULT_FEATURE_DIMS["video"], DEFAULT_FEATURE_DIMS["text"]
SPLITS = ["train"] * 6 + ["val", "test"]


def text(g, *lengths):
    return TextLeaves([[torch.randn(n, T, generator=g).half() for n in lengths]])


def video(g, clips: int, signal: torch.Tensor | None = None):
    out = []
    for c in range(clips):
        patches = torch.randn(2, 2, 2, V, generator=g)
        if signal is not None:
            patches[..., : len(signal)] += signal
        out.append(ClipLeaves(float(c), c + 1.0, [c + 0.0, c + 0.5], patches.half()))
    return out


def qa_sample(i: int, candidates: int = 5):
    """The answer is readable from the video: its features carry the answer's index as a one-hot."""
    g = torch.Generator().manual_seed(i)
    answer = i % candidates
    signal = torch.zeros(candidates)
    signal[answer] = 4.0
    texts = {"question": text(g, 4)} | {f"answer_{k}": text(g, 1 + k % 3) for k in range(candidates)}
    return assemble(
        f"q{i}",
        video=video(g, 1 + i % 3, signal),
        texts=texts,
        meta={"split": SPLITS[i % 8], "answer": answer, "type": ["direction", "next"][i % 2]},
    )


def caption_sample(i: int):
    g = torch.Generator().manual_seed(100 + i)
    captions = TextLeaves(
        [
            [torch.randn(3 + i % 2, T, generator=g).half()],
            [torch.randn(2, T, generator=g).half(), torch.randn(4, T, generator=g).half()],
        ]
    )
    return assemble(f"v{i}", video=video(g, 1 + i % 2), texts={"captions": captions}, meta={"split": SPLITS[i % 8]})


def open_sample(i: int, answer: str):
    """Open-ended: no candidates; the answer's class is written into the video features."""
    g = torch.Generator().manual_seed(i)
    signal = torch.zeros(4)
    signal[["red", "green", "blue", "white"].index(answer) if answer in ("red", "green", "blue", "white") else 0] = 4.0
    return assemble(
        f"o{i}",
        video=video(g, 1 + i % 3, signal),
        texts={"question": text(g, 4)},
        meta={"split": "train", "answer_text": answer, "type": "colour"},
    )
