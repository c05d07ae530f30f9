"""QA designs side by side: how the question reads the video (head) and where it sits in the tree (layout),
each with HSA, flat attention (FSA) and mean pooling, on the embedded corpus's held-out test split.

Designs (``QAModule`` settings; :mod:`pipelines.train.qa`, :mod:`pipelines.train.layouts`):

- ``readout``: the question and each candidate query the clips (attention over their leaf-means), the
  candidate is scored from that read-out (the design before the pointer head).
- ``pointer``: the question names a clip and an offset from it (-1, 0, +1 clips); the clip found that way is
  read once and every candidate is matched against it (the default of ``configs/qa_synthetic.yaml``).
- ``question_in_clips``: the pointer head over a tree where a copy of the question is also a sibling of
  every clip's frames, so that each clip is encoded knowing the question.

Every run is ``make train``'s QA run (same recipe, seeds and epochs; the encoder starts from ``make train``'s
retrieval checkpoint of the same mixer, read from ``runs/train_all/results.json``), then the video-swap
probe (:mod:`pipelines.train.probes`). The recipe's own design (its head and layout, ``pointer``) is
``make train``'s QA runs themselves: their rows are taken from that file (``--rerun`` trains them again).
Needs ``make train`` first.

    python benchmarks/qa_designs.py [--designs readout pointer question_in_clips] [--mixers hsa flat mean]
                                    [--max-epochs N] [--limit N]

Prints one table and writes ``runs/qa_designs/results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from pipelines.train.run_all import COLUMNS, MIXERS, RECIPES, run  # noqa: E402

DESIGNS = {
    "readout": ["--model.init_args.head", "readout", "--model.init_args.layout", "joint"],
    "pointer": ["--model.init_args.head", "pointer", "--model.init_args.layout", "joint"],
    "question_in_clips": ["--model.init_args.head", "pointer", "--model.init_args.layout", "question_in_clips"],
}


def recipe_design() -> str | None:
    """The design of make train's QA recipe (its head and layout), if it is one of :data:`DESIGNS`."""
    settings = yaml.safe_load(Path(RECIPES["qa"]).read_text())["model"]["init_args"]
    chosen = ["--model.init_args.head", settings.get("head", "readout")]
    chosen += ["--model.init_args.layout", settings.get("layout", "joint")]
    return next((name for name, args in DESIGNS.items() if args == chosen), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS))
    parser.add_argument("--mixers", nargs="+", default=list(MIXERS), choices=list(MIXERS))
    parser.add_argument("--max-epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--limit", type=int, default=None, help="samples per split (quick runs)")
    parser.add_argument("--retrieval", default="runs/train_all/results.json", help="make train's results")
    parser.add_argument("--root", default="runs/qa_designs")
    parser.add_argument("--rerun", action="store_true", help="train the recipe's design again too")
    args = parser.parse_args()
    trained = Path(args.retrieval)
    if not trained.is_file():
        print(f"{trained}: not found; run make train first (its retrieval models start every QA run)")
        return 2
    runs = json.loads(trained.read_text())["results"]
    encoders = {r["mixer"]: r["best_checkpoint"] for r in runs if r["task"] == "retrieval"}
    recipe_runs, own = {r["mixer"]: r for r in runs if r["task"] == "qa"}, recipe_design()
    missing = [m for m in args.mixers if not encoders.get(m) or not Path(encoders[m]).is_file()]
    if missing:
        print(f"{trained}: no retrieval checkpoint for {', '.join(missing)}; run make train first")
        return 2
    extra = ["--trainer.enable_progress_bar", "false"]
    if args.max_epochs is not None:
        extra += ["--trainer.max_epochs", str(args.max_epochs)]
    if args.limit is not None:
        extra += ["--data.limit", str(args.limit)]
    root, started, results = Path(args.root), time.perf_counter(), []
    for design in args.designs:
        for mixer in args.mixers:
            if design == own and mixer in recipe_runs and not (args.rerun or args.max_epochs or args.limit):
                results.append({"design": design, "from": str(trained), **recipe_runs[mixer]})
                print(f"{design} {mixer}: make train's run ({trained})", flush=True)
                continue
            init = ["--model.init_args.init_from", encoders[mixer]]
            result = run("qa", mixer, root / design, extra + DESIGNS[design] + init)
            results.append({"design": design, **result})
            print(f"{design} {mixer}: {result['metrics']} ({result['seconds']} s)", flush=True)
    columns = COLUMNS["qa"]
    lines = ["| design | mixer | " + " | ".join(columns) + " | train s |", "|---" * (len(columns) + 3) + "|"]
    for r in results:
        values = " | ".join(f"{r['metrics'][c]:.3f}" if c in r["metrics"] else "-" for c in columns)
        mark = " (make train)" if "from" in r else ""
        lines.append(f"| {r['design']}{mark} | {MIXERS[r['mixer']]} | {values} | {r['fit_seconds']:.0f} |")
    total = time.perf_counter() - started
    print(f"\nQA designs, held-out test split of the embedded corpus ({total / 60:.1f} min):\n")
    print("\n".join(lines))
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.json").write_text(json.dumps({"results": results, "seconds": round(total, 1)}, indent=1))
    print(f"wrote {root / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
