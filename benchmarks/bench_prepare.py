"""``mmhsa prepare`` on the embedded corpus recipe with DataLoader workers and DDP processes, in one run.

A corpus of ``--videos`` videos is generated with the recipe's settings (``configs/data/synthetic.yaml``)
and prepared once per setting, each in a fresh process and output directory: ``--workers 0`` (one process
does everything), ``--workers N`` (N workers decode and detect shots while the main process encodes) and,
with ``--ddp``, two DDP processes. Each run's samples are compared with the first's (ids and trees equal;
the largest feature difference). The table gives wall seconds, videos/s and the ratio to the first.

    python benchmarks/bench_prepare.py [--videos 100] [--workers 0 1 2] [--ddp]

Prints a table and writes ``runs/bench_prepare/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.shards import ShardDataset  # noqa: E402
from data_prep.synthetic import CorpusConfig, generate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def recipe(corpus: Path, output: Path) -> dict:
    """The embedded corpus recipe pointed at ``corpus`` and ``output``."""
    config = yaml.safe_load((ROOT / "configs/data/synthetic.yaml").read_text())
    config.pop("synthetic")
    config.update(output=str(output), synthetic_root=str(corpus))
    for task in config["tasks"]:
        for key in ("annotations", "video_dir"):
            task[key] = task[key].replace("data/synthetic", str(corpus))
    return config


def difference(a: Path, b: Path) -> float:
    """The largest feature difference between two prepared task directories holding the same samples."""
    first, second = ShardDataset(a), ShardDataset(b)
    if sorted(first.ids) != sorted(second.ids):
        raise SystemExit(f"{a} and {b} hold different samples")
    row = {sample_id: i for i, sample_id in enumerate(second.ids)}
    worst = 0.0
    for i, sample_id in enumerate(first.ids):
        x, y = first[i], second[row[sample_id]]
        if not np.array_equal(x.hierarchy.parent, y.hierarchy.parent):
            raise SystemExit(f"{sample_id}: another tree in {b}")
        for key in x.features:
            worst = max(worst, (x.features[key].float() - y.features[key].float()).abs().max().item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=100)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ddp", action="store_true", help="also two DDP processes (CPU)")
    parser.add_argument("--out", default="runs/bench_prepare")
    args = parser.parse_args()
    out = Path(args.out)
    synthetic = yaml.safe_load((ROOT / "configs/data/synthetic.yaml").read_text())["synthetic"]
    corpus = out / f"corpus-{args.videos}"
    generate(corpus, CorpusConfig(**{**synthetic, "num_videos": args.videos}))
    settings = [(f"workers {w}", ["--workers", str(w)]) for w in args.workers]
    if args.ddp:
        settings.append(("2 DDP processes", ["--devices", "2", "--strategy", "ddp"]))
    rows = []
    for name, extra in settings:
        output = out / name.replace(" ", "-")
        if output.exists():
            subprocess.run(["rm", "-rf", str(output)], check=True)
        path = out / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe(corpus.resolve(), output.resolve())))
        started = time.perf_counter()
        run = subprocess.run(
            [sys.executable, "-m", "data_prep.prepare", "-c", str(path), "--progress", "false", *extra],
            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )  # fmt: skip
        seconds = time.perf_counter() - started
        if run.returncode != 0:
            raise SystemExit(f"{name}: exit {run.returncode}\n{run.stderr[-3000:]}")
        stats = json.loads((output / "prepare_stats.json").read_text())
        rows.append({"setting": name, "seconds": round(seconds, 1), "samples": stats["prepared"],
                     "videos_per_second": round(args.videos / seconds, 2), "stages": stats["stages"],
                     "output": str(output)})  # fmt: skip
    first = rows[0]
    for row in rows:
        row["speedup"] = round(first["seconds"] / row["seconds"], 2)
        row["max_feature_difference"] = max(
            difference(Path(first["output"]) / task, Path(row["output"]) / task) for task in ("retrieval", "qa")
        )
    print(f"prepare, embedded corpus recipe, {args.videos} videos, {os.cpu_count()} cores")
    print(f"{'setting':18s} {'seconds':>8s} {'videos/s':>9s} {'speed-up':>9s} {'samples':>8s} {'max |diff|':>11s}")
    for row in rows:
        print(f"{row['setting']:18s} {row['seconds']:8.1f} {row['videos_per_second']:9.2f} {row['speedup']:9.2f} "
              f"{row['samples']:8d} {row['max_feature_difference']:11.4g}")  # fmt: skip
    result = {"videos": args.videos, "cores": os.cpu_count(), "load": os.getloadavg(), "rows": rows}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
