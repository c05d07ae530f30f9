"""Leaf encoders: frames -> patch grids, texts -> word-piece features (real weights, offline)."""

from .frames import PatchEncoder, PatchEncoderConfig
from .text import OpenClipTokenEncoder, TextEncoderConfig, TokenEncoder, build_text_encoder, minilm_path

__all__ = [
    "OpenClipTokenEncoder",
    "PatchEncoder",
    "PatchEncoderConfig",
    "TextEncoderConfig",
    "TokenEncoder",
    "build_text_encoder",
    "minilm_path",
]
