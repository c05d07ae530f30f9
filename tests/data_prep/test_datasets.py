import json

import pytest

from data_prep.datasets import CaptionItem, QAItem, read_jsonl_folder, read_msrvtt, read_nextqa


@pytest.fixture
def videos(tmp_path):
    d = tmp_path / "vid és"  # a space and a non-ASCII character in the path
    d.mkdir()
    for name in ("video0.mp4", "video1.mkv", "clip 2.webm"):
        (d / name).write_bytes(b"placeholder")  # the adapters only resolve paths
    return d


def test_msrvtt(videos, tmp_path):
    ann = tmp_path / "msrvtt.json"
    ann.write_text(
        json.dumps(
            {
                "videos": [
                    {"video_id": "video0", "split": "train"},
                    {"video_id": "video1", "split": "validate"},
                    {"video_id": "video9", "split": "test"},
                    {"video_id": "clip 2", "split": "test"},
                    {"video_id": "video0b", "split": "weird"},
                ],
                "sentences": [
                    {"video_id": "video0", "caption": "a red circle moves up"},
                    {"video_id": "video0", "caption": "  a circle rises  "},
                    {"video_id": "video1", "caption": "été — 東京"},
                    {"video_id": "clip 2", "caption": ""},
                ],
            },
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    items, problems = read_msrvtt(ann, videos)
    assert [(i.id, i.split, i.video.name, i.captions) for i in items] == [
        ("video0", "train", "video0.mp4", ["a red circle moves up", "a circle rises"]),
        ("video1", "val", "video1.mkv", ["été — 東京"]),
    ]
    assert dict(problems) == {
        "video9": f"video 'video9' not found in {videos}",
        "clip 2": "no captions",
        "video0b": "video 'video0b': unknown split 'weird' (expected one of "
        "['test', 'train', 'val', 'valid', 'validate'])",
    }
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_msrvtt(tmp_path / "nope.json", videos)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not MSR-VTT style"):
        read_msrvtt(tmp_path / "bad.json", videos)


def test_nextqa(videos, tmp_path):
    header = "video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4\n"
    (tmp_path / "val.csv").write_text(
        header
        + "video0,64,128,96,what moves up after the red circle?,2,1,TN,red,blue,green,white,purple\n"
        + "video9,64,128,96,what colour?,0,2,DC,a,b,c,d,e\n"
        + "video1,64,128,96,what?,7,3,TN,a,b,c,d,e\n"
        + "video1,64,128,96,what?,x,4,TN,a,b,c,d,e\n",
        encoding="utf-8",
    )
    items, problems = read_nextqa({"val": tmp_path / "val.csv"}, videos)
    assert len(items) == 1 and isinstance(items[0], QAItem)
    item = items[0]
    assert (item.id, item.answer, item.candidates[item.answer], item.type, item.split) == (
        "video0_1",
        2,
        "green",
        "TN",
        "val",
    )
    assert [p[0] for p in problems] == ["video9_2", "video1_3", "video1_4"]
    assert "not found" in problems[0][1] and "line 4" in problems[1][1] and "not an index" in problems[2][1]
    (tmp_path / "cols.csv").write_text("video,question\nv,q\n")
    with pytest.raises(ValueError, match="missing NExT-QA columns"):
        read_nextqa({"test": tmp_path / "cols.csv"}, videos)


def test_jsonl_folder(videos):
    (videos / "annotations.jsonl").write_text(
        "\n".join(
            [
                json.dumps({"video": "video0.mp4", "captions": ["x"], "split": "train"}),
                json.dumps({"video": "video1.mkv", "question": "q?", "candidates": ["a", "b"], "answer": 1}),
                json.dumps({"video": "missing.mp4", "captions": []}),
                "not json",
                json.dumps({"video": "video0.mp4", "id": "empty", "captions": []}),
                json.dumps({"video": "video0.mp4", "id": "blank", "captions": ["a cat", "  "]}),
                json.dumps(
                    {"video": "video0.mp4", "id": "no-question", "question": " ", "candidates": ["a"], "answer": 0}
                ),
                json.dumps(
                    {"video": "video0.mp4", "id": "bad-answer", "question": "q?", "candidates": ["a"], "answer": 3}
                ),
                json.dumps({"video": "video1.mkv", "question": "another?", "candidates": ["a", "b"], "answer": 0}),
                json.dumps({"video": "video0.mp4", "id": "open", "question": "what colour?", "answer": " red "}),
                json.dumps({"video": "video0.mp4", "id": "open-blank", "question": "what colour?", "answer": ""}),
            ]
        )
    )
    items, problems = read_jsonl_folder(videos)
    kinds = {i.id: type(i) for i in items}
    assert kinds == {
        "video0": CaptionItem,
        "video1": QAItem,
        "open": QAItem,
        "blank": CaptionItem,
        "clip 2": CaptionItem,
    }
    assert next(i for i in items if i.id == "blank").captions == ["a cat"]  # its empty caption is reported
    assert [p[0] for p in problems] == [
        "missing",
        "annotations.jsonl line 4",
        "empty",
        "blank (annotations.jsonl line 6)",
        "no-question",
        "bad-answer",
        "video1 (annotations.jsonl line 9)",
        "open-blank",
    ]
    mc, open_ended = (next(i for i in items if i.id == k) for k in ("video1", "open"))
    assert mc.answer_text == "b" and (open_ended.candidates, open_ended.answer, open_ended.answer_text) == (
        [],
        -1,
        "red",
    )
    assert "open-ended question" in problems[7][1]
    assert "id 'video1' is already used by annotations.jsonl line 2" in problems[6][1]
    assert "given but empty" in problems[2][1]
    assert problems[3][1].startswith("annotations.jsonl line 6: caption 2: empty (no words")
    assert problems[3][1].endswith("; the other captions are kept")
    assert "non-empty question" in problems[4][1] and "not an index" in problems[5][1]
