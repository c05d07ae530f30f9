"""Does the QA model read the video? Its accuracy when each question gets another video's features.

Every test question of the prepared QA corpus is scored twice by a trained QA checkpoint: as prepared, and
with its video leaves' features replaced by those of another test video whose video subtree has the same
shape (same clips, frames and patches, so the question's tree is unchanged and only what the video shows
differs; partners are taken in turn within each shape among other videos). A model that reads the video
falls towards chance (1 / candidates) when the video is not the question's; one that answers from the
text keeps its accuracy.

    python benchmarks/probe_video_swap.py [--ckpt runs/default/qa.ckpt] [--data data/prepared/synthetic/qa]

Prints a table (overall and per question type) and writes ``runs/probe_video_swap/results.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.schema import MODALITIES, Sample  # noqa: E402
from data_prep.shards import ShardDataset  # noqa: E402
from pipelines.train.batches import collate  # noqa: E402
from pipelines.train.qa import QAModule  # noqa: E402


def video_shape(sample: Sample) -> bytes:
    """What must match for two samples to trade video features: the video subtree's parents and kinds."""
    h = sample.hierarchy
    video = h.subtree(h.keyed_children(0)["video"])
    return video._np["parent"].tobytes() + video._np["kind"].tobytes()


def swapped(samples: list[Sample]) -> list[tuple[Sample, Sample]]:
    """(question's sample, the same with another video's features) for each sample that has a partner."""
    groups = collections.defaultdict(list)
    for s in samples:
        groups[video_shape(s)].append(s)
    pairs = []
    for group in groups.values():
        videos = sorted({s.meta["video_id"] for s in group})
        if len(videos) < 2:
            continue
        by_video = {v: [s for s in group if s.meta["video_id"] == v] for v in videos}
        for i, v in enumerate(videos):
            donor = by_video[videos[(i + 1) % len(videos)]][0]  # the next video of the same shape
            for s in by_video[v]:
                features = {**s.features, "video": donor.features["video"]}
                assert int((s.leaf_modality == MODALITIES.index("video")).sum()) == len(donor.features["video"])
                pairs.append((s, Sample(s.id, s.hierarchy, features, s.leaf_modality, s.dropped, s.meta)))
    return pairs


@torch.no_grad()
def correct(model: QAModule, samples: list[Sample], batch_size: int = 32) -> list[bool]:
    out = []
    for at in range(0, len(samples), batch_size):
        batch = collate(samples[at : at + batch_size])
        out += (model(batch).argmax(-1) == model.answers(batch)).tolist()
    return out


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
    pairs = swapped(samples)
    original = correct(model, [p[0] for p in pairs])
    other = correct(model, [p[1] for p in pairs])
    candidates = [len(p[0].meta["candidates"]) for p in pairs]
    rows = []
    types = sorted({p[0].meta.get("type", "") for p in pairs})
    for kind in [None, *types]:
        keep = [i for i, p in enumerate(pairs) if kind is None or p[0].meta.get("type", "") == kind]
        rows.append({"type": kind or "all", "questions": len(keep),
                     "accuracy": round(sum(original[i] for i in keep) / len(keep), 3),
                     "accuracy_other_video": round(sum(other[i] for i in keep) / len(keep), 3),
                     "chance": round(sum(1 / candidates[i] for i in keep) / len(keep), 3)})  # fmt: skip
    partnered = f"{len(pairs)} of {len(samples)} questions have a same-shape partner"
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
