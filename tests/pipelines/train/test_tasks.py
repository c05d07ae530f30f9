"""The task modules and the Lightning CLI on tiny prepared datasets (random features, real shard files)."""

import json
import math
import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from data_prep.shards import ShardWriter
from pipelines.cli import main
from pipelines.train.batches import collate, retrieval_collate
from pipelines.train.data import ShardDataModule, SizeBucketSampler
from pipelines.train.lightning_cli import trainer_defaults
from pipelines.train.qa import QAModule
from pipelines.train.retrieval import RetrievalModule, reverse_frames
from tests.pipelines.samples import caption_sample, open_sample, qa_sample


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    with ShardWriter(root / "qa", {"tiny": "qa"}, shard_size=16) as writer:
        for i in range(40):
            writer.add(qa_sample(i))
    with ShardWriter(root / "retrieval", {"tiny": "retrieval"}, shard_size=16) as writer:
        for i in range(24):
            writer.add(caption_sample(i))
    return root


def test_retrieval_collate_splits_videos_and_captions():
    samples = [caption_sample(i) for i in range(3)]
    batch = retrieval_collate(samples)
    assert batch.ids == ["v0", "v1", "v2"]
    assert batch.videos.num_trees == 3 and batch.texts.num_trees == 6
    assert batch.text_video.tolist() == [0, 0, 1, 1, 2, 2]
    assert batch.videos.features["video"].shape[0] == sum(s.features["video"].shape[0] for s in samples)
    assert batch.texts.features["text"].shape[0] == sum(s.features["text"].shape[0] for s in samples)
    assert torch.equal(batch.texts.features["text"][:3], samples[0].features["text"][:3])  # caption 0 of v0
    assert batch.texts.hierarchy.kinds_of(batch.texts.hierarchy.tree_node_ptr[:-1]) == ["section"] * 6
    with pytest.raises(ValueError, match="retrieval needs 'video' and 'captions'"):
        retrieval_collate([qa_sample(0)])


def test_reverse_frames_turns_each_clip_around_in_place():
    batch = retrieval_collate([caption_sample(i) for i in range(3)])
    videos = batch.videos
    h, features = videos.hierarchy, videos.features["video"]
    backwards = reverse_frames(videos)
    assert backwards.hierarchy is h and torch.equal(backwards.leaf_modality, videos.leaf_modality)
    frames = torch.nonzero(h.kind == h.kind_names.index("frame")).flatten().tolist()
    for clip in torch.nonzero(h.kind == h.kind_names.index("clip")).flatten().tolist():
        mine = [f for f in frames if int(h.parent[f]) == clip]
        for a, b in zip(mine, mine[::-1]):  # frame a's leaves now hold frame b's patches, cell by cell
            assert torch.equal(
                backwards.features["video"][h.leaf_start[a] : h.leaf_end[a]], features[h.leaf_start[b] : h.leaf_end[b]]
            )
    assert torch.equal(reverse_frames(backwards).features["video"], features)
    with pytest.raises(ValueError, match="reverse_frames needs video trees"):
        reverse_frames(batch.texts)


def test_retrieval_with_reversed_negatives_trains():
    torch.manual_seed(0)
    model = RetrievalModule(dim=32, depth=1, heads=2, embed_dim=16, dropout=0.0, reversed_negatives=True)
    batch = retrieval_collate([caption_sample(i) for i in range(4)])
    loss = model.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and model.video_head.weight.grad.abs().sum() > 0


def test_qa_scores_mask_missing_candidates():
    torch.manual_seed(0)
    model = QAModule(dim=32, depth=1, heads=2)
    batch = collate([qa_sample(0), qa_sample(1, candidates=3)])
    scores = model(batch)
    assert scores.shape == (2, 5)
    assert torch.isfinite(scores[0]).all() and torch.isinf(scores[1, 3:]).all() and torch.isfinite(scores[1, :3]).all()


