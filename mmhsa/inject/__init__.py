"""Zero-shot HSA inside pretrained transformers (paper section 5.3, Table 3).

HSA is the KL-closest block-constrained approximation of softmax attention (docs/operator.md, Thm 3.2),
so it can stand in for softmax attention in chosen layers of a trained model without training, and
with ``include_self=True`` a flat hierarchy gives the model's own softmax back exactly.

    from mmhsa.inject import hsa_attention, window_hierarchy, attention_flops

    with hsa_attention(bert, layers=[-2, -1], hierarchy=window_hierarchy):
        hidden = bert(**batch).last_hidden_state

- :mod:`.sites`: which modules are attention layers (HF BERT-family, timm ViT, open_clip) and how
  each is diverted and restored;
- :mod:`.core`: :func:`hsa_attention` / :class:`HSAInjection` (padding, batching, per-sample trees);
- :mod:`.hierarchies`: hopping windows, text structure, 2-D patch windows, flat;
- :mod:`.flops`: :func:`attention_flops`, the cost of a replaced layer against softmax.
"""

from .core import HierarchySource, HSAInjection, hsa_attention
from .flops import AttentionFlops, attention_flops
from .hierarchies import TokenHierarchy, flat_hierarchy, grid_hierarchy, text_hierarchy, window_hierarchy
from .sites import AttentionSite, find_attention_sites

__all__ = [
    "AttentionFlops",
    "AttentionSite",
    "HSAInjection",
    "HierarchySource",
    "TokenHierarchy",
    "attention_flops",
    "find_attention_sites",
    "flat_hierarchy",
    "grid_hierarchy",
    "hsa_attention",
    "text_hierarchy",
    "window_hierarchy",
]
