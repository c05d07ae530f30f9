"""Operator benchmark: HSA (torch dynamic program) against flat and block-diagonal attention.

For trees shaped like videos (clips x frames x patches) and texts (sections x sentences x tokens) it
times, in one process so that ratios are like for like:

- ``hsa``: mmhsa.hsa, backend "torch" on CPU, "triton" on CUDA (plus ``hsa_torch`` there);
- ``hsa_compiled``: the same under ``torch.compile`` (the tree passes compiled; on CUDA the Triton
  family pass runs as it is), timed after the compile; on CUDA also ``hsa_graphs``, compiled with
  ``mode="reduce-overhead"`` (CUDA graphs: no per-kernel launch cost on the host);
- ``flat``: ``scaled_dot_product_attention`` over all leaves (skipped above ``--flat-max`` leaves);
- ``blockdiag``: attention inside each leaf family only (frames, sentences), the work HSA cannot
  avoid, so its floor: one ``scaled_dot_product_attention`` call per family size on CPU,
  FlashAttention's varlen kernel on CUDA.

On CUDA it also reports achieved TFLOP/s and GB/s next to the measured roofline (a large bf16
matmul and a device copy).

Forward and forward+backward, median of repeats; peak memory of each in a fresh subprocess (peak RSS
growth on CPU, ``max_memory_allocated`` on CUDA). Prints a table, writes JSON and a log-log plot.

Large temporaries on CPU go through glibc malloc, which by default maps and unmaps every big block, so
each call pays page faults; ``--malloc tuned`` (the default) re-runs the script with glibc told to keep
freed memory (``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``), as PyTorch's CPU tuning guides
recommend a caching allocator. Both sides of every ratio run under the same allocator.

    python benchmarks/bench_op.py [--device cuda] [--malloc default] [--quick] [--methods hsa,flat]
                                  [--cases "video 8x8x196"]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmhsa import Hierarchy, hsa  # noqa: E402

TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
OUT_DIR = Path(__file__).resolve().parent / "results"
HSA_METHODS = ("hsa", "hsa_compiled", "hsa_graphs", "hsa_torch")


# ------------------------------------------------------------------ cases
def video_case(clips: int, frames: int, side: int) -> tuple[str, Hierarchy]:
    h = Hierarchy.regular(
        [clips, frames, (side, side)], kinds=["video", "clip", "frame", "patch"], domains=["time", "index", "grid"]
    )
    return f"video {clips}x{frames}x{side * side}", h


def text_case(sections: int, sentences: int, tokens: int, seed: int = 0) -> tuple[str, Hierarchy]:
    """Irregular text: each section has 0.5x..1.5x `sentences` sentences of 0.5x..1.5x `tokens` tokens."""
    rng = np.random.default_rng(seed)
    tree, leaf = [], 0
    for _ in range(sections):
        section = []
        for _ in range(int(rng.integers(sentences // 2, sentences * 3 // 2 + 1))):
            length = int(rng.integers(tokens // 2, tokens * 3 // 2 + 1))
            section.append(list(range(leaf, leaf + length)))
            leaf += length
        tree.append(section)
    return f"text {sections}x~{sentences}x~{tokens}", Hierarchy.from_nested(tree)


def cases(quick: bool) -> list[tuple[str, Hierarchy]]:
    if quick:
        return [video_case(2, 4, 7), text_case(4, 4, 12)]
    return [
        video_case(8, 8, 7),
        video_case(8, 8, 14),
        video_case(16, 8, 14),
        video_case(32, 8, 14),
        text_case(16, 8, 24),
        text_case(64, 8, 24),
    ]


# ------------------------------------------------------------------ methods
def leaf_family_groups(h: Hierarchy) -> list[tuple[int, torch.Tensor | slice]]:
    """Families of leaves grouped by size: (size, leaf index [F_s, size] or a slice when consecutive)."""
    p = h.plan
    child_nodes = p.node[p.family_start]  # first child of every family (the trees here are homogeneous)
    leafy = h.num_children[child_nodes] == 0
    starts, sizes = h.leaf_start[child_nodes[leafy]], p.family_size[leafy]
    groups = []
    for size in sorted(set(sizes.tolist())):
        first = starts[sizes == size]
        if torch.equal(first, first[0] + size * torch.arange(len(first))):  # a run: a plain view
            groups.append((size, slice(int(first[0]), int(first[0]) + size * len(first))))
        else:
            groups.append((size, first[:, None] + torch.arange(size)))
    return groups


def make_methods(h: Hierarchy, q, k, v) -> dict:
    """The timed callables. On CUDA, ``hsa`` is the Triton backend and ``hsa_torch`` the torch one,
    and the block-diagonal floor is FlashAttention's varlen kernel over the leaf families."""
    groups = leaf_family_groups(h)
    backend = "triton" if q.is_cuda else "torch"
    torch._dynamo.reset()  # every case compiles afresh (the lambda's code object would pile up entries)
    compiled = torch.compile(lambda q, k, v: hsa(q, k, v, h, backend=backend))  # compiles on the first call

    def blockdiag():
        outs = []
        for size, where in groups:  # one batched SDPA call per family size, as [F_s, H, size, D]
            if isinstance(where, slice):
                qq, kk, vv = (x[where].unflatten(0, (-1, size)).transpose(1, 2) for x in (q, k, v))
            else:
                qq, kk, vv = (x[where].transpose(1, 2) for x in (q, k, v))
            outs.append(F.scaled_dot_product_attention(qq, kk, vv))
        return outs

    methods = {
        "hsa": lambda: hsa(q, k, v, h, backend=backend),
        "hsa_compiled": lambda: compiled(q, k, v),
        "flat": lambda: F.scaled_dot_product_attention(*[x.transpose(0, 1)[None] for x in (q, k, v)]),
        "blockdiag": blockdiag,
    }
    if q.is_cuda:
        graphed = torch.compile(lambda q, k, v: hsa(q, k, v, h, backend=backend), mode="reduce-overhead")
        methods["hsa_graphs"] = lambda: graphed(q, k, v)
        methods["hsa_torch"] = lambda: hsa(q, k, v, h, backend="torch")
        methods["blockdiag"] = varlen_blockdiag(h, q, k, v) or blockdiag
    return methods


