"""The HSA operator: one dispatcher over the reference, PyTorch and Triton backends."""

from .dispatch import HSA_BACKENDS, hsa
from .dynamic import hsa_torch
from .reference import hsa_matrix, hsa_reference

__all__ = ["hsa", "hsa_matrix", "hsa_reference", "hsa_torch", "HSA_BACKENDS"]
