#!/usr/bin/env bash
# Everything the GPU path needs a GPU for, in one go (one device call; about 5-8 minutes on an H100/H200):
#   1. the Triton tests on the compiled kernels (bf16 included), HSA under torch.compile (Inductor writing
#      Triton) and a bf16-mixed training step of each task, all on CUDA;
#   2. the operator benchmark on CUDA (bf16, 12 heads, head dim 64; table, JSON and plot).
# It uses the machine's own python3 (PY=... to change) and installs nothing; outputs land in
# ${OUT:-benchmarks/results}. Usage, from the repository root:  bash benchmarks/gpu_check.sh
set -uo pipefail
PY=${PY:-python3}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 MMHSA_TEST_CUDA=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" \
  | tee -a "$OUT/gpu.txt" || exit 1

# Each step has a time limit so that one stuck step leaves time (and output) for the other.
timeout 300 $PY -m pytest -q -p no:cacheprovider tests/mmhsa/test_triton.py tests/mmhsa/test_compile.py \
  "tests/pipelines/test_tasks.py::test_bf16_mixed_precision" 2>&1 | tee "$OUT/gpu_tests.log"
tests=$?

# Peak memory (a fresh process per method and pass) is left to the CPU runs: it would double the time here.
# The table's rows are printed (and logged) as they come, so a run cut short still leaves its first rows.
timeout 360 $PY benchmarks/bench_op.py --device cuda --no-memory --out "$OUT/bench_op_cuda.json" 2>&1 | tee "$OUT/bench_op_cuda.log"
bench=$?

echo "tests exit $tests, benchmark exit $bench"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