def varlen_blockdiag(h: Hierarchy, q, k, v):
    """FlashAttention varlen over the leaf families (cu_seqlens), or None where unavailable."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    sizes = [size for size, where in leaf_family_groups(h) for _ in range(_count(where, size))]
    if sum(sizes) != h.num_leaves:  # leaves outside leaf families: not a plain varlen layout
        return None
    # Families in leaf order (the groups above are by size).
    p = h.plan
    child_nodes = p.node[p.family_start]
    leafy = h.num_children[child_nodes] == 0
    order = torch.argsort(h.leaf_start[child_nodes[leafy]])
    lengths = p.family_size[leafy][order]
    cu = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(q.device, torch.int32)
    longest = int(lengths.max())
    return lambda: varlen_attn(q, k, v, cu, cu, longest, longest)


def _count(where, size) -> int:
    return (where.stop - where.start) // size if isinstance(where, slice) else len(where)


def attention_flops(h: Hierarchy, heads: int, dim: int, method: str) -> float:
    """Forward matmul FLOPs (QK^T and PV): flat N^2, block-diagonal sum over leaf families of b^2,
    HSA sum over all families of b^2 (the tree passes are O(N d) and not counted)."""
    if method == "flat":
        pairs = float(h.num_leaves) ** 2
    else:
        sizes = h.plan.family_size.double()
        if method == "blockdiag":
            sizes = sizes[h.num_children[h.plan.node[h.plan.family_start]] == 0]
        pairs = float((sizes**2).sum())
    return 4.0 * pairs * dim * heads


def cuda_roofline() -> dict:
    """Measured peak: a large bf16 matmul (TFLOP/s) and a device-to-device copy (GB/s)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = time_ms(lambda: a @ a, False, 10, "cuda")
    x = torch.empty(1 << 28, device="cuda", dtype=torch.float32)  # 1 GiB
    copy_ms = time_ms(lambda: x.clone(), False, 10, "cuda")
    return {"matmul_tflops": 2 * 8192**3 / ms / 1e9, "copy_gbps": 2 * x.numel() * 4 / copy_ms / 1e6}


def run(fn, backward: bool):
    out = fn()
    if backward:
        outs = out if isinstance(out, list) else [out]
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])


def time_ms(fn, backward: bool, repeats: int, device: str) -> float:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):  # warm-up: a compiled method compiles on its first call and settles on the second
        run(fn, backward)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        run(fn, backward)
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def inputs(h: Hierarchy, heads: int, dim: int, dtype, device, grad: bool):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(h.num_leaves, heads, dim, generator=g).to(device, dtype).requires_grad_(grad) for _ in range(3)]


