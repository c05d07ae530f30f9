"""Batch inference on real videos: index (resume, kill -9, corrupt shards, DDP), search, ask, explain.

Videos come from the synthetic generator (real H.264 files) plus broken files; models are tiny task
modules trained for one step on random features, saved by Lightning with a real featurization recorded
(fixed windows instead of TransNetV2 to stay quick; the real EfficientNet-Lite0 and MiniLM).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from data_prep.featurize import Featurization
from data_prep.shards import ShardWriter
from mmhsa import Hierarchy
from mmhsa.encoders.frames import PatchEncoderConfig
from mmhsa.nn.attention import HSAAttention
from pipelines.cli import main
from pipelines.infer.ask import Asker, answer_csv
from pipelines.infer.checkpoints import TrainedModel, load_model
from pipelines.infer.explain import explain
from pipelines.infer.index import Index, IndexMismatch, build_index, list_videos
from pipelines.infer.search import Searcher, top_k
from pipelines.train.data import ShardDataModule
from pipelines.train.rerank import RerankModule
from tests.pipelines.samples import caption_sample

from .conftest import FEATURIZATION, SIZES


def test_checkpoint_records_featurization(models):
    model = load_model(models["retrieval"], "retrieval")
    assert model.featurization.video.clips == "windows" and model.featurization.limits.max_clips == 3
    assert model.version.startswith("RetrievalModule:")
    with pytest.raises(ValueError, match="QAModule.*needs a RetrievalModule"):
        load_model(models["qa"], "retrieval")
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        load_model("nowhere.ckpt", "qa")


def test_another_featurization_is_refused_naming_both(models, tmp_path):
    """Clips and limits may change for new videos; the encoders a model was trained on may not."""
    recipe = tmp_path / "recipe.yaml"
    other = {**FEATURIZATION, "frames": asdict(PatchEncoderConfig(image_size=160))}
    recipe.write_text(yaml.safe_dump(other))
    with pytest.raises(ValueError, match="was trained on frames encoded with .*image_size=128.*image_size=160"):
        load_model(models["retrieval"], "retrieval", prepared=recipe)
    vit = Featurization.from_config(
        {**FEATURIZATION, "frames": asdict(PatchEncoderConfig(name="vit_tiny_patch16_224", weights="random"))}
    )
    model = load_model(models["retrieval"], "retrieval")
    with pytest.raises(ValueError, match="reads 1280-wide video features, but timm:vit_tiny_patch16_224.* gives 192"):
        _ = TrainedModel(model.module, vit, model.path, model.version).videos  # built on first use


def test_not_a_checkpoint_is_named(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="bad.ckpt: not a readable"):
        load_model(bad, "retrieval")


def test_checkpoint_of_an_earlier_layout_is_named(models, tmp_path):
    """Weights that no longer fit (here: the path positions' maps cut to half their inputs) -> a clear error."""
    state = torch.load(models["retrieval"], weights_only=False)
    key = next(k for k in state["state_dict"] if k.endswith("path.nodes.time.weight"))
    state["state_dict"][key] = state["state_dict"][key][:, :16]
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    with pytest.raises(ValueError, match=r"old.ckpt: its weights do not fit this version of RetrievalModule .*time"):
        load_model(old, "retrieval")


def test_index_reports_bad_files_and_indexes_the_rest(corpus, index):
    out, report = index
    ix = Index.open(out)
    good = sorted(str(p.resolve()) for p in (corpus / "videos").glob("video*.mp4"))
    assert sorted(v["path"] for v in ix.videos) == good
    assert sorted(Path(p).name for p in report["failed"]) == ["empty.mp4", "notes.mp4"]
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert {Path(f["path"]).name: f["stage"] for f in failures} == {"empty.mp4": "decode", "notes.mp4": "decode"}
    assert all("empty.mp4" in f["error"] or "notes.mp4" in f["error"] for f in failures)
    # every clip belongs to its video, within its duration, and all vectors are unit length
    assert len(ix.clip_vectors) == sum(len(v["clips"]) for v in ix.videos) == len(ix.clip_times)
    for row, video in enumerate(ix.videos):
        times = ix.clip_times[ix.clip_video == row]
        assert torch.allclose(times, torch.tensor(video["clips"]), atol=1e-3)
        assert times[-1, 1] <= video["duration"] + 1e-3 and video["frames"] > 0
    assert torch.allclose(ix.video_vectors.norm(dim=1), torch.ones(len(ix.videos)), atol=1e-5)
    assert torch.allclose(ix.clip_vectors.norm(dim=1), torch.ones(len(ix.clip_vectors)), atol=1e-5)


def test_rerun_skips_redoes_lost_and_corrupt_shards(corpus, models, index, tmp_path):
    out = tmp_path / "ix"
    shutil.copytree(index[0], out)
    before = Index.open(out)
    again = build_index([corpus / "videos"], out, checkpoint=str(models["retrieval"]), batch_size=2, progress=False)
    assert again["written"]["videos"] == 0 and again["already_indexed"] == 5
    records = sorted((out / "shards").glob("*.json"))
    with_videos = [r for r in records if json.loads(r.read_text())["videos"]]
    # a record lost (killed between shard and record): the shard is ignored, its videos are redone
    lost = with_videos[0]
    lost_videos = {v["path"] for v in json.loads(lost.read_text())["videos"]}
    lost.unlink()
    assert Index.open(out).incomplete == [str(lost.with_suffix(".pt"))]
    assert Index.open(out).indexed == before.indexed - lost_videos
    # a corrupt shard: reported, set aside, redone
    shard = with_videos[1].with_suffix(".pt")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert Index.open(out).corrupt == [f"{shard.name}: checksum mismatch"]
    report = build_index([corpus / "videos"], out, checkpoint=str(models["retrieval"]), batch_size=2, progress=False)
    assert report["corrupt_set_aside"] == [f"{shard.name}: checksum mismatch"]
    assert shard.with_name(shard.name + ".corrupt").exists()
    after = Index.open(out)
    assert sorted(v["path"] for v in after.videos) == sorted(v["path"] for v in before.videos)  # once each
    order = {v["path"]: i for i, v in enumerate(before.videos)}
    for i, v in enumerate(after.videos):  # the redone videos embed to the same vectors
        assert torch.allclose(after.video_vectors[i], before.video_vectors[order[v["path"]]], atol=1e-5)


def index_command(corpus, models, out) -> list[str]:
    """``mmhsa index`` of the corpus's videos with the retrieval model, one video per step, in a process."""
    videos, ckpt = str(corpus / "videos"), str(models["retrieval"])
    return [sys.executable, "-m", "pipelines.cli", "index", "--videos", videos, "--out", str(out), "--ckpt", ckpt,
            "--batch-size", "1"]  # fmt: skip


@pytest.mark.slow
def test_kill_9_while_indexing_loses_and_duplicates_nothing(corpus, models, tmp_path):
    out = tmp_path / "ix"
    command = index_command(corpus, models, out)
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "shards").glob("*.json"))) < 3:  # 2 broken files, 1 video
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    committed = Index.open(out).indexed
    assert 1 <= len(committed) < 5  # killed part-way
    report = build_index([corpus / "videos"], out, checkpoint=str(models["retrieval"]), progress=False)
    assert report["already_indexed"] == len(committed)
    paths = [v["path"] for v in Index.open(out).videos]
    assert len(paths) == len(set(paths)) == 5


