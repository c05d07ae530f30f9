"""The fusion model shared by the tasks: a hierarchical encoder over one sample's cross-modal tree.

:class:`FusionModule` holds the encoder (HSA, or a baseline mixer over the same leaves), the
optimiser (AdamW, linear warm-up then cosine decay) and the guard that stops a run on a non-finite
loss, naming the step and the samples. The tasks (:mod:`pipelines.retrieval`, :mod:`pipelines.qa`)
add their heads and losses.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from torch import nn

from mmhsa import Hierarchy
from mmhsa.nn import HierarchicalEncoder, pool_nodes

from .data import Trees

__all__ = ["KEYS", "FusionModule", "mlp", "pool_roots"]

# Named slots of a sample's root (the key vocabulary of the position encoders).
KEYS = ("video", "transcript", "captions", "question", *(f"answer_{k}" for k in range(10)))
MODALITY_DIMS = {"video": 1280, "text": 384}  # EfficientNet-Lite0 patches, MiniLM-L6 tokens


def pool_roots(x: torch.Tensor, hierarchy: Hierarchy) -> torch.Tensor:
    """Leaf-mean of every tree of a forest: [N, C] -> [T, C]."""
    return pool_nodes(x, hierarchy, hierarchy.tree_node_ptr[:-1])


class FusionModule(pl.LightningModule):
    """Encoder + optimiser shared by the task modules.

    Args:
        mixer: "hsa" (the model), or the baselines over the same leaves and inputs: "flat" (softmax
            attention over all leaves of a sample, FSA) and "mean" (attention-free mean pooling, DeepSet).
        dim, depth, heads, dropout: encoder sizes.
        pos_dim: channels of HSA's sibling position vectors per head (0: none).
        backend: HSA backend ("auto": Triton on CUDA, torch elsewhere).
        lr, weight_decay, warmup_steps: AdamW with linear warm-up, then cosine decay to 0 over the run.
    """

    def __init__(self, mixer: str = "hsa", dim: int = 128, depth: int = 2, heads: int = 4, dropout: float = 0.1,
                 pos_dim: int = 8, backend: str = "auto", lr: float = 1e-3, weight_decay: float = 0.05,
                 warmup_steps: int = 50):
        super().__init__()
        self.encoder = HierarchicalEncoder(MODALITY_DIMS, dim=dim, depth=depth, heads=heads, dropout=dropout,
                                           pos_dim=pos_dim, keys=KEYS, backend=backend, mixer=mixer)
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps

    def encode(self, trees: Trees) -> torch.Tensor:
        """Contextual leaf features [N, dim]."""
        return self.encoder(trees.features, trees.leaf_modality, trees.hierarchy)

    def check_loss(self, loss: torch.Tensor, batch_idx: int, ids: list[str]) -> None:
        """Stop on a non-finite loss before it reaches the weights (and the checkpoints)."""
        if not torch.isfinite(loss):
            shown = ", ".join(ids[:8]) + (" ..." if len(ids) > 8 else "")
            raise FloatingPointError(f"non-finite loss {loss.item()} at global step {self.global_step}, epoch "
                                     f"{self.current_epoch}, batch {batch_idx} (samples {shown}); stopping before "
                                     "the update")

    def configure_optimizers(self):
        decay = [p for n, p in self.named_parameters() if p.ndim >= 2 and "embedding" not in n]
        rest = [p for n, p in self.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                       {"params": rest, "weight_decay": 0.0}], lr=self.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(self.warmup_steps, total // 2)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def mlp(inputs: int, hidden: int, outputs: int, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, outputs))
