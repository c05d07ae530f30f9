"""Hostile files and hostile conditions: checkpoints carrying code, concurrent writers, videos changed or
deleted after indexing, a full disk, hostile queries."""

import argparse
from pathlib import Path

import torch

from pipelines.cli import main


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