def test_index_of_another_model_is_refused_naming_both(corpus, models, index):
    out, _ = index
    other = load_model(models["other"], "retrieval").version
    mine = Index.open(out).version
    with pytest.raises(IndexMismatch, match=f"{mine}.*{other}"):
        build_index([corpus / "videos"], out, checkpoint=str(models["other"]), progress=False)
    with pytest.raises(IndexMismatch, match=f"{mine}.*{other}"):
        Searcher(str(out), str(models["other"]))


def test_search_hits_and_queries(index):
    searcher = Searcher(str(index[0]))
    result = searcher.search("a red circle moves up", k=3)
    hits = result["hits"]
    assert len(hits) == 3 and len({h["video"] for h in hits}) == 3
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    ix = searcher.index
    q, _ = searcher.embed(["a red circle moves up"])
    assert hits[0]["score"] == pytest.approx(float((ix.video_vectors @ q[0]).max()), abs=1e-4)
    for h in hits:  # the best clip of each video is its highest-scoring clip
        row = [v["path"] for v in ix.videos].index(h["video"])
        assert h["clip_score"] == pytest.approx(float((ix.clip_vectors[ix.clip_video == row] @ q[0]).max()), abs=1e-4)
    clips = searcher.search("a red circle moves up", k=4, level="clip")["hits"]
    assert clips[0]["score"] == pytest.approx(float((ix.clip_vectors @ q[0]).max()), abs=1e-4)
    assert searcher.search("東京の赤い円が上へ動く 🎬", k=2)["hits"]  # non-ASCII works
    long = searcher.search(" ".join(["the blue square moves left and then the red circle moves up."] * 60), k=1)
    assert long["dropped"].get("sentences", 0) > 0 and long["hits"]
    for empty in ("", "   \n"):
        with pytest.raises(ValueError, match="query: empty"):
            searcher.search(empty)


