"""Hostile files and hostile conditions: checkpoints carrying code, concurrent writers, videos changed or
deleted after indexing, a full disk, hostile queries."""

import argparse
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_prep import shards
from data_prep.locking import DirectoryLock
from data_prep.synthetic import CorpusConfig, generate
from pipelines.cli import main
from pipelines.infer.index import Index


class Payload:
    """Unpickling this creates ``marker``: proof that loading ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _altered(source: Path, target: Path, **extra) -> Path:
    state = torch.load(source, map_location="cpu", weights_only=True)
    state.update(extra)
    torch.save(state, target)
    return target


def test_a_checkpoint_carrying_code_is_refused_by_every_command(corpus, models, index, tmp_path, capsys):
    marker = tmp_path / "ran"
    video = str(corpus / "videos" / "video0000.mp4")
    retrieval = _altered(models["retrieval"], tmp_path / "retrieval.ckpt", extra=Payload(marker))
    qa = _altered(models["qa"], tmp_path / "qa.ckpt", extra=Payload(marker))
    data = str(Path(models["retrieval"]).parent / "data-retrieval-0")
    small = ["--model.init_args.dim", "32", "--model.init_args.depth", "1", "--model.init_args.heads", "2",
             "--model.init_args.pos_dim", "4", "--model.init_args.embed_dim", "16", "--data.data_dir", data,
             "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.max_epochs", "1"]  # fmt: skip
    commands = {
        "index": ["index", "--videos", video, "--out", str(tmp_path / "ix"), "--ckpt", str(retrieval)],
        "search": ["search", str(index[0]), "a red circle", "--ckpt", str(retrieval)],
        "ask": ["ask", video, "What?", "--choices", "a", "b", "--ckpt", str(qa)],
        "explain": ["explain", video, "a red circle", "--out", str(tmp_path / "a.png"), "--ckpt", str(qa)],
        "fit --ckpt_path": ["fit", "-c", "configs/retrieval_synthetic.yaml", *small, "--ckpt_path", str(retrieval)],
        "fit init_from": [
            "fit",
            "-c",
            "configs/retrieval_synthetic.yaml",
            *small,
            "--model.init_args.init_from",
            str(retrieval),
        ],  # fmt: skip
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert "holds io.open, not only tensors and plain values; refused" in err, (name, err)
        assert "Traceback" not in err and not marker.exists(), name


def test_trust_checkpoint_is_the_explicit_way_in(corpus, models, tmp_path, capsys):
    """A checkpoint of one's own holding a non-tensor object (older Lightning runs saved hyper-parameters as
    an argparse.Namespace) is refused by default, naming the object, and loads with --trust-checkpoint."""
    qa = _altered(models["qa"], tmp_path / "qa.ckpt", extra=argparse.Namespace(lr=0.1))
    ask = ["ask", str(corpus / "videos" / "video0000.mp4"), "What?", "--choices", "a", "b", "--ckpt", str(qa)]
    assert main(ask) == 2
    assert "holds argparse.Namespace" in capsys.readouterr().err
    assert main([*ask, "--trust-checkpoint"]) == 0
    assert "Q: What?" in capsys.readouterr().out
    retrieval = _altered(models["retrieval"], tmp_path / "retrieval.ckpt", extra=argparse.Namespace(lr=0.1))
    data = str(Path(models["retrieval"]).parent / "data-retrieval-0")
    fit = ["fit", "-c", "configs/retrieval_synthetic.yaml", "--model.init_args.dim", "32", "--model.init_args.depth",
           "1", "--model.init_args.heads", "2", "--model.init_args.pos_dim", "4", "--model.init_args.embed_dim", "16",
           "--data.data_dir", data, "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.max_epochs", "2",
           "--trainer.enable_progress_bar", "false", "--ckpt_path", str(retrieval)]  # fmt: skip
    assert main(fit) == 2 and "holds argparse.Namespace" in capsys.readouterr().err  # Lightning reads weights-only


# ------------------------------------------------------------------ one writer per directory
def _index(videos, out, models, *extra) -> int:
    return main(["index", "--videos", *map(str, videos), "--out", str(out), "--ckpt", str(models["retrieval"]), *extra])


def test_a_second_writer_is_refused_naming_the_holder(corpus, models, tmp_path, capsys):
    out = tmp_path / "ix"
    video = corpus / "videos" / "video0000.mp4"
    with DirectoryLock(out, "mmhsa index (another run)"):
        assert _index([video], out, models) == 2
    err = capsys.readouterr().err
    assert f"is being written by another run (pid {os.getpid()} on {socket.gethostname()}" in err
    assert "mmhsa index (another run)" in err and not (out / "shards").exists()
    assert _index([video], out, models) == 0  # released: the next run goes ahead


def test_a_lock_left_by_a_dead_run_is_taken_over(corpus, models, tmp_path, capsys):
    out = tmp_path / "ix"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": 999999, "host": "gone", "command": "mmhsa index"}))
    assert _index([corpus / "videos" / "video0000.mp4"], out, models) == 0
    assert (
        "taking over the lock of a run that ended without releasing it (pid 999999 on gone)" in capsys.readouterr().err
    )


@pytest.mark.slow
def test_two_index_runs_at_once_index_each_video_once(corpus, models, tmp_path):
    out = tmp_path / "ix"
    videos = [str(corpus / "videos" / f"video000{i}.mp4") for i in range(5)]
    argv = [sys.executable, "-m", "pipelines.cli", "index", "--videos", *videos, "--out", str(out),
            "--ckpt", str(models["retrieval"])]  # fmt: skip
    runs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(r.wait(timeout=600), r.stderr.read()) for r in runs]
    assert sorted(rc for rc, _ in results) in ([0, 0], [0, 2]), results  # the second waits its turn or is refused
    assert all("being written by another run" in err for rc, err in results if rc == 2)
    paths = [v["path"] for v in Index.open(out).videos]
    assert sorted(paths) == sorted(videos)  # each once


# ------------------------------------------------------------------ videos changed or deleted after indexing
def test_changed_and_deleted_videos(corpus, models, tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(4):
        shutil.copy(corpus / "videos" / f"video000{i}.mp4", folder / f"v{i}.mp4")
    out = tmp_path / "ix"
    assert _index([folder], out, models) == 0
    before = Index.open(out)
    shutil.copy(corpus / "videos" / "video0004.mp4", folder / "v1.mp4")  # v1 is now another video
    (folder / "v3.mp4").unlink()
    (folder / "v2.mp4").touch()  # a newer mtime, the same content: not indexed again
    capsys.readouterr()
    assert (
        main(["index", "--videos", str(folder), "--out", str(out), "--ckpt", str(models["retrieval"]), "--json"]) == 0
    )
    report = json.loads(capsys.readouterr().out)  # --json: nothing else on stdout (no progress bar)
    assert report["changed"] == [str((folder / "v1.mp4").resolve())]
    assert report["deleted"] == [str((folder / "v3.mp4").resolve())] and report["written"]["videos"] == 1
    after = Index.open(out)
    assert sorted(Path(v["path"]).name for v in after.videos) == ["v0.mp4", "v1.mp4", "v2.mp4"]
    fresh = tmp_path / "fresh"
    assert _index([corpus / "videos" / "video0004.mp4"], fresh, models) == 0
    row = [Path(v["path"]).name for v in after.videos].index("v1.mp4")
    assert torch.equal(after.video_vectors[row], Index.open(fresh).video_vectors[0])  # the new content's vector
    old = [Path(v["path"]).name for v in before.videos].index("v1.mp4")
    assert not torch.equal(before.video_vectors[old], after.video_vectors[row])
    assert len(after.clip_vectors) == int(after.clip_ptr[-1]) and after.clip_ptr.diff().min() > 0

    (folder / "v2.mp4").unlink()  # deleted after the last index run: search says so
    capsys.readouterr()
    assert main(["search", str(out), "a red circle", "--json"]) == 0
    captured = capsys.readouterr()
    hits = json.loads(captured.out)["hits"]
    assert [h.get("missing", False) for h in hits if h["video"].endswith("v2.mp4")] == [True]
    assert "v2.mp4: no longer on disk" in captured.err


def test_search_says_when_shards_are_set_aside(corpus, models, tmp_path, capsys):
    out = tmp_path / "ix"
    assert _index([corpus / "videos" / f"video000{i}.mp4" for i in range(2)], out, models, "--batch-size", "1") == 0
    shard = sorted((out / "shards").glob("*.pt"))[0]
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")  # a flipped tail: its checksum fails
    capsys.readouterr()
    assert main(["search", str(out), "a red circle"]) == 0
    assert "1 shard(s) of" in capsys.readouterr().err
    assert _index([corpus / "videos" / f"video000{i}.mp4" for i in range(2)], out, models) == 0  # set aside, redone
    capsys.readouterr()
    assert main(["search", str(out), "a red circle"]) == 0
    assert f"{shard.name}.corrupt" in capsys.readouterr().err and len(Index.open(out).videos) == 2


# ------------------------------------------------------------------ a full disk
def _full_disk_after(monkeypatch, writes: int):
    """Every fsync after the first ``writes`` fails as a full disk does (ENOSPC)."""
    real, count = os.fsync, {"n": 0}

    def fsync(fd):
        count["n"] += 1
        if count["n"] > writes:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(shards.os, "fsync", fsync)


def test_a_full_disk_while_indexing(corpus, models, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ix"
    videos = [corpus / "videos" / f"video000{i}.mp4" for i in range(4)]
    _full_disk_after(monkeypatch, writes=3)  # index.json, then the first shard and its record
    assert _index(videos, out, models, "--batch-size", "1") == 1
    err = capsys.readouterr().err
    assert "no space left to write" in err and "bytes needed" in err and "Traceback" not in err
    assert not list(out.rglob(".*.tmp*"))  # no temporary file left
    assert len(Index.open(out).videos) == 1  # what was committed before is intact
    monkeypatch.undo()  # space freed
    assert _index(videos, out, models) == 0
    assert sorted(v["path"] for v in Index.open(out).videos) == sorted(str(v) for v in videos)


def test_a_full_disk_while_preparing(tmp_path, monkeypatch, capsys):
    corpus = tmp_path / "corpus"
    generate(corpus, CorpusConfig(num_videos=6, height=64, width=64, min_scenes=2, max_scenes=2))
    argv = ["prepare", "--output", str(tmp_path / "out"), "--tasks", json.dumps([{"name": "retrieval",
            "format": "msrvtt", "annotations": str(corpus / "msrvtt.json"), "video_dir": str(corpus / "videos")}]),
            "--video.clips", "windows", "--shard_size", "2", "--progress", "false"]  # fmt: skip
    _full_disk_after(monkeypatch, writes=3)  # the first shard, failures.jsonl and the manifest
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "no space left to write shard-00001.pt" in err and "Traceback" not in err
    task = tmp_path / "out" / "retrieval"
    assert not list(task.glob(".*.tmp*")) and json.loads((task / "manifest.json").read_text())["counts"]["samples"] == 2
    monkeypatch.undo()
    assert main(argv) == 0
    assert json.loads((task / "manifest.json").read_text())["counts"]["samples"] == 6


# ------------------------------------------------------------------ hostile queries
HOSTILE = {
    "lone surrogate": ("\ud800 a red circle", "not valid Unicode text (a lone surrogate at character 0)"),
    "only NUL": ("\x00", "empty"),
    "only control characters": ("\x07\x1b\x7f", "empty"),
    "1 MB": ("a red circle " * 80_000, "more than the 10,000"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_queries_are_refused_in_one_line(index, name, capsys):
    query, message = HOSTILE[name]
    assert main(["search", str(index[0]), query]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("query", ["a\x00red circle", "\u202ea red circle\u202c", "a red\r\ncircle\t", "🎬" * 50])
def test_odd_but_valid_queries_are_searched(index, query, capsys):
    assert main(["search", str(index[0]), query, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"]


def test_debug_shows_the_traceback(index):
    with pytest.raises(ValueError, match="lone surrogate"):
        main(["search", str(index[0]), "\ud800", "--debug"])


def test_a_crafted_index_shard_is_named_not_run(corpus, models, tmp_path, capsys):
    """A shard replaced together with its record (so its checksum holds) still cannot run code."""
    out = tmp_path / "ix"
    assert _index([corpus / "videos" / "video0000.mp4"], out, models) == 0
    shard = next((out / "shards").glob("*.pt"))
    marker = tmp_path / "ran"
    torch.save({"video_vectors": Payload(marker)}, shard)
    record = shard.with_suffix(".json")
    entry = json.loads(record.read_text())
    entry.update(sha256=shards.file_sha256(shard), bytes=shard.stat().st_size)
    record.write_text(json.dumps(entry))
    capsys.readouterr()
    assert main(["search", str(out), "a red circle"]) == 0  # the rest of the index is searched
    err = capsys.readouterr().err
    assert f"{shard}: not a readable index shard (UnpicklingError" in err and not marker.exists()
