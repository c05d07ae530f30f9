"""Test-wide settings. Environment variables must be set before torch/triton are imported."""

import os

# Triton kernels run on CPU through the interpreter; it must be on before any kernel is decorated.
# On a machine with a GPU, MMHSA_TEST_CUDA=1 keeps the real kernels.
if os.environ.get("MMHSA_TEST_CUDA") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
