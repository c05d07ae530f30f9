"""Any frame and text encoder, end to end: prepare with the user's own weights on disk, train on whatever
widths they give, test, index and search, with no width written in any recipe."""

import json

import pytest
import torch
import yaml

from data_prep.synthetic import CorpusConfig, generate
from pipelines.cli import main

TINY_TEXT = {  # a CLIP-style text tower of an odd width (40), registered with open_clip by name
    "embed_dim": 24,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 40, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The user's checkpoints, in the formats the libraries save: a timm ViT state dict (.pth, with its
    head) and an open_clip model's state dict (.pt)."""
    import open_clip
    import timm

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict(), root / "vit_tiny.pth")
    (root / "mmhsa-tiny-clip.json").write_text(json.dumps(TINY_TEXT))
    open_clip.add_model_config(root / "mmhsa-tiny-clip.json")
    torch.save(open_clip.create_model("mmhsa-tiny-clip", pretrained=None).state_dict(), root / "clip.pt")
    return root


@pytest.mark.slow
def test_a_timm_vit_and_an_open_clip_text_tower_end_to_end(weights, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    generate(corpus, CorpusConfig(num_videos=10, height=64, width=64, min_scenes=2, max_scenes=2))
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
        "video": {"clips": "windows", "windows": {"window_seconds": 1.0}, "frames_per_clip": 2},
        "frames": {
            "source": "timm",
            "name": "vit_tiny_patch16_224",
            "weights": str(weights / "vit_tiny.pth"),
            "image_size": 64,
        },  # fmt: skip
        "text": {"source": "open_clip", "name": "mmhsa-tiny-clip", "weights": str(weights / "clip.pt")},
        "limits": {"max_clips": 3, "max_frames": 2, "max_tokens": 12},
    }
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["prepare", "-c", str(tmp_path / "data.yaml"), "--progress", "false"]) == 0
    manifest = json.loads((tmp_path / "prepared" / "retrieval" / "manifest.json").read_text())
    assert manifest["feature_dims"] == {"video": 192, "text": 40}
    run = ["-c", "configs/retrieval_synthetic.yaml", "--data.data_dir", str(tmp_path / "prepared" / "retrieval"),
           "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.max_epochs", "1", "--data.batch_size", "4",
           "--model.init_args.dim", "32", "--model.init_args.depth", "1", "--model.init_args.heads", "2",
           "--trainer.enable_progress_bar", "false"]  # fmt: skip
    assert main(["fit", *run]) == 0  # the input widths come from the prepared data, not the recipe
    best = str(next((tmp_path / "run").rglob("best-*.ckpt")))
    assert torch.load(best, weights_only=True)["hyper_parameters"]["feature_dims"] == {"video": 192, "text": 40}
    assert main(["test", *run, "--ckpt_path", best]) == 0
    capsys.readouterr()
    index = str(tmp_path / "index")
    assert main(["index", "--videos", str(corpus / "videos"), "--out", index, "--ckpt", best]) == 0
    assert "10 videos" in capsys.readouterr().out  # featurized again with the checkpoint's own encoders
    assert main(["search", index, "a red circle moves up", "--ckpt", best, "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 10 and all(h["video"].endswith(".mp4") for h in hits)
