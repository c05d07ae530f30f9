"""Bad bytes and bad inputs in annotation files and video folders: each is one failure naming the file and
the line (or row), reported once, and the rest is read and prepared.

The benchmark files are the replicas of :mod:`tests.data_prep.replicas` with one byte made invalid UTF-8
(0xbb, a stray Latin-1 "»"); the videos are real (:func:`tests.data_prep.replicas.sample_video`).
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from data_prep.datasets import (
    CaptionItem,
    read_activitynet,
    read_didemo,
    read_jsonl_folder,
    read_msrvtt,
    read_msvd,
    read_nextqa,
)
from data_prep.shards import ShardDataset, read_failures
from data_prep.video import VideoError, open_video
from tests.data_prep import replicas
from tests.data_prep.test_prepare import recipe, run_cli

BAD = b"\xbb"  # not UTF-8 on its own


def spoil(path: Path, text: str, count: int = 1) -> None:
    """Put the bad byte into ``path`` after the first ``count`` occurrences of ``text``."""
    data = path.read_bytes()
    assert data.count(text.encode()) >= count, text
    path.write_bytes(data.replace(text.encode(), text.encode() + BAD, count))


# ------------------------------------------------------------------ jsonl
@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "vidéos"
    d.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4", "d.mp4", "e.mp4", "f.mp4", "gallery.mp4"):
        (d / name).write_bytes(b"placeholder")  # the reader only resolves paths
    return d


def write_jsonl(folder: Path, lines: list[bytes]) -> None:
    (folder / "annotations.jsonl").write_bytes(b"\n".join(lines) + b"\n")


def row(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_a_jsonl_byte_that_is_not_utf8_costs_its_line_only(folder):
    write_jsonl(
        folder,
        [
            row(video="a.mp4", captions=["a good caption"]),
            row(video="b.mp4", captions=["caf"]).replace(b"caf", b"caf" + BAD),  # its only caption
            row(video="c.mp4", captions=["fine", "caf", "also fine"]).replace(b"caf", b"caf" + BAD),
            row(video="d.mp4", captions=["x"]).replace(b'{"video"', BAD + b'{"video"'),  # outside any string
            row(video="e.mp4", id="e", captions=["x"]).replace(b'"e"', b'"e' + BAD + b'"'),  # in its id
        ],
    )
    items, problems = read_jsonl_folder(folder)
    assert {i.id: i.captions for i in items} == {"a": ["a good caption"], "c": ["fine", "also fine"], "f": [],
                                                 "gallery": []}  # fmt: skip
    assert problems == [
        ("b", "annotations.jsonl line 2: every caption is refused: caption 1: not valid UTF-8 (byte 0xbb)"),
        ("c (annotations.jsonl line 3)",
         "annotations.jsonl line 3: caption 2: not valid UTF-8 (byte 0xbb); the other captions are kept"),
        ("annotations.jsonl line 4", "annotations.jsonl line 4: not valid UTF-8 (byte 0xbb at byte 1 of the line)"),
        ("annotations.jsonl line 5", "annotations.jsonl line 5: not valid UTF-8 (byte 0xbb)"),
    ]  # fmt: skip
    # b, d (its line broken, but naming it) and e are failures, never captionless items; f and gallery have no line


def test_refused_captions_fail_their_item_and_videos_without_a_line_stay_captionless(folder):
    write_jsonl(
        folder,
        [
            row(video="a.mp4", captions=["a NUL"]).replace(b"a NUL", b"a\x00NUL"),  # raw: JSON wants it escaped
            row(video="b.mp4", captions=["kept", "x"]).replace(b'"x"', b'"\x00x"'),
            row(video="c.mp4", captions=["\u0000", " \t "]),  # escaped, but no words
            row(video="d.mp4", captions=["a tab\tescaped", "a\u0000escaped NUL"]),  # valid text
            row(video="e.mp4", captions=[]),
            row(video="f.mp4"),  # no captions field: a video to index
        ],
    )
    items, problems = read_jsonl_folder(folder)
    assert {i.id: i.captions for i in items} == {"b": ["kept"], "d": ["a tab\tescaped", "a\u0000escaped NUL"],
                                                 "f": [], "gallery": []}  # fmt: skip
    assert all(isinstance(i, CaptionItem) for i in items)
    assert dict(problems) == {
        "a": "annotations.jsonl line 1: every caption is refused: caption 1: a raw control character U+0000 "
        "(JSON wants it escaped)",
        "b (annotations.jsonl line 2)": "annotations.jsonl line 2: caption 2: a raw control character U+0000 "
        "(JSON wants it escaped); the other captions are kept",
        "c": "annotations.jsonl line 3: every caption is refused: caption 1: empty (no words, only spaces or "
        "control characters); caption 2: empty (no words, only spaces or control characters)",
        "e": "annotations.jsonl line 5: 'captions' is given but empty",
    }


def test_a_dangling_link_or_a_directory_named_like_a_video_is_reported_once(folder):
    os.symlink(folder / "gone.mp4", folder / "link.mp4")
    os.symlink(folder / "gone too.mp4", folder / "unlisted link.mp4")
    (folder / "dir.mp4").mkdir()
    (folder / "unlisted dir.mp4").mkdir()
    write_jsonl(folder, [row(video="link.mp4", captions=["x"]), row(video="dir.mp4", captions=["x"])])
    items, problems = read_jsonl_folder(folder)
    assert {i.id for i in items} == {"a", "b", "c", "d", "e", "f", "gallery"}  # the videos without a line
    assert problems == [
        ("link", f"annotations.jsonl line 1: video 'link.mp4' is a dangling symlink (to '{folder / 'gone.mp4'}')"),
        ("dir", "annotations.jsonl line 2: video 'dir.mp4' is a directory, not a video file"),
        ("unlisted dir", f"video 'unlisted dir.mp4' in {folder} (no line names it) is a directory, not a video file"),
        ("unlisted link", f"video 'unlisted link.mp4' in {folder} (no line names it) is a dangling symlink "
                          f"(to '{folder / 'gone too.mp4'}')"),
    ]  # fmt: skip


# ------------------------------------------------------------------ the benchmarks' CSV, JSON and list files
def test_nextqa_csv_and_map_rows_that_are_not_utf8(tmp_path):
    folder, videos = replicas.nextqa(tmp_path)
    spoil(folder / "val.csv", "why did the man wave 1")  # line 3
    spoil(folder / "map_vid_vidorID.json", '"1001/2909446186')  # a train video's entry: found below anyway
    files = {s: folder / f"{s}.csv" for s in ("train", "val", "test")}
    items, problems = read_nextqa(files, videos)
    assert len(items) == 7 * 4 - 1
    assert problems == [
        ('map_vid_vidorID.json entry \'2909446186\'',
         f"{folder / 'map_vid_vidorID.json'}: entry '2909446186': not valid UTF-8 (byte 0xbb)"),
        ("val.csv line 3", f"{folder / 'val.csv'} line 3: not valid UTF-8 (byte 0xbb at byte 44 of the line)"),
    ]  # fmt: skip
    spoil(folder / "test.csv", "video")  # the header
    with pytest.raises(ValueError, match=r"test\.csv line 1 \(the header\): not valid UTF-8 \(byte 0xbb"):
        read_nextqa(files, videos)


def test_msrvtt_json_and_csv_rows_that_are_not_utf8(tmp_path):
    root = replicas.msrvtt_official(tmp_path / "official")
    data = root / "train_val_videodatainfo.json"
    spoil(data, "caption 3 of video1 ")
    spoil(data, '"video_id": "video2')  # its entry in "videos": the video is skipped
    items, problems = read_msrvtt(data, root)
    assert {i.id: len(i.captions) for i in items} == {"video0": 20, "video1": 19, "video3": 20, "video4": 20,
                                                      "video5": 20}  # fmt: skip
    assert problems == [
        ("train_val_videodatainfo.json sentences[23]",
         f"{data}: sentences[23] (video 'video1'): not valid UTF-8 (byte 0xbb)"),
        ("train_val_videodatainfo.json videos[2]",
         f"{data}: videos[2] (video 'video2\\udcbb'): not valid UTF-8 (byte 0xbb)"),
    ]  # fmt: skip
    (root / "broken.json").write_bytes(b'{"videos": [' + BAD + b"]}")
    with pytest.raises(ValueError, match=r"broken\.json: not JSON \(.*; not valid UTF-8 \(byte 0xbb\) there\)"):
        read_msrvtt(root / "broken.json", root)

    folder, videos = replicas.msrvtt_clip4clip(tmp_path / "clip4clip")
    spoil(folder / "MSRVTT_JSFUSION_test.csv", "the one test sentence of video7")  # line 3
    items, problems = read_msrvtt(folder, videos)
    assert len(items) == 6 + 2 and "video7" not in {i.id for i in items}
    assert problems == [("MSRVTT_JSFUSION_test.csv line 3", f"{folder / 'MSRVTT_JSFUSION_test.csv'} line 3: "
                         "not valid UTF-8 (byte 0xbb at byte 49 of the line)")]  # fmt: skip


def test_msvd_didemo_and_activitynet_rows_that_are_not_utf8(tmp_path):
    folder, clips = replicas.msvd(tmp_path / "msvd")
    spoil(folder / "train_list.txt", "-4wsuPCjD_1_5_15")
    items, problems = read_msvd(folder, clips)
    assert len(items) == 5 and problems == [
        ("train_list.txt line 2",
         f"{folder / 'train_list.txt'} line 2: not valid UTF-8 (byte 0xbb at byte 17 of the line)"),
    ]  # fmt: skip

    folder, videos = replicas.didemo(tmp_path / "didemo")
    spoil(folder / "train_data.json", "the camera pans left 2")  # one description of the first video
    items, problems = read_didemo(folder, videos)
    assert len(items) == 6 and items[0].captions == ["the camera pans left 0 the camera pans left 1 the camera pans "
                                                     "left 3"]  # fmt: skip
    assert problems == [("train_data.json [2]", f"{folder / 'train_data.json'}: [2] (video "
                         f"'1000@N00_6060447507_dc1a90b8ef.mov'): not valid UTF-8 (byte 0xbb)")]  # fmt: skip

    folder, videos = replicas.activitynet(tmp_path / "activitynet")
    spoil(folder / "train.json", "standing 1")  # a sentence of v_QOlSCBRm001
    spoil(folder / "val_ids.json", '"v_QOlSCBRm004')
    items, problems = read_activitynet(folder, videos)
    assert [i.id for i in items] == ["v_QOlSCBRm000", "v_QOlSCBRm002", "v_QOlSCBRm003"]
    assert problems == [
        ("train.json 'v_QOlSCBRm001'", f"{folder / 'train.json'}: video 'v_QOlSCBRm001': not valid UTF-8 (byte 0xbb)"),
        ("val_ids.json [1]", f"{folder / 'val_ids.json'}: [1] 'v_QOlSCBRm004\\udcbb': not valid UTF-8 (byte 0xbb)"),
    ]  # fmt: skip


def test_a_directory_named_as_a_benchmark_video_is_named(tmp_path):
    folder, videos = replicas.msrvtt_clip4clip(tmp_path)
    (videos / "video0.mp4").unlink()
    (videos / "video0.mp4").mkdir()
    _, problems = read_msrvtt(folder, videos)
    assert problems == [("video0", f"video 'video0': {videos / 'video0.mp4'} is a directory, not a video file")]


# ------------------------------------------------------------------ a damaged video
def flipped(source: Path, target: Path) -> Path:
    """``source`` with a byte of its stream's handler name (in the header, 'VideoHandler') made 0xbb."""
    data = bytearray(source.read_bytes())
    data[data.index(b"VideoHandler") + 1] = BAD[0]
    target.write_bytes(bytes(data))
    return target


