"""Any frame and text encoder, end to end: prepare with the user's own weights on disk (in the formats the
libraries save), train on whatever widths they give, test, index and search, with no width written in any
recipe; the "my videos with my CLIP" recipe pair; CLIP zero-shot (meanP) search with no training."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from data_prep.assemble import ClipLeaves
from data_prep.featurize import Featurization
from data_prep.synthetic import CorpusConfig, generate
from pipelines.cli import main
from pipelines.infer.retrievers import ClipMeanP

from ..mmhsa.encoder_files import clip_snapshot, tiny_bert, tiny_clip

SMALL_MODEL = ["--model.init_args.dim", "32", "--model.init_args.depth", "1", "--model.init_args.heads", "2",
               "--trainer.max_epochs", "1", "--data.batch_size", "4",
               "--trainer.enable_progress_bar", "false"]  # fmt: skip
FAST_VIDEO = {"clips": "windows", "windows": {"window_seconds": 1.0}, "frames_per_clip": 2}
LIMITS = {"max_clips": 3, "max_frames": 2, "max_tokens": 12}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The user's checkpoints, each in a format its library writes (random weights, tiny models):

    - vit_tiny.pth: a timm ViT state dict with its classifier head (192 wide);
    - resnet/: a timm CNN as a Hugging Face snapshot folder (config.json, model.safetensors; 96 wide);
    - clip.pt: an open_clip model's state dict (a 64-wide ViT, a 40-wide text tower, 24-d embeddings);
    - clip200/: an open_clip snapshot folder (open_clip_config.json, open_clip_model.safetensors) of a
      200-wide ViT and a 40-wide text tower;
    - bert/: a BERT-style Hugging Face folder (save_pretrained) of hidden size 200.
    """
    import open_clip
    import timm
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict(), root / "vit_tiny.pth")
    (root / "resnet").mkdir()
    (root / "resnet" / "config.json").write_text(json.dumps({"architecture": "test_resnet", "num_classes": 1000}))
    save_file(timm.create_model("test_resnet", pretrained=False).state_dict(), root / "resnet" / "model.safetensors")
    tiny_clip(root, "mmhsa-e2e-clip", text_width=40, context=16, vocab=49408, embed_dim=24)
    torch.save(open_clip.create_model("mmhsa-e2e-clip", pretrained=None).state_dict(), root / "clip.pt")
    cfg = tiny_clip(root, "mmhsa-e2e-clip200", vision_width=200, text_width=40, context=16, vocab=49408)
    clip_snapshot(root / "clip200", cfg, open_clip.create_model("mmhsa-e2e-clip200", pretrained=None).state_dict())
    tiny_bert(root / "bert", width=200)
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Ten synthetic videos with an MSR-VTT style annotation file, and the same videos as a folder of the
    user's own (annotations.jsonl next to clips/)."""
    root = tmp_path_factory.mktemp("corpus")
    generate(root, CorpusConfig(num_videos=10, height=64, width=64, min_scenes=2, max_scenes=2))
    msrvtt = json.loads((root / "msrvtt.json").read_text())
    captions = {}
    for sentence in msrvtt["sentences"]:
        captions.setdefault(sentence["video_id"], []).append(sentence["caption"])
    mine = root / "my_videos"
    (mine / "clips").mkdir(parents=True)
    lines = []
    for video in msrvtt["videos"]:
        (mine / "clips" / f"{video['video_id']}.mp4").symlink_to(root / "videos" / f"{video['video_id']}.mp4")
        lines.append({"video": f"clips/{video['video_id']}.mp4", "captions": captions[video["video_id"]],
                      "split": video["split"]})  # fmt: skip
    (mine / "annotations.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


ENCODERS = {  # name: (frames, text, the widths the data must have)
    "timm-vit-pth+open_clip-text-pt": (
        {"source": "timm", "name": "vit_tiny_patch16_224", "weights": "vit_tiny.pth", "image_size": 64},
        {"source": "open_clip", "name": "mmhsa-e2e-clip", "weights": "clip.pt"},
        {"video": 192, "text": 40},
    ),
    "timm-cnn-snapshot+hf-bert-folder": (
        {"source": "timm", "name": "test_resnet", "weights": "resnet", "image_size": 96},
        {"source": "hf", "name": "bert"},
        {"video": 96, "text": 200},
    ),
    "open_clip-vit-snapshot+its-text-tower": (
        {"source": "open_clip", "name": "local-dir:clip200", "image_size": 64},
        {"source": "open_clip", "name": "local-dir:clip200"},
        {"video": 200, "text": 40},
    ),
    "open_clip-pooled-pt+shipped-minilm": (
        {"source": "open_clip", "name": "mmhsa-e2e-clip", "weights": "clip.pt", "image_size": 64, "output": "pooled"},
        {},
        {"video": 24, "text": 384},
    ),
}


def _on_disk(encoder: dict, root: Path) -> dict:
    """The recipe's encoder entry with its file names under ``root``."""
    out = dict(encoder)
    if "weights" in out:
        out["weights"] = str(root / out["weights"])
    if out.get("source") == "hf":
        out["name"] = str(root / out["name"])
    if str(out.get("name", "")).startswith("local-dir:"):
        out["name"] = f"local-dir:{root / out['name'].removeprefix('local-dir:')}"
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", list(ENCODERS))
def test_any_encoder_end_to_end(case, weights, corpus, tmp_path, capsys):
    frames, text, widths = ENCODERS[case]
    recipe = {
        "output": str(tmp_path / "prepared"),
        "tasks": [
            {
                "name": "retrieval",
                "format": "msrvtt",
                "annotations": str(corpus / "msrvtt.json"),
                "video_dir": str(corpus / "videos"),
            }
        ],  # fmt: skip
        "video": FAST_VIDEO,
        "frames": _on_disk(frames, weights),
        "text": _on_disk(text, weights),
        "limits": LIMITS,
    }
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["prepare", "-c", str(tmp_path / "data.yaml"), "--progress", "false"]) == 0
    manifest = json.loads((tmp_path / "prepared" / "retrieval" / "manifest.json").read_text())
    assert manifest["feature_dims"] == widths
    run = ["-c", "configs/retrieval_synthetic.yaml", "--data.data_dir", str(tmp_path / "prepared" / "retrieval"),
           "--trainer.default_root_dir", str(tmp_path / "run"), *SMALL_MODEL]  # fmt: skip
    assert main(["fit", *run]) == 0  # the input widths come from the prepared data, not the recipe
    best = str(next((tmp_path / "run").rglob("best-*.ckpt")))
    assert torch.load(best, weights_only=True)["hyper_parameters"]["feature_dims"] == widths
    assert main(["test", *run, "--ckpt_path", best]) == 0
    capsys.readouterr()
    index = str(tmp_path / "index")
    assert main(["index", "--videos", str(corpus / "videos"), "--out", index, "--ckpt", best]) == 0
    assert "10 videos" in capsys.readouterr().out  # featurized again with the checkpoint's own encoders
    assert main(["search", index, "a red circle moves up", "--ckpt", best, "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 10 and all(h["video"].endswith(".mp4") for h in hits)


@pytest.mark.slow
def test_my_videos_with_my_clip_recipe_pair(weights, corpus, tmp_path, capsys):
    """The recipe pair as a user runs it: the weights line edited (and, for this tiny model, its open_clip
    name), the folder laid out as documented; then zero-shot search with no training, and training."""
    text = Path("configs/data/my_videos_clip.yaml").read_text()
    edited = text.replace("&weights models/ViT-B-32/open_clip_pytorch_model.bin", f"&weights {weights / 'clip.pt'}")
    edited = edited.replace("name: &arch ViT-B-32", "name: &arch mmhsa-e2e-clip")
    changed = [a for a, b in zip(text.splitlines(), edited.splitlines()) if a != b]
    assert len(changed) == 2 and "# <- your weights" in changed[1]  # one weights line serves both towers
    (tmp_path / "mine.yaml").write_text(edited)
    data = corpus / "my_videos"
    prepared = tmp_path / "prepared"
    assert main(["prepare", "-c", str(tmp_path / "mine.yaml"), "--data_root", str(data), "--output", str(prepared),
                 "--video.clips", "windows", "--video.windows.window_seconds", "1.0", "--video.frames_per_clip", "2",
                 "--frames.image_size", "64", "--progress", "false"]) == 0  # fmt: skip
    manifest = json.loads((prepared / "retrieval" / "manifest.json").read_text())
    assert manifest["feature_dims"] == {"video": 64, "text": 40}  # the ViT's patch tokens, the text tower's
    assert manifest["counts"]["splits"] == {"train": 7, "val": 1, "test": 2}
    capsys.readouterr()

    zero_shot = str(tmp_path / "index-zero-shot")  # no training: CLIP meanP
    assert main(["index", "--videos", str(data), "--out", zero_shot, "--zero-shot", str(prepared / "retrieval")]) == 0
    assert "10 videos" in capsys.readouterr().out
    assert main(["search", zero_shot, "a red circle moves up", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 10 and all(h["video"].endswith(".mp4") for h in hits)
    recorded = json.loads((Path(zero_shot) / "index.json").read_text())["model"]
    assert recorded["kind"] == "clip_meanp" and recorded["version"].startswith("ClipMeanP:")
    annotations = str(data / "annotations.jsonl")
    assert main(["search", zero_shot, "--eval", annotations, "--json"]) == 0  # the number to beat
    before = json.loads(capsys.readouterr().out)
    assert before["queries"] == 4 and before["videos"] == 10 and 0 < before["t2v_R@10"] <= 1
    ranks = []  # the same ranks through plain searches, one per test caption
    for line in (data / "annotations.jsonl").read_text().splitlines():
        row = json.loads(line)
        for caption in row["captions"] if row["split"] == "test" else []:
            main(["search", zero_shot, caption, "--json"])
            hits = [Path(h["video"]).name for h in json.loads(capsys.readouterr().out)["hits"]]
            ranks.append(1 + hits.index(Path(row["video"]).name))
    assert before["t2v_R@1"] == sum(r == 1 for r in ranks) / 4 and before["t2v_MnR"] == sum(ranks) / 4

    run = ["-c", "configs/my_videos_clip_retrieval.yaml", "--data.data_dir", str(prepared / "retrieval"),
           "--trainer.default_root_dir", str(tmp_path / "run"), *SMALL_MODEL]  # fmt: skip
    assert main(["fit", *run]) == 0
    best = str(next((tmp_path / "run").rglob("best-*.ckpt")))
    assert main(["test", *run, "--ckpt_path", best]) == 0
    capsys.readouterr()
    assert main(["search", zero_shot, "a red circle", "--ckpt", best]) == 2  # not the index's model
    assert "was built with model ClipMeanP:" in capsys.readouterr().err
    trained = str(tmp_path / "index-trained")
    assert main(["index", "--videos", str(data), "--out", trained, "--ckpt", best]) == 0
    capsys.readouterr()
    assert main(["search", trained, "a red circle moves up", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["hits"]) == 10
    assert main(["search", trained, "--eval", annotations]) == 0
    table = capsys.readouterr().out
    assert "4 queries, 10 videos" in table and "t2v  R@1" in table and "v2t  R@1" in table


def test_clip_meanp_embeddings(weights):
    """CLIP meanP: a clip is the mean of its frames' unit image embeddings, a video the mean of all its
    frames', a query the unit text embedding; each normalised."""
    import open_clip

    frames = _on_disk(ENCODERS["open_clip-pooled-pt+shipped-minilm"][0], weights)
    featurization = Featurization.from_config({"frames": frames, "limits": LIMITS})
    meanp = ClipMeanP(featurization, "recipe.yaml")
    model = open_clip.create_model("mmhsa-e2e-clip", pretrained=str(weights / "clip.pt")).eval()
    tokens = open_clip.get_tokenizer("mmhsa-e2e-clip")(["a red circle", "a blue square"], context_length=16)
    with torch.no_grad():
        expected = F.normalize(model.encode_text(tokens), dim=-1)
    queries, dropped = meanp.embed_texts(["a red circle", "a blue square"])
    torch.testing.assert_close(queries, expected)
    assert dropped == [{}, {}] and meanp.embed_dim == 24
    assert meanp.embed_texts([" ".join(["word"] * 20)])[1] == [{"tokens": 6}]  # 16 - 2 fit in the context
    embeddings = torch.randn(5, 24)
    clips = [ClipLeaves(0, 1, [0.2, 0.7], embeddings[:2, None, None].half()),
             ClipLeaves(1, 2, [1.1, 1.4, 1.8], embeddings[2:, None, None].half())]  # fmt: skip
    ((video, per_clip),) = meanp.embed_videos([clips])
    unit = F.normalize(embeddings.half().float(), dim=-1)
    torch.testing.assert_close(video, F.normalize(unit.mean(0), dim=-1))
    torch.testing.assert_close(per_clip, F.normalize(torch.stack([unit[:2].mean(0), unit[2:].mean(0)]), dim=-1))
    with pytest.raises(ValueError, match="zero-shot search needs an open_clip frame encoder"):
        ClipMeanP(Featurization.from_config({}), "configs/data/synthetic.yaml")
