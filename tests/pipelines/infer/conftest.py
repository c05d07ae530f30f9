"""Shared by the inference tests: real videos (the synthetic generator's H.264 files plus broken files) and
tiny task modules trained for one step on random features, saved by Lightning with a real featurization
recorded (fixed windows instead of TransNetV2 to stay quick; the real EfficientNet-Lite0 and MiniLM)."""

from dataclasses import asdict
from pathlib import Path

import lightning.pytorch as pl
import pytest

from data_prep.assemble import Limits
from data_prep.clips import WindowConfig
from data_prep.featurize import VideoConfig
from data_prep.shards import ShardWriter
from data_prep.synthetic import CorpusConfig, generate
from mmhsa.encoders.frames import PatchEncoderConfig
from mmhsa.encoders.text import TextEncoderConfig
from pipelines.infer.index import build_index
from pipelines.train.data import ShardDataModule
from pipelines.train.qa import QAModule
from pipelines.train.rerank import RerankModule
from pipelines.train.retrieval import RetrievalModule
from tests.pipelines.samples import caption_sample, open_sample, qa_sample

SIZES = dict(dim=32, depth=1, heads=2, pos_dim=4, dropout=0.0)
FEATURIZATION = {
    "video": asdict(VideoConfig(clips="windows", windows=WindowConfig(1.0, min_clip_seconds=0.3), frames_per_clip=2)),
    "frames": asdict(PatchEncoderConfig()),
    "text": asdict(TextEncoderConfig()),
    "limits": asdict(Limits(max_clips=3, max_frames=2, max_tokens=16)),
}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    generate(root, CorpusConfig(num_videos=5, height=64, width=64, min_scenes=2, max_scenes=3))
    videos = root / "videos"
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "notes.mp4").write_text("not a video\n" * 20)
    return root


def _train(tmp: Path, task: str, module, samples, seed: int = 0) -> Path:
    data = tmp / f"data-{task}-{seed}"
    with ShardWriter(data, {"task": {"name": task}, **FEATURIZATION}, shard_size=64) as writer:
        for s in samples:
            writer.add(s)
    pl.seed_everything(seed)
    trainer = pl.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, ShardDataModule(str(data), task=task, batch_size=8))
    path = tmp / f"{task}-{seed}.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("models")
    pl.seed_everything(0)
    retrieval = _train(tmp, "retrieval", RetrievalModule(embed_dim=16, **SIZES), [caption_sample(i) for i in range(8)])
    other = _train(tmp, "retrieval", RetrievalModule(embed_dim=16, **SIZES), [caption_sample(i) for i in range(8)], 1)
    qa_model = QAModule(head_hidden=16, head="pointer", **SIZES)  # the recipes' head
    qa = _train(tmp, "qa", qa_model, [qa_sample(i) for i in range(8)])
    rerank = _train(
        tmp,
        "retrieval",
        RerankModule(dual_encoder=str(retrieval), negatives=2, head_hidden=16, **SIZES),
        [caption_sample(i) for i in range(8)],
        2,
    )
    qa_open = _train(
        tmp,
        "qa",
        QAModule(head_hidden=16, answers=["red", "green", "blue", "white"], **SIZES),
        [open_sample(i, ["red", "green", "blue", "white"][i % 4]) for i in range(8)],
        1,
    )
    return {"retrieval": retrieval, "other": other, "qa": qa, "rerank": rerank, "qa_open": qa_open}


@pytest.fixture(scope="module")
def index(corpus, models, tmp_path_factory):
    out = tmp_path_factory.mktemp("index") / "ix"
    report = build_index([corpus / "videos"], out, checkpoint=str(models["retrieval"]), batch_size=2, progress=False)
    return out, report
