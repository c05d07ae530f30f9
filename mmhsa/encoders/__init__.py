"""Leaf encoders: frames -> patch grids, texts -> word-piece features (real weights, offline)."""

from .frames import PatchEncoder, PatchEncoderConfig
from .text import TokenEncoder, minilm_path

__all__ = ["PatchEncoder", "PatchEncoderConfig", "TokenEncoder", "minilm_path"]