@pytest.mark.parametrize(
    "mixer, head, layout",
    [
        ("hsa", "readout", "joint"),
        ("flat", "readout", "joint"),
        ("mean", "readout", "joint"),
        ("hsa", "pointer", "joint"),
        ("flat", "pointer", "joint"),
        ("mean", "pointer", "question_in_clips"),
        ("hsa", "pointer", "question_in_clips"),
    ],
)
def test_qa_learns_a_readable_answer(mixer, head, layout):
    """Overfitting one batch: the answer's index is written into the video features."""
    torch.manual_seed(0)
    model = QAModule(mixer=mixer, dim=32, depth=2, heads=2, dropout=0.0, head=head, layout=layout)
    batch = collate([qa_sample(i) for i in range(10)])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(batch), model.answers(batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_open_ended_qa_classifies_over_the_vocabulary(tmp_path):
    torch.manual_seed(0)
    vocabulary = tmp_path / "answers.txt"
    vocabulary.write_text("red\nGreen\nblue\n\nwhite\n")
    model = QAModule(dim=32, depth=2, heads=2, dropout=0.0, answers=str(vocabulary))
    assert model.vocabulary == ["red", "Green", "blue", "white"] and model.hparams["answers"] == model.vocabulary
    names = ["red", "green", "blue", "white"]
    batch = collate([open_sample(i, names[i % 4]) for i in range(12)] + [open_sample(12, "purple")])
    answers = model.answers(batch)
    assert answers.tolist() == [i % 4 for i in range(12)] + [-100]  # "green" matches "Green"; purple: unknown
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(batch)[:12], answers[:12])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        assert model(batch).shape == (13, 4) and (model(batch)[:12].argmax(1) == answers[:12]).all()
        model._outputs = []
        model._collect(batch)
        metrics = model._evaluate("val")
        rows = model.predict_step(batch, 0)
    assert metrics["val/acc"] == pytest.approx(12 / 13) and metrics["val/out_of_vocabulary"] == pytest.approx(1 / 13)
    assert rows[0]["predicted"] == "red" and rows[-1]["answer"] == "purple" and len(rows[0]["top"]) == 4
    # a batch of unknown answers only: a zero loss, not a NaN that would stop the run
    assert model.training_step(collate([open_sample(13, "purple")]), 0).item() == 0
    restored = QAModule(**{k: v for k, v in model.hparams.items()})  # what load_from_checkpoint does
    assert restored.vocabulary == model.vocabulary


@pytest.mark.parametrize(
    "answers, message",
    [([], "empty"), (["a", " A"], "twice"), (["a", " "], "empty answer"), ("missing.txt", "not found")],
)
def test_bad_answer_vocabulary_is_named(answers, message):
    with pytest.raises(ValueError, match=message):
        QAModule(dim=16, depth=1, heads=2, answers=answers)


def test_vocabulary_tool_lists_training_answers(tmp_path, capsys):
    from pipelines.train.qa import main as qa_main

    with ShardWriter(tmp_path / "qa", {"tiny": "qa"}, shard_size=8) as writer:
        for i, answer in enumerate(["red", "blue", "Red", "red ", "green"]):
            writer.add(open_sample(i, answer))
    assert qa_main(["vocabulary", str(tmp_path / "qa"), "--top", "2"]) == 0
    assert capsys.readouterr().out.split("\n")[:2] == ["red", "blue"]


def test_retrieval_loss_falls_and_metrics_run(shards):
    torch.manual_seed(0)
    model = RetrievalModule(dim=32, depth=1, heads=2, embed_dim=16, dropout=0.0)
    batch = retrieval_collate([caption_sample(i) for i in range(8)])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for step in range(40):
        loss = model.training_step(batch, step)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3 * first
    model._collect(batch)
    metrics = model._evaluate("val")
    assert metrics["val/t2v_R@1"] == 1.0 and metrics["val/v2t_R@1"] == 1.0  # the training batch, memorised