def test_top_k_in_chunks_equals_full_sort():
    g = torch.Generator().manual_seed(0)
    gallery = torch.nn.functional.normalize(torch.randn(1000, 16, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=1)
    scores, rows = top_k(queries, gallery, 7, chunk=64)
    full = (queries @ gallery.T).topk(7, dim=1)
    assert torch.equal(rows, full.indices) and torch.allclose(scores, full.values)
    assert top_k(queries, gallery[:3], 7)[1].shape == (3, 3)


def test_search_sees_only_recorded_shards(index, tmp_path):
    out = tmp_path / "ix"
    shutil.copytree(index[0], out)
    (out / "shards" / "zz-being-written.pt").write_bytes(b"half a shard")
    assert Index.open(out).indexed == Index.open(index[0]).indexed


def test_list_videos_sources(corpus, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my videos\n{corpus / 'videos' / 'video0001.mp4'}\n\n")
    assert list_videos([listing]) == [(corpus / "videos" / "video0001.mp4").resolve()]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_videos([tmp_path / "nowhere"])
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="no video files"):
        list_videos([tmp_path / "nothing"])


def test_ask_one_and_a_csv(corpus, models, tmp_path):
    asker = Asker(str(models["qa"]))
    result = asker.ask(corpus / "videos" / "video0000.mp4", "What moves first?", ["a red circle", "a blue square", "x"])
    assert sum(result["probabilities"]) == pytest.approx(1.0, abs=1e-3) and result["answer_text"] in result["choices"]
    with pytest.raises(ValueError, match="2 to 10 choices"):
        asker.ask(corpus / "videos" / "video0000.mp4", "What?", ["only one"])
    with pytest.raises(ValueError, match="notes.mp4"):
        asker.ask(corpus / "videos" / "notes.mp4", "What?", ["a", "b"])
    # a NExT-QA CSV with one question on a missing video and one on a broken video
    rows = (corpus / "nextqa" / "train.csv").read_text().splitlines()
    header, body = rows[0], rows[1:4]
    columns = header.split(",")
    broken = dict(zip(columns, body[0].split(",")), video="notes", qid="99")
    missing = dict(zip(columns, body[0].split(",")), video="gone", qid="98")
    csv_path = tmp_path / "q.csv"
    csv_path.write_text("\n".join([header, *body] + [",".join(r[c] for c in columns) for r in (broken, missing)]))
    report = answer_csv(asker, str(csv_path), str(corpus / "videos"), str(tmp_path / "pred.csv"))
    assert report["questions"] == 5 and report["answered"] == 3
    reasons = {f["id"]: f["error"] for f in report["failed"]}
    assert "notes.mp4" in reasons["notes_99"] and "not found" in reasons["gone_98"]
    assert 0 <= report["accuracy"]["acc"] <= 1
    assert (tmp_path / "pred.csv").read_text().count("\n") == 4


def test_ask_an_open_ended_model(corpus, models):
    asker = Asker(str(models["qa_open"]))
    result = asker.ask(corpus / "videos" / "video0000.mp4", "What colour is the first shape?")
    assert sorted(result["choices"]) == ["blue", "green", "red", "white"]  # its vocabulary, most likely first
    assert (
        result["answer_text"] == result["choices"][0]
        and result["probabilities"] == sorted(result["probabilities"])[::-1]
    )
    with pytest.raises(ValueError, match="open-ended"):
        asker.ask(corpus / "videos" / "video0000.mp4", "What colour?", ["red", "blue"])
    with pytest.raises(ValueError, match="multiple choice"):
        asker.ask_many([])


def test_explain_draws_the_attention(corpus, models, tmp_path):
    out = tmp_path / "att.png"
    result = explain(
        str(corpus / "videos" / "video0002.mp4"), "the green circle moves down", str(out), checkpoint=str(models["qa"])
    )
    assert out.stat().st_size > 10_000 and json.loads(out.with_suffix(".json").read_text())["text"]
    assert sum(result["clips"]) == pytest.approx(1.0, abs=1e-6)
    for clip, frames, patches in zip(result["clips"], result["frames"], result["patches"]):
        assert sum(frames) == pytest.approx(clip, abs=1e-6)
        assert torch.tensor(patches).sum() == pytest.approx(clip, abs=1e-6)


@pytest.mark.parametrize("mixer", ["hsa", "flat", "mean"])
def test_attention_weights_are_what_the_layer_applies(mixer):
    g = torch.Generator().manual_seed(0)
    layer = HSAAttention(16, 2, pos_dim=4, mixer=mixer, backend="torch")
    h = Hierarchy.batch([Hierarchy.from_nested([[0, 1, 2], [[3, 4], [5]]]), Hierarchy.from_nested([[0, 1], [2]])])
    x = torch.randn(h.num_leaves, 16, generator=g)
    theta = layer.weights(x, h)  # [H, N, N]
    _, _, v = layer._qkv(x, None)
    expected = layer.proj(torch.einsum("hij,jhd->ihd", theta, v).reshape(len(x), 16))
    assert torch.allclose(layer(x, h), expected, atol=1e-5)


def test_cli_errors_and_exit_codes(corpus, models, index, capsys):
    assert main(["search", str(corpus), "x"]) == 2
    assert "not an index" in capsys.readouterr().err
    assert main(["search", str(index[0]), "a red circle", "--top-k", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["hits"]) == 2
    assert (
        main(
            [
                "ask",
                str(corpus / "videos" / "video0000.mp4"),
                "What?",
                "--choices",
                "a",
                "b",
                "--ckpt",
                str(models["qa"]),
            ]
        )
        == 0
    )
    assert "Q: What?" in capsys.readouterr().out
    assert (
        main(["index", "--videos", str(corpus / "videos"), "--out", str(index[0]), "--ckpt", str(models["retrieval"])])
        == 1
    )  # nothing new; the two broken files are still reported


@pytest.mark.slow
def test_index_with_two_ddp_processes(corpus, models, index, tmp_path):
    """Lightning's DDP strategy on CPU (gloo): each rank embeds its share and writes its own shards."""
    out = tmp_path / "ix"
    run = subprocess.run(
        [
            *index_command(corpus, models, out),
            "--accelerator",
            "cpu",
            "--devices",
            "2",
            "--strategy",
            "ddp",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert run.returncode == 1, run.stderr[-3000:]  # the two broken files
    ranks = {json.loads(r.read_text())["rank"] for r in (out / "shards").glob("*.json")}
    assert ranks == {0, 1}
    single, ddp = Index.open(index[0]), Index.open(out)
    assert sorted(v["path"] for v in ddp.videos) == sorted(v["path"] for v in single.videos)
    order = {v["path"]: i for i, v in enumerate(single.videos)}
    for i, v in enumerate(ddp.videos):
        assert torch.allclose(ddp.video_vectors[i], single.video_vectors[order[v["path"]]], atol=1e-5)
    assert len(ddp.failures) == 2


def test_rerank_reorders_only_the_top_k(models):
    module = load_model(models["rerank"], "rerank").module
    module.rerank_k = 3
    g = torch.Generator().manual_seed(0)
    from pipelines.train.batches import retrieval_collate
    from pipelines.train.rerank import _tree
    from tests.pipelines.samples import caption_sample as sample

    batch = retrieval_collate([sample(i) for i in range(6)])
    videos = [_tree(batch.videos, i) for i in range(6)]
    texts = [_tree(batch.texts, i) for i in range(len(batch.text_video))]
    sims = torch.rand(len(texts), 6, generator=g)
    out = module.rerank(sims, videos, texts)
    top = sims.topk(3, dim=1).indices
    for t in range(len(texts)):
        assert set(out[t].topk(3).indices.tolist()) == set(top[t].tolist())  # the same candidates on top
        rest = [v for v in sims[t].argsort(descending=True).tolist() if v not in top[t]]
        assert out[t].argsort(descending=True)[3:].tolist() == rest  # the others keep their order


def test_search_with_rerank(index, models):
    searcher = Searcher(str(index[0]), reranker=str(models["rerank"]))
    plain = searcher.search("a red circle moves up", k=3)["hits"]
    hits = searcher.search("a red circle moves up", k=3, rerank=True)["hits"]
    assert sorted(h["video"] for h in hits) == sorted(h["video"] for h in plain)
    assert [h["rerank_score"] for h in hits] == sorted((h["rerank_score"] for h in hits), reverse=True)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    with pytest.raises(ValueError, match="level 'video'"):
        searcher.search("a red circle", k=3, level="clip", rerank=True)


def test_search_with_an_untrained_correction_keeps_the_index_order(index, models, tmp_path):
    """The re-ranker is residual (a * prior + delta): with delta's last layer at its zero start, the prior, each
    hit's first-stage score, decides alone."""
    state = torch.load(models["rerank"], weights_only=True)
    last = max(int(k.split(".")[1]) for k in state["state_dict"] if k.startswith("scorer."))
    for part in ("weight", "bias"):
        state["state_dict"][f"scorer.{last}.{part}"].zero_()
    torch.save(state, tmp_path / "untrained.ckpt")
    searcher = Searcher(str(index[0]), reranker=str(tmp_path / "untrained.ckpt"))
    plain = searcher.search("a red circle moves up", k=3)["hits"]
    hits = searcher.search("a red circle moves up", k=3, rerank=True)["hits"]
    assert [h["video"] for h in hits] == [h["video"] for h in plain]
    a = state["state_dict"]["prior_log_scale"].exp().item()
    assert [h["rerank_score"] for h in hits] == pytest.approx([a * h["score"] for h in plain], abs=1e-3)


def test_a_reranker_refuses_an_index_of_another_dual_encoder(corpus, models, tmp_path, capsys):
    """Its prior is its own dual encoder's cosine: another model's index scores are not what it learnt on."""
    out = tmp_path / "other"
    build_index([corpus / "videos" / "video0000.mp4"], out, checkpoint=str(models["other"]), progress=False)
    with pytest.raises(IndexMismatch, match="corrects the scores of the dual encoder"):
        Searcher(str(out), reranker=str(models["rerank"]))
    args = ["search", str(out), "a red circle", "--rerank", "--rerank-ckpt", str(models["rerank"])]
    assert main(args) == 2 and "whose scores it was not trained on" in capsys.readouterr().err


def test_rerank_validation_reports_dual_and_reranked(models, tmp_path):
    data = tmp_path / "data"
    with ShardWriter(data, {"task": {"name": "retrieval"}, **FEATURIZATION}) as writer:
        for i in range(24):
            writer.add(caption_sample(i))
    module = RerankModule(dual_encoder=str(models["retrieval"]), rerank_k=2, **SIZES)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.validate(module, ShardDataModule(str(data), task="retrieval", batch_size=2), verbose=False)[0]
    assert {"val/t2v_R@1", "val/dual_t2v_R@1", "val/t2v_MnR"} <= set(metrics)
    assert 0 <= metrics["val/t2v_R@1"] <= 1
