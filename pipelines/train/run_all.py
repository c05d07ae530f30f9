"""``make train``: train the default recipes on the embedded corpus, HSA against its baselines.

For each recipe (retrieval, QA; then the cross-modal re-ranker for HSA) and each mixer (HSA; flat softmax
attention over the same leaves, FSA; attention-free mean pooling, DeepSet) it runs the Lightning CLI's fit,
then tests the best checkpoint on the held-out test split, and prints one table (written to
``runs/train_all/results.json`` too) with the time taken. QA starts from the retrieval model's encoder of
the same mixer (``init_from``): the contrastive task grounds words in the video first. The re-ranker starts
from the HSA retrieval encoder too and draws its hard negatives from that dual encoder; its row gives the
dual encoder's R@1 on the same split next to the re-ranked one. Each QA model is also scored with every
test question given another video's features (``acc_other_video``, :mod:`pipelines.train.probes`): near
chance when it reads the video. The HSA models become the defaults of
``mmhsa index|search|ask|explain`` (``runs/default/``).

    python -m pipelines.train.run_all [--mixers hsa flat mean] [--tasks retrieval qa] [--max-epochs N] [--limit N]
                                  [--set=--model.init_args.depth=3 ...]

With ``--tasks`` leaving some out, the runs of those kept from the last ``results.json`` under ``--root`` are
reused (QA and the re-ranker start from the retrieval models there) and stay in the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from .lightning_cli import lightning_cli
from .probes import other_video_accuracy

__all__ = ["DEFAULT_CHECKPOINTS", "main", "run"]

# Where `make train` leaves the HSA models that inference uses when no checkpoint is given.
DEFAULT_CHECKPOINTS = {task: Path(f"runs/default/{task}.ckpt") for task in ("retrieval", "qa", "rerank")}

RECIPES = {
    "retrieval": "configs/retrieval_synthetic.yaml",
    "qa": "configs/qa_synthetic.yaml",
    "rerank": "configs/rerank_synthetic.yaml",
}
MIXERS = {"hsa": "HSA", "flat": "FSA (flat)", "mean": "mean pool"}
COLUMNS = {
    "retrieval": ["t2v_R@1", "t2v_R@5", "t2v_R@10", "v2t_R@1", "v2t_R@5", "v2t_R@10", "forward_vs_reversed"],
    "qa": ["acc", "acc_direction", "acc_colour_after", "acc_next", "acc_previous", "acc_other_video"],
    "rerank": ["dual_t2v_R@1", "t2v_R@1", "t2v_R@5", "t2v_R@10"],
}


def run(task: str, mixer: str, root: Path, extra: list[str]) -> dict:
    """Fit one recipe with one mixer, test its best checkpoint; metrics and seconds."""
    out = root / f"{task}-{mixer}"  # the run directory: logs, checkpoints and predictions go under it
    args = [
        "-c",
        RECIPES[task],
        "--model.init_args.mixer",
        mixer,
        "--trainer.default_root_dir",
        str(out),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]
    started = time.perf_counter()
    cli = lightning_cli(args, run=False)  # run=False: no subcommand; fit and test are called below
    cli.trainer.fit(cli.model, cli.datamodule)
    fit_seconds = time.perf_counter() - started
    tested = cli.trainer.test(cli.model, cli.datamodule, ckpt_path="best", verbose=False)[0]
    metrics = {k.split("/", 1)[1]: v for k, v in tested.items() if k.startswith("test/")}
    if task == "qa":  # does it read the video? (the best weights are loaded by the test above)
        for row in other_video_accuracy(cli.model, cli.datamodule.splits["test"]):
            suffix = "" if row["type"] == "all" else f"_{row['type']}"
            metrics[f"acc_other_video{suffix}"] = row["accuracy_other_video"]
            metrics[f"acc_swappable{suffix}"] = row["accuracy"]  # the same questions with their own video
    return {
        "task": task,
        "mixer": mixer,
        "metrics": metrics,
        "fit_seconds": round(fit_seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "epochs": cli.trainer.current_epoch,
        "best_checkpoint": cli.trainer.checkpoint_callback.best_model_path,
    }


def table(results: list[dict]) -> str:
    lines = []
    for task in dict.fromkeys(r["task"] for r in results):
        columns = COLUMNS[task]
        lines.append(f"| {task} | " + " | ".join(columns) + " | train s |")
        lines.append("|---" * (len(columns) + 2) + "|")
        for r in (r for r in results if r["task"] == task):
            values = " | ".join(f"{r['metrics'][c]:.3f}" if c in r["metrics"] else "-" for c in columns)
            lines.append(f"| {MIXERS[r['mixer']]} | {values} | {r['fit_seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--mixers", nargs="+", default=list(MIXERS), choices=list(MIXERS))
    parser.add_argument("--max-epochs", type=int, default=None, help="override the recipes' epochs")
    parser.add_argument("--limit", type=int, default=None, help="samples per split (quick runs)")
    parser.add_argument("--root", default="runs/train_all")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="ARG",
        help="more Lightning CLI arguments for every run, e.g. --set=--model.init_args.depth=3",
    )
    args = parser.parse_args(argv)
    extra = list(args.set)
    if args.max_epochs is not None:
        extra += ["--trainer.max_epochs", str(args.max_epochs)]
    if args.limit is not None:
        extra += ["--data.limit", str(args.limit)]
    root = Path(args.root)
    started = time.perf_counter()
    results = []
    earlier = earlier_results(root, args.tasks)
    for task in args.tasks:
        for mixer in args.mixers:
            pretrained = [
                r["best_checkpoint"] for r in results + earlier if r["task"] == "retrieval" and r["mixer"] == mixer
            ]
            if task == "rerank" and (mixer != "hsa" or not pretrained):
                continue  # the re-ranker is trained for HSA, on its own dual encoder's hard negatives
            init = ["--model.init_args.init_from", pretrained[0]] if task != "retrieval" and pretrained else []
            if task == "rerank":
                init += ["--model.init_args.dual_encoder", pretrained[0]]
            results.append(run(task, mixer, root, extra + init))
            print(f"{task} {mixer}: {results[-1]['metrics']} ({results[-1]['seconds']} s)", flush=True)
    total = time.perf_counter() - started
    report = table(earlier + results)
    print(f"\nHeld-out test split of the embedded corpus ({total / 60:.1f} min of training and testing):\n")
    if earlier:
        print(f"(the {', '.join(dict.fromkeys(r['task'] for r in earlier))} rows are an earlier run's, {root})\n")
    print(report)
    root.mkdir(parents=True, exist_ok=True)
    for r in results:  # the HSA models become the defaults of `mmhsa index|search|ask|explain`
        if r["mixer"] == "hsa" and r["best_checkpoint"]:
            target = DEFAULT_CHECKPOINTS[r["task"]]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(r["best_checkpoint"], target.with_suffix(".tmp"))
            os.replace(target.with_suffix(".tmp"), target)
            print(f"default {r['task']} model: {target}")
    summary = {"results": earlier + results, "seconds": round(total, 1)}
    if earlier:
        summary["earlier_seconds"] = round(sum(r["seconds"] for r in earlier), 1)
    (root / "results.json").write_text(json.dumps(summary, indent=1))
    return 0


def earlier_results(root: Path, tasks: list[str]) -> list[dict]:
    """The rows of the tasks not run now from ``root``'s last ``results.json`` whose checkpoints still exist
    (``--tasks rerank`` trains the re-ranker on the retrieval models already there)."""
    path = root / "results.json"
    if not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["results"]
    except (ValueError, KeyError, TypeError) as err:
        print(f"{path}: unreadable ({err}); earlier runs are not reused")
        return []
    kept = [r for r in rows if r["task"] not in tasks]
    return [r for r in kept if r.get("best_checkpoint") and Path(r["best_checkpoint"]).is_file()]


if __name__ == "__main__":
    raise SystemExit(main())
