import dataclasses
import hashlib
import json

import numpy as np
import pytest

from data_prep.datasets import read_msrvtt, read_nextqa
from data_prep.synthetic import COLOURS, DIRECTIONS, QUESTION_TYPES, CorpusConfig, generate, render, video_spec
from data_prep.video import open_video

SMALL = CorpusConfig(num_videos=6, height=64, width=96)


def test_specs_are_deterministic_and_independent_of_the_corpus_size():
    big = CorpusConfig(num_videos=50)
    assert [video_spec(i, SMALL) for i in range(6)] == [video_spec(i, SMALL) for i in range(6)]
    assert video_spec(3, CorpusConfig(num_videos=6)) == video_spec(3, big)
    assert video_spec(3, CorpusConfig(seed=1)) != video_spec(3, CorpusConfig(seed=0))


@pytest.mark.parametrize("index", range(40))
def test_spec_content_is_consistent(index):
    config = CorpusConfig()
    spec = video_spec(index, config)
    scenes = spec.scenes
    assert config.min_scenes <= len(scenes) <= config.max_scenes
    assert len({s.colour for s in scenes}) == len(scenes)  # "the red circle" names one scene
    assert all(a.background != b.background and a.pattern != b.pattern for a, b in zip(scenes, scenes[1:]))
    assert scenes[0].start_frame == 0 and scenes[-1].end_frame == spec.num_frames
    assert all(a.end_frame == b.start_frame for a, b in zip(scenes, scenes[1:]))
    for caption in spec.captions:  # every scene, in order
        places = [caption.index(f"{s.colour} {s.shape}") for s in scenes]
        assert places == sorted(places)
    assert len(spec.questions) == config.questions_per_video
    for q in spec.questions:
        assert q["type"] in QUESTION_TYPES and len(set(q["candidates"])) == 5
        answer = q["candidates"][q["answer"]]
        named = [s for s in scenes if f"the {s.colour} {s.shape}" in q["question"]]
        assert len(named) == 1
        i = scenes.index(named[0])
        if q["type"] == "direction":
            assert answer == scenes[i].direction
        elif q["type"] == "colour_after":
            assert answer == scenes[i + 1].colour
            assert {s.colour for s in scenes} - {scenes[i + 1].colour} <= set(q["candidates"])
        elif q["type"] == "next":
            assert answer == scenes[i + 1].describe()
        else:
            assert answer == scenes[i - 1].describe()


def test_render_moves_each_shape_the_stated_way():
    config = CorpusConfig(height=96, width=128)
    for index in range(8):
        spec = video_spec(index, config)
        frames = render(spec, config)
        assert frames.shape == (spec.num_frames, 96, 128, 3) and frames.dtype == np.uint8
        for scene in spec.scenes:
            mask = (frames[scene.start_frame : scene.end_frame] == COLOURS[scene.colour]).all(-1)
            ys, xs = zip(*(np.nonzero(m) for m in mask))
            centre = np.array([[x.mean(), y.mean()] for x, y in zip(xs, ys)])
            step = centre[-1] - centre[0]
            dx, dy = DIRECTIONS[scene.direction]
            assert step @ np.array([dx, dy]) > 20  # moved along the direction
            assert abs(step @ np.array([dy, dx])) < 1  # and not across it (up to pixel rounding)
        for cut in (s.start_frame for s in spec.scenes[1:]):  # a hard cut changes the whole picture
            assert np.abs(frames[cut].astype(int) - frames[cut - 1]).mean() > 10


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, generate(root, SMALL)


def test_generate_writes_videos_and_benchmark_annotations(corpus):
    root, summary = corpus
    specs = [video_spec(i, SMALL) for i in range(6)]
    assert summary["videos"] == 6 and summary["frames"] == sum(s.num_frames for s in specs)
    items, problems = read_msrvtt(root / "msrvtt.json", root / "videos")
    assert problems == [] and len(items) == 6
    assert [(i.id, i.captions) for i in items] == [(s.id, list(s.captions)) for s in specs]
    assert [i.split for i in items] == [{"validate": "val"}.get(s.split, s.split) for s in specs]
    files = {split: root / "nextqa" / f"{split}.csv" for split in ("train", "val", "test")}
    questions, problems = read_nextqa(files, root / "videos")
    assert problems == [] and len(questions) == 6 * SMALL.questions_per_video
    truth = [json.loads(line) for line in (root / "ground_truth.jsonl").read_text().splitlines()]
    for spec, gt in zip(specs, truth):
        video = open_video(root / "videos" / f"{spec.id}.mp4")
        assert (video.num_frames, video.width, video.height) == (spec.num_frames, 96, 64)
        assert video.fps == pytest.approx(SMALL.fps)
        assert gt["cuts"] == [s.start_frame for s in spec.scenes[1:]]
        first = video.frames([0])[0].numpy().astype(int)  # lossy, but close to the rendered frame
        assert np.abs(first - render(spec, SMALL)[0]).mean() < 6


def test_generate_is_idempotent_and_refuses_another_config(corpus):
    root, summary = corpus
    stamp = (root / "videos" / "video0000.mp4").stat().st_mtime_ns
    assert generate(root, SMALL) == summary
    assert (root / "videos" / "video0000.mp4").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="holds a synthetic corpus made with"):
        generate(root, CorpusConfig(num_videos=7, height=64, width=96))


def test_generate_rewrites_only_the_annotations_when_only_the_texts_differ(corpus, tmp_path):
    root, _ = corpus
    copy = tmp_path / "copy"
    generate(copy, SMALL)
    stamp = (copy / "videos" / "video0000.mp4").stat().st_mtime_ns
    more = dataclasses.replace(SMALL, questions_per_video=4)
    summary = generate(copy, more)
    assert summary["written_now"] == 0 and summary["config"] == dataclasses.asdict(more)
    assert (copy / "videos" / "video0000.mp4").stat().st_mtime_ns == stamp
    fresh = generate(tmp_path / "fresh", more)  # the same corpus as one made with the new texts from nothing
    for name in ("msrvtt.json", "ground_truth.jsonl", "nextqa/train.csv", "nextqa/test.csv"):
        assert (copy / name).read_text() == (tmp_path / "fresh" / name).read_text()
    assert fresh["questions"] == summary["questions"] == 2 * generate(root, SMALL)["questions"]


def test_generate_completes_a_partial_corpus_bit_exactly(corpus, tmp_path):
    root, _ = corpus
    copy = tmp_path / "copy"
    generate(copy, SMALL)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(copy / "videos" / "video0004.mp4") == digest(root / "videos" / "video0004.mp4")
    (copy / "corpus.json").unlink()  # as if killed before the end
    (copy / "videos" / "video0004.mp4").unlink()
    summary = generate(copy, SMALL)
    assert summary["written_now"] == 1
    assert digest(copy / "videos" / "video0004.mp4") == digest(root / "videos" / "video0004.mp4")
    assert (copy / "msrvtt.json").read_text() == (root / "msrvtt.json").read_text()


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_videos", 0),
        ("height", 31),
        ("fps", 0),
        ("min_scenes", 1),
        ("max_scenes", 7),
        ("min_scene_seconds", 0.1),
        ("captions_per_video", 4),
        ("questions_per_video", 5),
    ],
)
def test_config_validation(field, value):
    with pytest.raises(ValueError, match="CorpusConfig"):
        CorpusConfig(**{field: value})
