"""Does the QA model read the video? Its accuracy when each question gets another video's features.

Every test question of the prepared QA corpus is scored twice by a trained QA checkpoint: as prepared, and
with its video leaves' features replaced by those of another test video whose video subtree has the same
shape (:mod:`pipelines.train.probes`; ``make train`` reports the same check for each QA model). A model that
reads the video falls towards chance (1 / candidates) when the video is not the question's; one that answers
from the text keeps its accuracy.

    python benchmarks/probe_video_swap.py [--ckpt runs/default/qa.ckpt] [--data data/prepared/synthetic/qa]

Prints a table (overall and per question type) and writes ``runs/probe_video_swap/results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.shards import ShardDataset  # noqa: E402
from pipelines.train.probes import other_video_accuracy  # noqa: E402
from pipelines.train.qa import QAModule  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", default="runs/default/qa.ckpt")
    parser.add_argument("--data", default="data/prepared/synthetic/qa")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", default="runs/probe_video_swap")
    args = parser.parse_args()
    model = QAModule.from_checkpoint(args.ckpt).eval()
    dataset = ShardDataset(args.data)
    samples = [s for s in (dataset[i] for i in range(len(dataset))) if s.meta.get("split") == args.split]
    rows = other_video_accuracy(model, samples)
    partnered = f"{rows[0]['questions']} of {len(samples)} questions have a same-shape partner"
    print(f"{args.ckpt} on {args.data} ({args.split}: {partnered})")
    print(f"{'type':12s} {'questions':>9s} {'own video':>10s} {'other video':>12s} {'chance':>7s}")
    for r in rows:
        own, other_video = r["accuracy"], r["accuracy_other_video"]
        print(f"{r['type']:12s} {r['questions']:9d} {own:10.3f} {other_video:12.3f} {r['chance']:7.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"ckpt": args.ckpt, "data": args.data, "rows": rows}, indent=1))
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
