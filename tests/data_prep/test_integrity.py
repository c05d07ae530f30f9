"""Damaged prepared data: what a re-run of ``prepare`` finds, sets aside and redoes, and what training
reads refuses by name (truncated, deleted and unlisted shards, edited manifests, trees that are not trees)."""

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch

from data_prep.shards import ShardDataset, file_sha256
from tests.data_prep.test_prepare import recipe, run_cli
from tests.data_prep.videos import scene_frames, write_video

QUESTIONS = 30  # one video, shards of 8: shard-00000 stores the video, shards 1-3 refer to it


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared QA task: 30 questions on one video in four shards; and the recipe that made it."""
    tmp = tmp_path_factory.mktemp("integrity")
    folder = tmp / "qa"
    folder.mkdir()
    write_video(folder / "one.mp4", scene_frames((24, 24)), fps=12)
    rows = [
        {
            "video": "one.mp4",
            "id": f"q{i:02d}",
            "question": f"what happens in scene {i}?",
            "candidates": [f"answer {i} {k}" for k in range(3)],
            "answer": i % 3,
        }  # fmt: skip
        for i in range(QUESTIONS)
    ]
    (folder / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        **recipe(folder, tmp / "out", tasks=[{"name": "qa", "format": "jsonl", "annotations": str(folder)}]),
        "shard_size": 8,
    }
    assert run_cli(tmp, config) == 0
    return tmp / "out", config


@pytest.fixture
def copy(prepared, tmp_path):
    """A private copy of the prepared output and a function re-running prepare on it."""
    out, config = prepared
    target = tmp_path / "out"
    shutil.copytree(out, target)

    def rerun() -> int:
        return run_cli(tmp_path, {**config, "output": str(target)})

    return target / "qa", rerun


def _manifest(task: Path) -> dict:
    return json.loads((task / "manifest.json").read_text())


def _edit_manifest(task: Path, edit) -> None:
    manifest = _manifest(task)
    edit(manifest)
    (task / "manifest.json").write_text(json.dumps(manifest))


def _all_read(task: Path) -> list[str]:
    dataset = ShardDataset(task)
    return sorted(dataset[i].id for i in range(len(dataset)))


IDS = [f"q{i:02d}" for i in range(QUESTIONS)]


def test_a_truncated_shard_is_set_aside_and_its_samples_redone(copy, capsys):
    task, rerun = copy
    shard = task / "shard-00002.pt"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(ValueError, match="shard-00002.pt: checksum"):
        _all_read(task)  # training names it
    capsys.readouterr()
    assert rerun() == 0
    out = capsys.readouterr().out
    assert "shard-00002.pt: checksum mismatch; set aside as shard-00002.pt.corrupt" in out
    assert "8 samples prepared, 22 already done" in out
    assert (task / "shard-00002.pt.corrupt").is_file()
    assert _all_read(task) == IDS
    assert [s["file"] for s in _manifest(task)["shards"]] == [f"shard-0000{i}.pt" for i in (0, 1, 3, 4)]


def test_a_deleted_shard_holding_the_video_takes_the_shards_referring_to_it(copy, capsys):
    task, rerun = copy
    (task / "shard-00000.pt").unlink()
    capsys.readouterr()
    assert rerun() == 0
    out = capsys.readouterr().out
    assert "shard-00000.pt: listed in the manifest but missing" in out
    for i in (1, 2, 3):
        assert f"shard-0000{i}.pt: refers to video features a bad shard held" in out
    assert "30 samples prepared, 0 already done" in out
    assert _all_read(task) == IDS


def test_a_shard_dropped_from_the_manifest_is_never_overwritten(copy, capsys):
    """The old bug: the next shard took the name ``shard-<count>`` and overwrote a listed one."""
    task, rerun = copy
    _edit_manifest(task, lambda m: m["shards"].pop(2))
    listed = {s["file"]: s["sha256"] for s in _manifest(task)["shards"]}
    capsys.readouterr()
    assert rerun() == 0
    out = capsys.readouterr().out
    assert "shard-00002.pt: not listed in the manifest (left by a stopped run); removed" in out
    shards = _manifest(task)["shards"]
    assert [s["file"] for s in shards] == ["shard-00000.pt", "shard-00001.pt", "shard-00003.pt", "shard-00004.pt"]
    assert all(file_sha256(task / name) == sha for name, sha in listed.items())  # the listed ones untouched
    assert _all_read(task) == IDS


def test_a_wrong_sample_count_is_named_and_repaired(copy, capsys):
    task, rerun = copy

    def edit(manifest):
        manifest["shards"][1]["samples"] = 9

    _edit_manifest(task, edit)
    with pytest.raises(ValueError, match="shard-00001.pt is listed with 9 samples and 8 ids"):
        ShardDataset(task)
    _edit_manifest(task, lambda m: m["shards"][1].update(samples=8, ids=m["shards"][1]["ids"][:7]))
    with pytest.raises(ValueError, match="shard-00001.pt is listed with 8 samples and 7 ids"):
        ShardDataset(task)
    _edit_manifest(task, lambda m: m["shards"][1].update(samples=7))
    with pytest.raises(ValueError, match="shard-00001.pt: holds 8 samples, the manifest lists 7"):
        _all_read(task)
    capsys.readouterr()
    assert rerun() == 0
    out = capsys.readouterr().out
    assert "shard-00001.pt: holds other samples than the manifest lists; set aside" in out
    assert "8 samples prepared, 22 already done" in out
    assert _all_read(task) == IDS


def _rewrite_shard(task: Path, name: str, edit) -> None:
    """Edit a shard's records and update its checksum, as a tampering or buggy writer would."""
    path = task / name
    content = torch.load(path, weights_only=True)
    edit(content["records"])
    torch.save(content, path)
    _edit_manifest(task, lambda m: next(s for s in m["shards"] if s["file"] == name).update(sha256=file_sha256(path)))


class _Timeout(Exception):
    pass


def _within(seconds: int, call):
    """``call()``, failing the test if it runs past ``seconds`` (the old cycle bug hung ``fit``)."""

    def alarm(*_):
        raise _Timeout(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        return call()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda parent: parent.__setitem__(3, 5), "node 3 has parent 5 >= itself"),  # a cycle through 3 and 5
        (lambda parent: parent.__setitem__(2, 10_000), "node 2 has parent 10000"),
        (lambda parent: parent.__setitem__(4, -7), "node 4 has parent -7"),
    ],
    ids=["cycle", "out of range", "negative"],
)
def test_trees_are_validated_on_load(copy, damage, message):
    task, _ = copy

    def edit(records):
        parent = records[1]["parent"].clone()
        damage(parent)
        records[1]["parent"] = parent

    _rewrite_shard(task, "shard-00001.pt", edit)
    dataset = ShardDataset(task)
    with pytest.raises(ValueError, match=rf"shard-00001.pt: sample 'q09': bad parent array: {message}"):
        _within(30, lambda: [dataset[i] for i in range(len(dataset))])


def test_a_manifest_that_is_not_json_is_named(copy, capsys):
    task, rerun = copy
    (task / "manifest.json").write_text("{ not json")
    with pytest.raises(ValueError, match=r"manifest.json: not a readable manifest"):
        ShardDataset(task)
    assert rerun() == 2
    err = capsys.readouterr().err
    assert "manifest.json: not a readable manifest" in err and "Traceback" not in err