def test_non_finite_loss_stops_naming_the_step_and_samples():
    model = QAModule(dim=32, depth=1, heads=2)
    batch = collate([qa_sample(0), qa_sample(1)])
    batch.features["video"][0, 0] = float("nan")
    with pytest.raises(
        FloatingPointError,
        match=r"non-finite loss nan at global step 0, epoch 0, batch 3 "
        r"\(samples q0, q1\)",
    ):
        model.training_step(batch, 3)


class Interrupt(pl.Callback):
    """Stands in for a kill: interrupts the run as epoch ``epoch`` starts (after the previous one's checkpoint)."""

    def __init__(self, epoch: int = 1):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


class InterruptAtStep(pl.Callback):
    """Stands in for a kill in the middle of an epoch: interrupts the run before training step ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def recipe(
    tmp_path, shards, task: str, interrupt: bool = False, every_n_steps: int = 0, interrupt_at_step: int | None = None
) -> str:
    config = {
        "seed_everything": 0,
        "model": {
            "class_path": "pipelines.train.qa.QAModule"
            if task == "qa"
            else "pipelines.train.retrieval.RetrievalModule",
            "init_args": {
                "dim": 32,
                "depth": 1,
                "heads": 2,
                "warmup_steps": 2,
                "content_position": True,
                "frame_differences": True,
            },
        },
        "data": {"data_dir": str(shards / task), "task": task, "batch_size": 4},
        "trainer": {
            "max_epochs": 2,
            "accelerator": "cpu",
            "default_root_dir": str(tmp_path / "run"),
            "enable_progress_bar": False,
            "use_distributed_sampler": False,
            "num_sanity_val_steps": 0,
            "logger": [
                {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(tmp_path / "run"), "name": "csv"},
                },
                {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": str(tmp_path / "run"), "name": "tb"},
                },
            ],
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "monitor": "val/acc" if task == "qa" else "val/t2v_R@1",
                        "mode": "max",
                        "filename": "best-{epoch}",
                    },
                },
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "filename": "latest-{epoch}-{step}",
                        "every_n_epochs": 1,
                        "save_top_k": -1,
                        "save_on_train_epoch_end": True,
                    },
                },
                {
                    "class_path": "pipelines.train.callbacks.PredictionWriter",
                    "init_args": {"output_dir": str(tmp_path / "run" / "predictions")},
                },
            ]
            + ([{"class_path": "tests.pipelines.train.test_tasks.Interrupt"}] if interrupt else [])
            + (
                [
                    {
                        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",  # mid-epoch, as the recipes
                        "init_args": {
                            "filename": "step-{step}",
                            "every_n_train_steps": every_n_steps,
                            "save_top_k": -1,
                        },
                    }
                ]
                if every_n_steps
                else []
            )
            + (
                [
                    {
                        "class_path": "tests.pipelines.train.test_tasks.InterruptAtStep",
                        "init_args": {"step": interrupt_at_step},
                    }
                ]
                if interrupt_at_step is not None
                else []
            ),
        },
    }
    path = tmp_path / f"{task}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("task", ["qa", "retrieval"])
def test_cli_fit_test_and_logs(tmp_path, shards, task):
    config = recipe(tmp_path, shards, task)
    assert main(["fit", "-c", config, "--model.init_args.mixer", "flat", "--trainer.max_epochs=1"]) == 0
    checkpoints = tmp_path / "run" / "csv" / "version_0" / "checkpoints"
    assert len(list(checkpoints.glob("best-epoch=0*.ckpt"))) == 1
    last = next(checkpoints.glob("latest-*.ckpt"))
    assert (tmp_path / "run" / "csv" / "version_0" / "metrics.csv").read_text().count("\n") > 1
    assert list((tmp_path / "run" / "tb").rglob("events.out.tfevents.*"))
    assert main(["test", "-c", config, "--ckpt_path", str(last)]) == 0
    assert main(["predict", "-c", config, "--ckpt_path", str(last), "--data.predict_split", "val"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions" / "predictions.jsonl").open()]
    data = ShardDataModule(str(shards / task), task=task)
    data.setup()
    val = data.splits["val"]
    if task == "qa":  # one row per question, its scores a distribution over its own candidates
        assert sorted(r["id"] for r in rows) == sorted(s.id for s in val)
        for r in rows:
            assert abs(sum(math.exp(x) for x in r["scores"]) - 1) < 1e-4 and r["predicted"] == r["scores"].index(
                max(r["scores"])
            )
    else:  # a unit embedding per video and per caption
        assert sorted(r["id"] for r in rows if r["kind"] == "video") == sorted(s.id for s in val)
        assert sum(r["kind"] == "caption" for r in rows) == 2 * len(val)
        assert all(abs(sum(x * x for x in r["embedding"]) - 1) < 1e-4 for r in rows)


def test_cli_print_config(tmp_path, shards, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "-c", recipe(tmp_path, shards, "qa"), "--model.init_args.depth=3", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["depth"] == 3 and printed["data"]["task"] == "qa"


def latest(run_dir, epoch: int | None = None):
    """The newest end-of-epoch checkpoint of a run (or that of ``epoch``)."""
    found = sorted(run_dir.rglob("latest-*.ckpt"), key=lambda p: int(p.stem.split("step=")[1]))
    return found[-1] if epoch is None else next(p for p in found if f"epoch={epoch}-" in p.name)


def final_weights(run_dir):
    ckpt = torch.load(latest(run_dir), weights_only=False)
    return ckpt["state_dict"], ckpt["global_step"]


def assert_identical(a: dict, b: dict) -> None:
    """Two state dicts equal bit for bit (largest difference 0, as docs/training.md says)."""
    assert a.keys() == b.keys()
    differ = {
        name: (a[name].float() - b[name].float()).abs().max().item() for name in a if not torch.equal(a[name], b[name])
    }
    worst = sorted(differ.items(), key=lambda item: -item[1])[:3]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, the most: {worst}"


@pytest.fixture
def four_threads():
    """Four CPU threads, however many cores: the CPU kernels split their work four ways, and with more threads than
    cores their timing varies (a loaded machine), which is what let atomic adds come in another order. The thread
    count and torch's deterministic setting (which a Trainer sets process-wide) are restored after."""
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before[0])
    torch.use_deterministic_algorithms(before[1], warn_only=warn_only)


