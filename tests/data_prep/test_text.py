import pytest
import torch

from data_prep.text import (
    Cue,
    Sentence,
    encode_sentences,
    parse_subtitles,
    read_subtitle_file,
    sections_from_cues,
    sections_from_paragraphs,
    split_sentences,
)
from mmhsa.encoders import TokenEncoder


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello world. How are you? Fine!", ["Hello world.", "How are you?", "Fine!"]),
        (
            "Dr. Smith paid 3.5 dollars, e.g. a coffee. Then he left.",
            ["Dr. Smith paid 3.5 dollars, e.g. a coffee.", "Then he left."],
        ),
        ('He said "stop." She stopped.', ['He said "stop."', "She stopped."]),
        ("No final punctuation", ["No final punctuation"]),
        ("Wait... what?! Yes.", ["Wait...", "what?!", "Yes."]),
        ("Ça va ? Très bien. 日本語の文。次の文！", ["Ça va ?", "Très bien.", "日本語の文。", "次の文！"]),
        ("   ", []),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_paragraph_sections():
    sections = sections_from_paragraphs("One. Two.\n\n\nThree!\r\n\r\nFour")
    assert [[s.text for s in sec.sentences] for sec in sections] == [["One.", "Two."], ["Three!"], ["Four"]]
    assert sections_from_paragraphs("\n\n") == []


SRT = """1
00:00:00,500 --> 00:00:02,000
<i>Hello</i> there.

2
00:00:02,500 --> 00:00:04,000
A second cue
over two lines.

3
00:00:09,000 --> 00:00:10,000
Late cue.
"""

VTT = """WEBVTT

00:01.000 --> 00:02.500 align:start
First <b>cue</b>.

intro
00:00:03.000 --> 00:00:04.000
Second.
"""


def test_parse_srt_and_vtt():
    cues = parse_subtitles(SRT)
    assert cues[0] == Cue(0.5, 2.0, "Hello there.")
    assert cues[1].text == "A second cue over two lines."
    vtt = parse_subtitles(VTT)
    assert [(c.start, c.end, c.text) for c in vtt] == [(1.0, 2.5, "First cue."), (3.0, 4.0, "Second.")]


ACCENTED_SRT = "1\r\n00:00:00,500 --> 00:00:02,000\r\nUn café, très naïve.\r\n"


@pytest.mark.parametrize(
    "data, encoding",
    [
        (ACCENTED_SRT.encode("utf-8"), "utf-8"),
        (b"\xef\xbb\xbf" + ACCENTED_SRT.encode("utf-8"), "utf-8-sig"),
        (ACCENTED_SRT.encode("cp1252"), "cp1252"),  # what Windows tools write: b"caf\xe9"
        (ACCENTED_SRT.encode("utf-16"), "utf-16-le"),  # BOM + little-endian
        (b"\xfe\xff" + ACCENTED_SRT.encode("utf-16-be"), "utf-16-be"),
    ],
)
def test_read_subtitle_file_encodings(tmp_path, data, encoding):
    path = tmp_path / "talk.srt"
    path.write_bytes(data)
    text, used = read_subtitle_file(path)
    assert used == encoding
    assert text == ACCENTED_SRT and "\ufeff" not in text
    assert parse_subtitles(text) == [Cue(0.5, 2.0, "Un café, très naïve.")]


def test_read_subtitle_file_fallbacks_and_errors(tmp_path):
    path = tmp_path / "quotes.srt"
    path.write_bytes("1\n00:00:01,000 --> 00:00:02,000\n“Smart” quotes – €5\n".encode("cp1252"))
    text, used = read_subtitle_file(str(path))
    assert used == "cp1252" and parse_subtitles(text)[0].text == "“Smart” quotes – €5"
    path.write_bytes(b"1\n00:00:01,000 --> 00:00:02,000\nna\xefve \x81\n")  # 0x81: undefined in cp1252
    text, used = read_subtitle_file(path)
    assert used == "latin-1" and parse_subtitles(text)[0].text == "naïve \x81"
    path.write_bytes(b"\xff\xfe" + "1\n".encode("utf-16-le") + b"\x00\xd8")  # a lone surrogate
    with pytest.raises(ValueError, match=r"quotes\.srt: not valid utf-16-le"):
        read_subtitle_file(path)
    with pytest.raises(OSError):
        read_subtitle_file(tmp_path / "missing.srt")


ASS_SRT = r"""1
00:00:01,000 --> 00:00:03,000
{\an8}{\pos(10,20)}Top line\Nand {\i1}italic{\i0} text.

2
00:00:03,000 --> 00:00:04,000
{\c&H00FF00&}Green\nbreak, {a comment} <i>kept</i>.
"""


def test_parse_subtitles_strips_ass_override_tags():
    cues = parse_subtitles(ASS_SRT)
    assert [c.text for c in cues] == ["Top line and italic text.", "Green break, {a comment} kept."]


@pytest.mark.parametrize(
    "bad, message",
    [
        ("1\n00:00:01,000 --> 00:00:00,500\nx\n", "line 2: cue ends"),
        ("1\n00:00:xx,000 --> 00:00:02,000\nx\n", "line 2: bad timestamp"),
    ],
)
def test_parse_subtitles_errors_name_the_line(bad, message):
    with pytest.raises(ValueError, match=message):
        parse_subtitles(bad, name="talk.srt")


def test_cues_align_to_clips():
    clips = [(0.0, 2.2), (2.2, 5.0), (5.0, 8.0)]
    sections = sections_from_cues(parse_subtitles(SRT), clips)
    assert [(s.start_time, [x.text for x in s.sentences]) for s in sections] == [
        (0.0, ["Hello there."]),
        (2.2, ["A second cue over two lines."]),
        (5.0, ["Late cue."]),
    ]
    with pytest.raises(ValueError, match="no clips"):
        sections_from_cues([], [])


@pytest.fixture(scope="module")
def encoder():
    return TokenEncoder(max_tokens=16, batch_size=4)


def test_minilm_token_features(encoder):
    sentences = [Sentence("A red circle moves up."), Sentence(""), Sentence("naïve café — 東京")]
    feats = encode_sentences(encoder, sentences)
    assert [f.shape[0] for f in feats] == [len(s.tokens) for s in sentences]
    assert feats[0].shape == (len(sentences[0].tokens), 384) and feats[0].dtype == torch.float16
    assert feats[1].shape == (0, 384)
    assert sentences[0].tokens[:3] == ["a", "red", "circle"]
    assert torch.isfinite(feats[0].float()).all() and feats[0].float().std() > 0.05
    # the same words in another context get other features (a contextual encoder, not a lookup)
    other = encoder.encode(["The red circle stands still."])[0][1]
    assert not torch.allclose(feats[0][1].float(), other[1].float(), atol=1e-2)


def test_long_text_is_windowed_not_truncated(encoder):
    long = Sentence(" ".join(["word"] * 50) + " end")
    (feats,) = encode_sentences(encoder, [long])
    assert feats.shape[0] == len(long.tokens) == 51  # 4 windows of <= 16 pieces
    with pytest.raises(ValueError, match="max_tokens"):
        TokenEncoder(max_tokens=100000)


def test_hundred_thousand_characters(encoder):
    text = "The quick brown fox jumps. " * 3800  # ~100k characters
    sections = sections_from_paragraphs(text)
    assert len(sections[0].sentences) == 3800
