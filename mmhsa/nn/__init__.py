"""Neural network layers on HSA: attention, HTE blocks, position encoders, the hierarchical encoder."""

from .attention import HSAAttention, HTEBlock
from .encoder import HierarchicalEncoder, pool_nodes, previous_leaf
from .position import PathEmbedding, PositionEncoder, sinusoid

__all__ = [
    "HSAAttention",
    "HTEBlock",
    "HierarchicalEncoder",
    "PathEmbedding",
    "PositionEncoder",
    "pool_nodes",
    "previous_leaf",
    "sinusoid",
]