def test_the_trainer_defaults_make_the_backward_of_indexing_deterministic(tmp_path, four_threads):
    """What made two runs with the same seed part (by 5e-4 after 2 epochs of the retrieval recipe, on 2 threads):
    on CPU with several threads, the backward of ``x[index]`` (index_put with accumulate) adds the gradients of
    repeated indices with atomic adds from every thread, in the order they arrive. The shared trainer block's
    ``deterministic`` turns on torch's serial version. Without it the 10 repeats below give 10 different gradients
    (up to 4e-5 apart, with 2 threads as with 4)."""
    pl.Trainer(
        deterministic=trainer_defaults()["deterministic"], accelerator="cpu", logger=False, default_root_dir=tmp_path
    )
    assert torch.are_deterministic_algorithms_enabled()
    g = torch.Generator().manual_seed(0)
    index, grad = torch.randint(0, 16, (4000,), generator=g), torch.randn(4000, 32, generator=g)
    grads = []
    for _ in range(10):
        x = torch.zeros(16, 32, requires_grad=True)
        x[index].backward(grad)
        grads.append(x.grad)
    assert all(torch.equal(other, grads[0]) for other in grads[1:])


@pytest.mark.parametrize("task", ["qa", "retrieval"])
def test_two_fits_with_the_same_seed_give_identical_weights(tmp_path, shards, task, four_threads):
    """Same recipe, same seed, two runs: the same weights bit for bit. Dropout is on, and the width and batch are
    large enough (one batch of all 30 or 18 training samples, width 192) that the indexing backward takes the
    multi-threaded path of the test above: without the trainer block's ``deterministic`` the two runs differed in
    each of 4 tries per task (QA by up to 5e-4, retrieval by up to 3e-5)."""
    runs = [tmp_path / "one", tmp_path / "two"]
    args = ["--model.init_args.dim=192", "--model.init_args.dropout=0.1", "--data.batch_size=32"]
    for run in runs:
        run.mkdir()
        assert main(["fit", "-c", recipe(run, shards, task), *args]) == 0
    (a, steps_a), (b, steps_b) = (final_weights(run / "run") for run in runs)
    assert steps_a == steps_b == 2
    assert_identical(a, b)


