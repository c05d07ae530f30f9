"""Can the encoder put motion into a clip's leaf-mean? A supervised probe on the embedded corpus.

Each clip of the prepared retrieval corpus whose video has as many clips as scenes gets its scene's
direction (up/down/left/right, from ``data/synthetic/ground_truth.jsonl``). A fresh encoder (the
recipe's sizes, no dropout) plus a linear head on the clip's leaf-mean is trained on the training
videos with these labels and scored on the test videos: the best case for learning motion, since real
training only sees it through captions and answers. Rows compare the leaf path positions
(:class:`mmhsa.nn.PathEmbedding`): the current defaults against the earlier ones (time since the start
of the video, shortest period 1 s, maps initialised at std 0.02), and the mixers. Chance is ~0.25; a
linear probe on the stored patch features (4 frames x 16 cells concatenated) reaches 0.99, on their
mean 0.35.

    python benchmarks/probe_motion.py [--epochs 12] [--data data/prepared/synthetic/retrieval]

Prints a table and writes ``runs/probe_motion/results.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.schema import ROOT_KEYS  # noqa: E402
from mmhsa.nn import PathEmbedding, pool_nodes  # noqa: E402
from pipelines.train.batches import Trees, retrieval_collate  # noqa: E402
from pipelines.train.data import ShardDataModule  # noqa: E402
from pipelines.train.retrieval import RetrievalModule  # noqa: E402

DIRECTIONS = ["up", "down", "left", "right"]
EARLIER = {"features": 16, "min_seconds": 1.0, "relative_time": False, "init_std": 0.02}


def labelled_batches(samples, truth: dict, batch_size: int = 32):
    """(video trees, clip node ids, direction labels) per batch; videos whose clip count differs from
    their scene count (shot detection merged or split a scene) are left out, as their labels are unknown."""
    for at in range(0, len(samples), batch_size):
        chunk = samples[at : at + batch_size]
        videos = retrieval_collate(chunk).videos
        h = videos.hierarchy
        clips = torch.nonzero(h.kind == h.kind_names.index("clip")).flatten().tolist()
        roots = h.tree_node_ptr.tolist()
        nodes, labels = [], []
        for t, sample in enumerate(chunk):
            scenes = truth[sample.meta["video_id"]]["scenes"]
            mine = [c for c in clips if roots[t] <= c < roots[t + 1]]
            if len(mine) == len(scenes):
                nodes += mine
                labels += [DIRECTIONS.index(s["direction"]) for s in scenes]
        if nodes:
            yield videos, torch.tensor(nodes), torch.tensor(labels)


def probe(
    data: ShardDataModule,
    truth: dict,
    mixer: str,
    positions: dict | None,
    epochs: int,
    seed: int = 0,
    frame_differences: bool = False,
) -> dict:
    torch.manual_seed(seed)
    encoder = RetrievalModule(
        dim=128,
        depth=2,
        heads=4,
        pos_dim=8,
        dropout=0.0,
        mixer=mixer,
        content_position=True,
        frame_differences=frame_differences,
    ).encoder
    if positions is not None:
        encoder.path = PathEmbedding(encoder.dim, ROOT_KEYS, **positions)
    head = torch.nn.Linear(encoder.dim, len(DIRECTIONS))
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=1e-3)
    train = list(data.splits["train"])

    def logits(videos: Trees, nodes: torch.Tensor) -> torch.Tensor:
        x = encoder(videos.features, videos.leaf_modality, videos.hierarchy)
        return head(pool_nodes(x, videos.hierarchy, nodes))

    started, curve = time.perf_counter(), []
    for epoch in range(epochs):
        encoder.train()
        random.Random(seed + epoch).shuffle(train)
        for videos, nodes, labels in labelled_batches(train, truth):
            loss = F.cross_entropy(logits(videos, nodes), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        encoder.eval()
        with torch.no_grad():
            correct = [
                (logits(v, n).argmax(1) == y).float() for v, n, y in labelled_batches(data.splits["test"], truth)
            ]
        curve.append(round(torch.cat(correct).mean().item(), 3))
    return {
        "test_accuracy": curve[-1],
        "curve": curve,
        "test_clips": int(torch.cat(correct).numel()),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="data/prepared/synthetic/retrieval")
    parser.add_argument("--truth", default="data/synthetic/ground_truth.jsonl")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--out", default="runs/probe_motion")
    parser.add_argument("--only", nargs="*", default=None, help="rows whose name contains one of these")
    args = parser.parse_args(argv)
    truth = {}
    for line in Path(args.truth).read_text().splitlines():
        row = json.loads(line)
        truth[row["video_id"]] = row
    data = ShardDataModule(args.data, task="retrieval")
    data.setup()
    rows = []
    for name, mixer, positions, differences in (
        ("HSA, earlier positions", "hsa", EARLIER, False),
        ("HSA, std 0.02 init", "hsa", {"init_std": 0.02}, False),
        ("HSA", "hsa", None, False),
        ("FSA (flat)", "flat", None, False),
        ("mean pool", "mean", None, False),
        ("HSA + frame differences", "hsa", None, True),
        ("FSA + frame differences", "flat", None, True),
        ("mean pool + frame differences", "mean", None, True),
    ):
        if args.only and not any(o in name for o in args.only):
            continue
        result = probe(data, truth, mixer, positions, args.epochs, frame_differences=differences)
        rows.append({"model": name, **result})
        print(f"{name}: {result}", flush=True)
    print(
        f"\nDirection of a clip's scene from its leaf-mean, test clips, {args.epochs} epochs "
        f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads):\n"
    )
    print("| model | test accuracy | curve (every 3rd epoch) | s |\n|---|---:|---|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['test_accuracy']:.3f} | {' '.join(f'{a:.2f}' for a in r['curve'][2::3])} | "
            f"{r['seconds']:.0f} |"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"epochs": args.epochs, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
