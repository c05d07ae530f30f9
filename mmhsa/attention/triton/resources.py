"""Compile the family-attention kernels for NVIDIA GPUs ahead of time (no GPU needed) and report the
resources of every launch configuration: registers, spilled bytes (the stack) and shared memory.

Why: the CPU tests run the kernels in the interpreter, which cannot see that a configuration spills
registers (slow on the device) or asks for more shared memory than a GPU has (an error at launch).
Triton's compiler, ``ptxas`` and ``cuobjdump`` ship in the Triton wheel, so the real device binaries
can be built and inspected here. Run it without ``TRITON_INTERPRET`` (the interpreter replaces the
kernels by Python functions).

    python -m mmhsa.attention.triton.resources [--arch 80 86 90] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from .family_kernels import _family_bwd_dkdv, _family_bwd_dq, _family_fwd
from .launch import Bucket, buckets

KERNELS = {"fwd": _family_fwd, "bwd_dkdv": _family_bwd_dkdv, "bwd_dq": _family_bwd_dq}
# Largest dynamic shared memory one block may opt into, bytes (CUDA programming guide, compute capabilities).
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
HEAD_DIMS = (16, 32, 64, 128, 256)  # the padded head dims (BLOCK_DK = BLOCK_DV) the launcher can use
FP32_POINTERS = {"LOG_N", "ETA", "U", "ROW", "DK_OUT", "DV_OUT", "DQ_OUT"}  # fp32 whatever the inputs


def signature(kernel, dtype: str) -> dict[str, str]:
    """Triton type of every argument: the inputs in ``dtype``, statistics fp32, tables and sizes i32."""
    types = {}
    for name in kernel.arg_names:
        if name.startswith("BLOCK_") or name in ("IEEE", "WIDE"):
            types[name] = "constexpr"
        elif name in ("Q", "K", "V", "GU"):
            types[name] = "*" + dtype
        elif name in FP32_POINTERS:
            types[name] = "*fp32"
        elif name.startswith("BLK_"):
            types[name] = "*i32"
        else:  # strides and head dims
            types[name] = "i32"
    return types


def _tool(name: str) -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def compile_usage(kernel, dtype: torch.dtype, block_d: int, bucket: Bucket, arch: int, wide: bool = False) -> dict:
    """Compile one kernel for ``sm_<arch>`` and read its registers, stack (spills) and shared memory.

    ``wide``: the 64-bit-offset variant (tensors of 2^31+ elements only).
    """
    constants = dict(
        BLOCK_M=bucket.block,
        BLOCK_N=bucket.block,
        BLOCK_DK=block_d,
        BLOCK_DV=block_d,
        IEEE=dtype == torch.float32,
        WIDE=wide,
    )
    compiled = triton.compile(
        ASTSource(kernel, signature(kernel, DTYPES[dtype]), constexprs=constants),
        target=GPUTarget("cuda", arch, 32),
        options=dict(num_warps=bucket.warps),
    )
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        dump = subprocess.run(
            [_tool("cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True, check=True
        ).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", dump)
    if found is None:
        raise RuntimeError(f"cuobjdump printed no resource usage for {kernel.__name__}:\n{dump}")
    return {
        "registers": int(found.group(1)),
        "stack_bytes": int(found.group(2)),
        "shared_bytes": int(compiled.metadata.shared),
    }


def launch_configurations():
    """Every (kernel name, dtype, padded head dim, bucket) the launcher (:func:`buckets`) can pick."""
    for dtype in DTYPES:
        for block_d in HEAD_DIMS:
            for name in KERNELS:
                for bucket in buckets(dtype, block_d, backward=name != "fwd"):
                    yield name, dtype, block_d, bucket


def report(arches=(80, 86, 90)) -> list[dict]:
    """One row per (architecture, launch configuration, kernel)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter replaces the kernels, nothing to compile")
    rows = []
    for arch in arches:
        for name, dtype, block_d, bucket in launch_configurations():
            usage = compile_usage(KERNELS[name], dtype, block_d, bucket, arch)
            rows.append(
                {
                    "arch": arch,
                    "dtype": DTYPES[dtype],
                    "head_dim": block_d,
                    "block": bucket.block,
                    "warps": bucket.warps,
                    "kernel": name,
                    **usage,
                    "shared_limit_bytes": SHARED_LIMIT.get(arch),
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 86, 90], help="compute capabilities (sm_XX)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    rows = report(args.arch)
    print(
        f"{'arch':>5} {'dtype':>5} {'head dim':>8} {'block':>5} {'warps':>5} {'kernel':>9} "
        f"{'regs':>5} {'spilled B':>9} {'shared KB':>9} {'limit KB':>8}"
    )
    for r in rows:
        limit = "?" if r["shared_limit_bytes"] is None else r["shared_limit_bytes"] // 1024
        print(
            f"{'sm_' + str(r['arch']):>5} {r['dtype']:>5} {r['head_dim']:>8} {r['block']:>5} {r['warps']:>5} "
            f"{r['kernel']:>9} {r['registers']:>5} {r['stack_bytes']:>9} {r['shared_bytes'] / 1024:>9.1f} {limit:>8}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