def peak_memory_mb(case: int, method: str, backward: bool, args) -> float | None:
    """Peak memory of one call, measured in a fresh process (default allocator: nothing cached)."""
    env = {k: v for k, v in os.environ.items() if k not in TUNED_MALLOC}
    cmd = [
        sys.executable,
        __file__,
        "--device",
        args.device,
        "--heads",
        str(args.heads),
        "--dim",
        str(args.dim),
        "--dtype",
        args.dtype,
        "--memory-probe",
        f"{case}:{method}:{int(backward)}",
    ] + (["--quick"] if args.quick else [])
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        print(f"  memory probe {method} failed: {res.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return float(res.stdout.strip().splitlines()[-1])


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_probe(spec: str, args) -> None:
    case, method, backward = spec.split(":")
    _, h = cases(args.quick)[int(case)]
    h = h.to(args.device)
    dtype = getattr(torch, args.dtype)
    q, k, v = inputs(h, args.heads, args.dim, dtype, args.device, grad=backward == "1")
    fn = make_methods(h, q, k, v)[method]
    run(fn, backward == "1")  # warm-up: one-time allocations of the autograd engine and thread pools
    if args.device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run(fn, backward == "1")
        torch.cuda.synchronize()
        print((torch.cuda.max_memory_allocated() - base) / 2**20)
        return
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
    base = _rss_kb("VmRSS:")
    run(fn, backward == "1")
    print((_rss_kb("VmHWM:") - base) / 1024)


# ------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    ap.add_argument("--heads", type=int, default=None, help="default: 8 on CPU, 12 on CUDA")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--flat-max", type=int, default=12544, help="largest leaf count for flat attention")
    ap.add_argument("--malloc", choices=["tuned", "default"], default="tuned")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--quick", action="store_true", help="tiny cases (a smoke run)")
    ap.add_argument(
        "--methods", default=None, help="comma-separated subset of hsa,hsa_compiled,hsa_graphs,hsa_torch,flat,blockdiag"
    )
    ap.add_argument("--cases", default=None, help="comma-separated substrings of case names (default: all)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/bench_op_<device>.json)")
    ap.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    args.heads = args.heads or (12 if args.device == "cuda" else 8)
    if args.memory_probe:
        return memory_probe(args.memory_probe, args)
    if args.device == "cpu" and args.malloc == "tuned" and any(os.environ.get(k) != v for k, v in TUNED_MALLOC.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **TUNED_MALLOC})
    dtype = getattr(torch, args.dtype)
    device_name = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{platform.processor() or 'CPU'} x{torch.get_num_threads()} threads"
    )
    print(
        f"HSA operator benchmark: {device_name}, {args.dtype}, {args.heads} heads, head dim {args.dim}, "
        f"malloc {args.malloc if args.device == 'cpu' else 'n/a'}, torch {torch.__version__}"
    )
    roofline = cuda_roofline() if args.device == "cuda" else None
    if roofline:
        print(
            f"measured roofline: {roofline['matmul_tflops']:.0f} TFLOP/s (bf16 matmul), "
            f"{roofline['copy_gbps']:.0f} GB/s (copy)"
        )
    wanted = None if args.methods is None else args.methods.split(",")
    rows, header = [], None
    for ci, (name, h) in enumerate(cases(args.quick)):
        if args.cases and not any(part in name for part in args.cases.split(",")):
            continue
        h = h.to(args.device)
        n = h.num_leaves
        for backward in (False, True):
            q, k, v = inputs(h, args.heads, args.dim, dtype, args.device, grad=backward)
            methods = make_methods(h, q, k, v)
            unknown = set(wanted or ()) - set(methods)
            if unknown:
                raise SystemExit(f"unknown method(s) {sorted(unknown)} on {args.device}; have {sorted(methods)}")
            methods = {m: fn for m, fn in methods.items() if wanted is None or m in wanted}
            row = {"case": name, "leaves": n, "nodes": h.num_nodes, "pass": "fwd+bwd" if backward else "fwd"}
            for method, fn in methods.items():
                if method == "flat" and n > args.flat_max:
                    continue
                reps = 1 if method == "flat" and n > 4000 else args.repeats
                row[f"{method}_ms"] = time_ms(fn, backward, reps, args.device)
                if not args.no_memory and method != "flat":
                    row[f"{method}_peak_mb"] = peak_memory_mb(ci, method, backward, args)
            for method in HSA_METHODS:  # ratios against the floor and against flat attention
                if f"{method}_ms" in row and "blockdiag_ms" in row:
                    row[f"{method}/blockdiag"] = row[f"{method}_ms"] / row["blockdiag_ms"]
                if f"{method}_ms" in row and "flat_ms" in row:
                    row[f"flat/{method}"] = row["flat_ms"] / row[f"{method}_ms"]
            if args.device == "cuda":  # achieved throughput (fwd+bwd counted as 3.5x the forward FLOPs)
                io_bytes = 4 * n * args.heads * args.dim * q.element_size() * (2.5 if backward else 1)
                for method in methods:
                    if f"{method}_ms" in row:
                        flops = attention_flops(
                            h, args.heads, args.dim, method if method in ("flat", "blockdiag") else "hsa"
                        )
                        seconds = row[f"{method}_ms"] / 1e3
                        row[f"{method}_tflops"] = flops * (3.5 if backward else 1) / seconds / 1e12
                        row[f"{method}_gbps"] = io_bytes / seconds / 1e9
            rows.append(row)
            header = print_row(row, list(methods), args.device == "cuda", header)
    OUT_DIR.mkdir(exist_ok=True)
    stem = f"bench_op_{args.device}" + ("" if args.malloc == "tuned" or args.device != "cpu" else "_default_malloc")
    out = Path(args.out) if args.out else OUT_DIR / f"{stem}.json"
    meta = {
        "device": device_name,
        "dtype": args.dtype,
        "heads": args.heads,
        "dim": args.dim,
        "malloc": args.malloc,
        "torch": torch.__version__,
        "repeats": args.repeats,
        "roofline": roofline,
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    plot(rows, out.with_suffix(".png"), meta)
    print(f"wrote {out} and {out.with_suffix('.png')}")


def print_row(row: dict, methods: list[str], cuda: bool, header: list | None) -> list:
    """Print one table row (and the header first, when ``header`` is None); returns the columns used."""
    if header is None:
        hsa_like = [m for m in HSA_METHODS if m in methods]
        header = [("case", 20, "{}"), ("leaves", 7, "{:,}"), ("pass", 8, "{}")]
        header += [(f"{m}_ms", max(len(m) + 3, 9), "{:.1f}") for m in methods]
        header += [(f"{m}/blockdiag", len(m) + 10, "{:.2f}") for m in hsa_like if "blockdiag" in methods]
        header += [(f"flat/{m}", len(m) + 5, "{:.1f}") for m in hsa_like if "flat" in methods]
        if cuda:
            header += [(f"{m}_tflops", len(m) + 7, "{:.1f}") for m in methods]
            header += [(f"{m}_gbps", len(m) + 5, "{:.0f}") for m in methods]
        else:
            header += [(f"{m}_peak_mb", len(m) + 8, "{:.0f}") for m in methods if m != "flat"]
        print(" ".join(f"{c:>{w}}" for c, w, _ in header))
    cells = []
    for c, w, fmt in header:
        value = row.get(c)
        cells.append(f"{'-' if value is None else fmt.format(value):>{w}}")
    print(" ".join(cells), flush=True)
    return header


def plot(rows: list[dict], path: Path, meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, pass_name in zip(axes, ("fwd", "fwd+bwd")):
        for kind, marker in (("video", "o"), ("text", "s")):
            sel = sorted(
                (r for r in rows if r["pass"] == pass_name and r["case"].startswith(kind)), key=lambda r: r["leaves"]
            )
            for method, color in (
                ("hsa", "C0"),
                ("hsa_compiled", "C1"),
                ("hsa_graphs", "C4"),
                ("hsa_torch", "C5"),
                ("blockdiag", "C2"),
                ("flat", "C3"),
            ):
                pts = [(r["leaves"], r[f"{method}_ms"]) for r in sel if f"{method}_ms" in r]
                if pts:
                    ax.plot(
                        *zip(*pts),
                        marker=marker,
                        color=color,
                        linestyle="-" if kind == "video" else "--",
                        label=f"{method} ({kind})",
                    )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("leaves (tokens)")
        ax.set_title(pass_name)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("time (ms)")
    axes[1].legend(fontsize=8)
    fig.suptitle(
        f"HSA vs flat / block-diagonal SDPA: {meta['device']}, {meta['dtype']}, {meta['heads']} heads x {meta['dim']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
