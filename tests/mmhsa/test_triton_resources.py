"""The Triton kernels compiled for real GPUs (sm_80, sm_86, sm_90) in every launch configuration the
launcher can pick: they must compile, spill no registers and fit the architecture's shared memory.

No GPU is needed: Triton's compiler and cuobjdump ship in its wheel. The compile runs in a
subprocess because the test session has TRITON_INTERPRET=1 set (the interpreter replaces kernels).
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")
pytestmark = pytest.mark.slow  # compiles every configuration for three architectures (~90 s without a cache)

# ptxas sometimes parks a register or two (8 bytes) on the stack; a configuration that really
# spills (64-row fp32 blocks, say) puts kilobytes there.
STACK_NOISE_BYTES = 16


def outside_interpreter(*args: str) -> str:
    """Run ``python *args`` without TRITON_INTERPRET (real kernels to compile); its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("resources") / "rows.json"
    outside_interpreter("-m", "mmhsa.attention.triton.resources", "--arch", "80", "86", "90", "--json", str(out))
    return json.loads(out.read_text())


def test_every_launch_configuration_compiles_for_each_architecture(rows):
    from mmhsa.attention.triton.resources import HEAD_DIMS

    for arch in (80, 86, 90):
        mine = [r for r in rows if r["arch"] == arch]
        assert {(r["dtype"], r["head_dim"], r["kernel"]) for r in mine} == {
            (d, h, k) for d in ("fp16", "bf16", "fp32") for h in HEAD_DIMS for k in ("fwd", "bwd_dkdv", "bwd_dq")
        }


def test_no_register_spills(rows):
    spilled = [r for r in rows if r["stack_bytes"] > STACK_NOISE_BYTES]
    assert not spilled, "\n".join(map(str, spilled))


def test_shared_memory_fits(rows):
    too_big = [r for r in rows if r["shared_bytes"] > r["shared_limit_bytes"]]
    assert not too_big, "\n".join(map(str, too_big))


def compiled(call: str) -> str:
    """Run ``compile_usage(...)`` (written as ``call``) outside the interpreter; its printed result."""
    code = (
        "import torch; from mmhsa.attention.triton.resources import compile_usage, KERNELS;"
        f"from mmhsa.attention.triton.launch import Bucket; print({call})"
    )
    return outside_interpreter("-c", code).strip().splitlines()[-1]


def test_the_check_catches_a_spilling_configuration():
    """The measurement can fail: a 64-row fp32 block (what the launcher avoids) spills kilobytes."""
    stack = compiled("compile_usage(KERNELS['fwd'], torch.float32, 64, Bucket(None, 64, 4), 90)['stack_bytes']")
    assert int(stack) > 1024


@pytest.mark.parametrize("kernel", ["fwd", "bwd_dkdv", "bwd_dq"])
def test_wide_offsets_compile(kernel):
    """The 64-bit-offset variant (tensors of 2^31+ elements) compiles for sm_90 (it may spill: rare, correct)."""
    assert "registers" in compiled(
        f"compile_usage(KERNELS['{kernel}'], torch.bfloat16, 64, Bucket(None, 32, 8), 90, wide=True)"
    )


def test_refuses_to_run_under_the_interpreter():
    from mmhsa.attention.triton.resources import report

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs under the interpreter only")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        report((90,))
