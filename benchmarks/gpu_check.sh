#!/usr/bin/env bash
# Everything the GPU path needs a GPU for (usage, from the repository root):
#   bash benchmarks/gpu_check.sh [all|tests|bench|compiled]
#   tests     the Triton tests on the compiled kernels (bf16 included), HSA under torch.compile (Inductor
#             writing Triton) and a bf16-mixed training step of each task, all on CUDA
#   bench     the operator benchmark (bf16, 12 heads, head dim 64): Triton HSA, torch-backend HSA, flat
#             FlashAttention, varlen FlashAttention over the leaf families; every case
#   compiled  Triton HSA eager vs torch.compile vs torch.compile + CUDA graphs, at 12,544 and 50,176 leaves
# Each step has a time limit (all three: under 10 minutes), so a stuck step leaves time and output for the
# rest. It uses the machine's own python3 (PY=... to change) and installs nothing; outputs (logs, JSON,
# plots) land in ${OUT:-benchmarks/results}.
set -uo pipefail
PY=${PY:-python3}
OUT=${OUT:-benchmarks/results}
STEP=${1:-all}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 MMHSA_TEST_CUDA=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" \
  | tee -a "$OUT/gpu.txt" || exit 1

status=0
if [[ $STEP == all || $STEP == tests ]]; then
  timeout 180 $PY -m pytest -q -p no:cacheprovider tests/mmhsa/test_triton.py tests/mmhsa/test_compile.py \
    "tests/pipelines/train/test_tasks.py::test_bf16_mixed_precision" 2>&1 | tee "$OUT/gpu_tests.log" || status=1
fi
# Rows are printed (and logged) as they come, so a run cut short still leaves its first rows. Peak memory (a
# fresh process per method and pass) is left to the CPU runs: it would double the time here.
if [[ $STEP == all || $STEP == bench ]]; then
  timeout 180 $PY benchmarks/bench_op.py --device cuda --no-memory --methods hsa,hsa_torch,flat,blockdiag \
    --out "$OUT/bench_op_cuda.json" 2>&1 | tee "$OUT/bench_op_cuda.log" || status=1
fi
if [[ $STEP == all || $STEP == compiled ]]; then
  timeout 200 $PY benchmarks/bench_op.py --device cuda --no-memory --methods hsa,hsa_compiled,hsa_graphs,blockdiag \
    --cases "video 8x8x196,video 32x8x196" --out "$OUT/bench_op_cuda_compiled.json" 2>&1 \
    | tee "$OUT/bench_op_cuda_compiled.log" || status=1
fi
echo "gpu_check $STEP: exit $status"
exit $status
