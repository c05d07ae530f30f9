"""Tiny random-init encoders saved in the formats users bring (open_clip configs and snapshot folders,
Hugging Face encoder folders), shared by the encoder tests and the end-to-end tests."""

import json
import shutil
from pathlib import Path

import torch


def tiny_clip(
    folder: Path,
    name: str,
    *,
    vision_width: int = 64,
    text_width: int = 32,
    context: int = 8,
    vocab: int = 100,
    embed_dim: int = 32,
    image_size: int = 64,
) -> dict:
    """Register a tiny open_clip architecture under ``name`` (a one-layer ViT and text tower); its config.

    ``vocab=49408`` covers the real BPE tokenizer (needed to encode text); heads are 2 in the text tower and
    ``vision_width // 40`` in the ViT, so odd widths such as 200 build.
    """
    import open_clip

    cfg = {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": 1, "width": vision_width, "patch_size": 16,
                       "head_width": 40 if vision_width % 40 == 0 else vision_width // 2},
        "text_cfg": {"context_length": context, "vocab_size": vocab, "width": text_width, "heads": 2, "layers": 1},
    }  # fmt: skip
    (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder / f"{name}.json")
    return cfg


def clip_snapshot(folder: Path, cfg: dict, state: dict) -> Path:
    """A Hugging Face snapshot folder as open_clip publishes them: open_clip_config.json and
    open_clip_model.safetensors (use it as ``local-dir:<folder>``)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "open_clip_model.safetensors")
    return folder


def tiny_bert(folder: Path, width: int = 200, seed: int = 0) -> Path:
    """A one-layer BERT of hidden size ``width`` saved with ``save_pretrained`` (config.json,
    model.safetensors) next to the shipped MiniLM's WordPiece tokenizer files."""
    from transformers import BertConfig, BertModel

    from mmhsa.encoders.text import minilm_path

    torch.manual_seed(seed)
    config = BertConfig(hidden_size=width, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=130)  # fmt: skip
    BertModel(config).save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(Path(minilm_path()) / name, folder / name)
    return folder