def test_a_bit_flipped_header_is_a_decoding_error_naming_the_file(tmp_path):
    path = flipped(replicas.sample_video(tmp_path), tmp_path / "x.mp4")
    with pytest.raises(VideoError) as error:
        open_video(path)
    assert str(error.value).startswith(f"video '{path}': cannot decode (corrupt or unsupported video: a metadata tag "
                                       "is not UTF-8: 'utf-8' codec can't decode byte 0xbb")  # fmt: skip


# ------------------------------------------------------------------ through prepare
def test_prepare_reports_each_bad_row_and_input_once_and_prepares_the_rest(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    video = replicas.sample_video(tmp_path / "src")
    for name in ("good.mp4", "latin1.mp4", "nul.mp4", "some.mp4", "gallery.mp4"):
        shutil.copy(video, folder / name)
    flipped(video, folder / "flipped.mp4")
    os.symlink(folder / "gone.mp4", folder / "link.mp4")
    (folder / "dir.mp4").mkdir()
    write_jsonl(
        folder,
        [
            row(video="good.mp4", captions=["a person is cooking"]),
            row(video="latin1.mp4", captions=["caf"]).replace(b"caf", b"caf" + BAD),
            row(video="nul.mp4", captions=["a NUL"]).replace(b"a NUL", b"a\x00NUL"),
            row(video="some.mp4", captions=["kept", "caf"]).replace(b"caf", b"caf" + BAD),
            row(video="flipped.mp4", captions=["x"]),
            row(video="link.mp4", captions=["x"]),
            row(video="dir.mp4", captions=["x"]),
        ],
    )
    output = tmp_path / "out"
    assert run_cli(tmp_path, recipe(folder, output)) == 1
    failures = {f["id"]: (f["stage"], f["error"]) for f in read_failures(output / "index")}
    assert failures == {
        "latin1": ("annotations", "annotations.jsonl line 2: every caption is refused: caption 1: not valid UTF-8 "
                                  "(byte 0xbb)"),
        "nul": ("annotations", "annotations.jsonl line 3: every caption is refused: caption 1: a raw control "
                               "character U+0000 (JSON wants it escaped)"),
        "some (annotations.jsonl line 4)": ("annotations", "annotations.jsonl line 4: caption 2: not valid UTF-8 "
                                                           "(byte 0xbb); the other captions are kept"),
        "flipped": ("decode", f"video '{folder / 'flipped.mp4'}': cannot decode (corrupt or unsupported video: a "
                              "metadata tag is not UTF-8: 'utf-8' codec can't decode byte 0xbb in position 1: "
                              "invalid start byte)"),
        "link": ("annotations", f"annotations.jsonl line 6: video 'link.mp4' is a dangling symlink "
                                f"(to '{folder / 'gone.mp4'}')"),
        "dir": ("annotations", "annotations.jsonl line 7: video 'dir.mp4' is a directory, not a video file"),
    }  # fmt: skip
    samples = {s.id: s.meta["captions"] for s in ShardDataset(output / "index")}
    assert samples == {"good": ["a person is cooking"], "some": ["kept"], "gallery": []}  # the gallery: no line