def test_resuming_with_another_cpu_thread_count_warns(tmp_path, shards, four_threads):
    """A checkpoint records its run's CPU thread count; resuming with another one cannot be exact (CPU kernels split
    their sums by it) and says so."""
    first, resumed = tmp_path / "first", tmp_path / "resumed"
    first.mkdir(), resumed.mkdir()
    assert main(["fit", "-c", recipe(first, shards, "qa"), "--trainer.max_epochs=1"]) == 0
    checkpoint = latest(first / "run")
    assert torch.load(checkpoint, weights_only=True)["cpu_threads"] == 4
    torch.set_num_threads(1)
    with pytest.warns(UserWarning, match="saved with 4 CPU threads with 1: .* OMP_NUM_THREADS=4 resumes exactly"):
        assert main(["fit", "-c", recipe(resumed, shards, "qa"), "--ckpt_path", str(checkpoint)]) == 0


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, shards):
    """2 epochs straight == the same run interrupted after epoch 1, then resumed from its latest checkpoint."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    straight.mkdir(), split.mkdir()
    assert main(["fit", "-c", recipe(straight, shards, "qa")]) == 0
    with pytest.raises(SystemExit):  # Lightning exits with status 1 after an interrupt
        main(["fit", "-c", recipe(split, shards, "qa", interrupt=True)])
    assert final_weights(split / "run")[1] == 8  # stopped after one epoch of 8 steps
    first = latest(split / "run")
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    assert main(["fit", "-c", recipe(resumed, shards, "qa"), "--ckpt_path", str(first)]) == 0
    a, steps_a = final_weights(straight / "run")
    b, steps_b = final_weights(resumed / "run")
    assert steps_a == steps_b
    assert_identical(a, b)


def test_resume_from_a_mid_epoch_checkpoint_gives_the_same_weights(tmp_path, shards):
    """Killed mid-epoch (after 7 of epoch 0's 8 steps), resumed from the last step checkpoint (step 5): the
    resumed run trains on exactly the 3 batches of epoch 0 not yet trained on, then epoch 1, with the dropout
    stream the uninterrupted run had at step 5. Dropout is on and batches are shuffled, so a replayed or skipped
    batch, or another random state, would change the weights."""
    runs = {name: tmp_path / name for name in ("straight", "split", "resumed")}
    for path in runs.values():
        path.mkdir()
    args = ["--model.init_args.dropout=0.1"]
    assert main(["fit", "-c", recipe(runs["straight"], shards, "qa", every_n_steps=5), *args]) == 0
    with pytest.raises(SystemExit):  # Lightning exits with status 1 after an interrupt
        main(["fit", "-c", recipe(runs["split"], shards, "qa", every_n_steps=5, interrupt_at_step=7), *args])
    checkpoints = sorted(p.name for p in (runs["split"] / "run").rglob("step-*.ckpt"))
    assert checkpoints == ["step-step=5.ckpt"]  # the kill came 2 steps after it
    last = next((runs["split"] / "run").rglob("step-step=5.ckpt"))
    assert (
        main(["fit", "-c", recipe(runs["resumed"], shards, "qa", every_n_steps=5), *args, "--ckpt_path", str(last)])
        == 0
    )
    # epoch 0 ended after its 8 batches: Lightning counts the 5 restored ones as fetched and stops after 3 more
    # (which ones is the sampler's part: replaying batches 0-2 would end there too, with other weights)
    assert latest(runs["resumed"] / "run", epoch=0).name == "latest-epoch=0-step=8.ckpt"
    a, steps_a = final_weights(runs["straight"] / "run")
    b, steps_b = final_weights(runs["resumed"] / "run")
    assert steps_a == steps_b == 16
    assert_identical(a, b)


class RecordLoss(pl.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach().float())


# On a GPU (MMHSA_TEST_CUDA=1) the same test runs on CUDA: HSA's "auto" backend is then the Triton kernels.
ACCELERATORS = ["cpu"] + (["cuda"] if os.environ.get("MMHSA_TEST_CUDA") == "1" and torch.cuda.is_available() else [])


@pytest.mark.parametrize("accelerator", ACCELERATORS)
@pytest.mark.parametrize("task", ["qa", "retrieval"])
def test_bf16_mixed_precision(shards, task, accelerator):
    """`--trainer.precision bf16-mixed` (HSA under autocast: the torch backend on CPU, Triton on CUDA): one
    training step gives a finite loss and updates the fp32 weights; the forward under bf16 autocast is within
    2e-2 (abs and rel; bf16 keeps 8 bits, about 2e-3 relative per rounding, measured up to 5e-3 on CPU) of fp32."""
    torch.manual_seed(0)
    module = QAModule if task == "qa" else RetrievalModule
    model = module(dim=32, depth=2, heads=2, dropout=0.0, content_position=True).to(accelerator)
    data = ShardDataModule(str(shards / task), task=task, batch_size=4)
    data.setup("fit")
    batch = (collate if task == "qa" else retrieval_collate)(data.splits["train"][:4]).to(accelerator)

    def outputs():
        if task == "qa":
            return [model(batch)]
        return [model.embed(batch.videos, "video"), model.embed(batch.texts, "text")]

    model.eval()
    with torch.no_grad():
        full = outputs()
        with torch.autocast(accelerator, dtype=torch.bfloat16):
            mixed = outputs()
    for a, b in zip(full, mixed):
        assert a.dtype == torch.float32 and b.dtype == torch.bfloat16
        torch.testing.assert_close(b.float(), a, atol=2e-2, rtol=2e-2)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    record = RecordLoss()
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        precision="bf16-mixed",
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[record],
    )
    trainer.fit(model, data)
    assert len(record.losses) == 1 and torch.isfinite(record.losses[0])
    after = model.state_dict()
    assert all(after[k].dtype == before[k].dtype and torch.isfinite(after[k]).all() for k in before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    head = "scorer.0.weight" if task == "qa" else "text_head.weight"
    assert {head, "encoder.blocks.0.attn.qkv.0.weight", "encoder.adapters.video.weight"} <= changed, sorted(changed)


def test_missing_or_corrupt_shard_is_named(tmp_path, shards):
    import shutil

    copy = tmp_path / "qa"
    shutil.copytree(shards / "qa", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    shard = copy / manifest["shards"][1]["file"]
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match=f"{shard.name}: checksum"):
        ShardDataModule(str(copy)).setup("fit")
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=shard.name):
        ShardDataModule(str(copy)).setup("fit")


def test_sampler_shards_batches_across_ranks():
    sizes = list(range(1, 42))
    for shuffle in (True, False):
        ranks = [list(SizeBucketSampler(sizes, 4, shuffle=shuffle, seed=1, rank=r, world_size=3)) for r in range(3)]
        everything = sorted(i for batches in ranks for b in batches for i in b)
        if shuffle:  # training: as many steps on every rank, a few samples twice to get there
            assert len({len(b) for b in ranks}) == 1 and set(everything) == set(range(41))
        else:  # evaluation: every sample exactly once
            assert everything == list(range(41))
    with pytest.raises(ValueError, match="rank 3"):
        SizeBucketSampler(sizes, 4, rank=3, world_size=3)


def test_sampler_resumes_mid_epoch_on_every_rank():
    """A state saved after k batches: the next iteration over that epoch gives each rank the rest of its own
    batches; over another epoch, all of them; only once."""
    sizes = list(range(1, 42))
    for rank in range(3):
        full = [
            list(SizeBucketSampler(sizes, 4, seed=1, rank=rank, world_size=3, epoch_source=lambda: e)) for e in (0, 1)
        ]
        epoch = 0
        sampler = SizeBucketSampler(sizes, 4, seed=1, rank=rank, world_size=3, epoch_source=lambda: epoch)
        it = iter(sampler)
        taken = [next(it) for _ in range(2)]
        state = sampler.state_dict()
        assert state == {"epoch": 0, "batches": 2} and taken == full[0][:2]
        resumed = SizeBucketSampler(sizes, 4, seed=1, rank=rank, world_size=3, epoch_source=lambda: epoch)
        resumed.load_state_dict(state)
        assert list(resumed) == full[0][2:] and resumed.state_dict()["batches"] == len(full[0])
        assert list(resumed) == full[0]  # the next epoch (here the same one again) is whole
        resumed.load_state_dict(state)
        epoch = 1
        assert list(resumed) == full[1]  # a state of another epoch leaves nothing out
    # with the trainer's count (progress_source), the count is read as the first batch is asked for
    done = 0
    sampler = SizeBucketSampler(sizes, 4, seed=1, progress_source=lambda: done)
    it = iter(sampler)
    done = 3
    assert list(it) == list(SizeBucketSampler(sizes, 4, seed=1))[3:] and sampler.state_dict()["batches"] == 3


@pytest.mark.slow
def test_ddp_two_gloo_processes(tmp_path, shards):
    """`mmhsa fit` with Lightning's DDP strategy, 2 CPU processes (gloo): batches split, metrics gathered."""
    import subprocess
    import sys

    config = recipe(tmp_path, shards, "qa")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "fit",
            "-c",
            config,
            "--trainer.devices",
            "2",
            "--trainer.strategy",
            "ddp",
            "--trainer.max_epochs",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    checkpoint = torch.load(latest(tmp_path / "run"), weights_only=False)
    assert checkpoint["global_step"] == 4  # 30 training samples, batches of 4: 8 batches over 2 ranks
    score = float(
        checkpoint["callbacks"][next(k for k in checkpoint["callbacks"] if "val/acc" in k)]["best_model_score"]
    )
    # 5 validation questions in batches of 4 (4 on one rank, 1 on the other): gathered, the accuracy is k / 5
    assert abs(score * 5 - round(score * 5)) < 1e-6


RECIPES = sorted(str(p) for p in (Path(__file__).parents[3] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("recipe_path", RECIPES, ids=[Path(p).stem for p in RECIPES])
def test_every_training_recipe_parses(recipe_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "-c", recipe_path, "--print_config"])
    assert done.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("pipelines.") and printed["data"]["data_dir"]


@pytest.mark.parametrize(
    "flags",
    [["--trainer.logger", "false"], ["--trainer.enable_checkpointing", "false"], ["--trainer.fast_dev_run", "true"]],
    ids=["no-logger", "no-checkpointing", "fast-dev-run"],
)
def test_the_shared_trainer_block_follows_the_flags(tmp_path, shards, flags):
    """The recipes' shared callbacks (checkpoints, LR monitor) step aside for the flags users pass."""
    small = ["--model.init_args.dim", "32", "--model.init_args.depth", "1", "--model.init_args.heads", "2"]
    args = ["fit", "-c", "configs/qa_synthetic.yaml", "--data.data_dir", str(shards / "qa"), *small,
            "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "1",
            "--trainer.enable_progress_bar", "false"]  # fmt: skip
    assert main([*args, *flags]) == 0
    assert bool(list(tmp_path.rglob("*.ckpt"))) == (flags[0] == "--trainer.logger")  # checkpoints unless turned off
