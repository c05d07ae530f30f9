"""Triton backend: varlen family-attention kernels (forward and backward) for the HSA family pass.

The kernels run on CUDA, and on CPU under ``TRITON_INTERPRET=1`` (set before this package is
imported) for tests. The tree passes around them are the PyTorch ones.
"""

from .launch import Bucket, TritonFamilyAttention, block_tables, buckets, family_pass_triton

__all__ = ["Bucket", "TritonFamilyAttention", "block_tables", "buckets", "family_pass_triton"]
