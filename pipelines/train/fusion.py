"""The fusion model shared by the tasks: a hierarchical encoder over one sample's cross-modal tree.

:class:`FusionModule` holds the encoder (HSA, or a baseline mixer over the same leaves), the
optimiser (AdamW, linear warm-up then cosine decay) and the guard that stops a run on a non-finite
loss, naming the step and the samples. The tasks (:mod:`pipelines.train.retrieval`, :mod:`pipelines.train.qa`)
add their heads and losses.
"""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from data_prep.schema import DEFAULT_FEATURE_DIMS, MODALITIES, ROOT_KEYS
from mmhsa import Hierarchy
from mmhsa.nn import HierarchicalEncoder, pool_nodes

from .batches import Trees
from .distributed import every_rank, rng_states, set_rng_states, world_size

__all__ = ["FusionModule", "mlp", "pool_roots", "read_checkpoint", "refused_global"]


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
        init_from: a checkpoint of any task module whose encoder starts this one (fine-tuning, e.g. QA
            from the retrieval model: the contrastive task grounds words in the video first).
        content_position: content x position leaf inputs (see :class:`~mmhsa.nn.HierarchicalEncoder`).
        frame_differences: each patch also gets its change since the same cell of the previous frame
            (``difference_modalities`` of :class:`~mmhsa.nn.HierarchicalEncoder`).
        feature_dims: input feature width per modality (``{"video": 1280, "text": 384}``); the Lightning CLI
            links it from the prepared data's manifest (:attr:`~pipelines.train.data.ShardDataModule.feature_dims`);
            None: the default encoders' widths (:data:`data_prep.schema.DEFAULT_FEATURE_DIMS`).
    """

    monitor: str | None = None  # each task's validation metric for the best checkpoint (higher is better)

    def __init__(
        self,
        mixer: str = "hsa",
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        dropout: float = 0.1,
        pos_dim: int = 8,
        backend: str = "auto",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 50,
        init_from: str | None = None,
        content_position: bool = False,
        frame_differences: bool = False,
        feature_dims: dict[str, int] | None = None,
    ):
        super().__init__()
        widths = {**DEFAULT_FEATURE_DIMS, **(feature_dims or {})}
        self.encoder = HierarchicalEncoder(
            {m: widths[m] for m in MODALITIES},
            dim=dim,
            depth=depth,
            heads=heads,
            dropout=dropout,
            pos_dim=pos_dim,
            keys=ROOT_KEYS,
            backend=backend,
            mixer=mixer,
            content_position=content_position,
            difference_modalities=("video",) if frame_differences else (),
        )
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self._outputs: list = []
        if init_from:
            self.load_encoder(init_from)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, trust: bool = False, **overrides) -> FusionModule:
        """The task module a checkpoint file holds, with its trained weights (:meth:`from_state` of
        :func:`read_checkpoint`)."""
        return cls.from_state(read_checkpoint(Path(checkpoint), trust), checkpoint, **overrides)

    @classmethod
    def from_state(cls, state: dict, checkpoint: str | Path, **overrides) -> FusionModule:
        """The task module of a read checkpoint (``state``), with its trained weights (train mode, CPU).

        The class is the one the checkpoint records, looked up by name among ``cls`` and its subclasses
        (never imported from the file: a checkpoint names no code to run); its settings are the saved
        hyper-parameters, updated with ``overrides``.

        Raises:
            ValueError: a checkpoint of a class that is not ``cls`` (or one of its subclasses), or weights
                that do not fit the class (naming the first mismatch); ``checkpoint`` names it.
        """
        hparams = dict(state.get("hyper_parameters") or {})
        recorded = (state.get("mmhsa_class") or hparams.get("_class_path", "")).rsplit(".", 1)[-1]
        found = next((c for c in (cls, *_subclasses(cls)) if c.__name__ == recorded), None)
        if found is None:
            raise ValueError(
                f"checkpoint {checkpoint} is a {recorded or 'unknown'} model; this command needs a "
                f"{cls.__name__} checkpoint"
            )
        hparams = {k: v for k, v in hparams.items() if not k.startswith("_")}
        module = found(**{**hparams, "init_from": None, **overrides})  # the weights below are the trained ones
        try:
            module.load_state_dict(state["state_dict"])
        except RuntimeError as err:  # e.g. a checkpoint from an earlier mmhsa whose layers had other shapes
            first = str(err).split("\n\t", 2)[1] if "\n\t" in str(err) else str(err)
            raise ValueError(
                f"checkpoint {checkpoint}: its weights do not fit this version of {found.__name__} ({first}); "
                "it was probably saved by an earlier mmhsa: retrain it (make train)"
            ) from None
        return module

    def load_encoder(self, checkpoint: str) -> None:
        """Copy the encoder weights of another run's checkpoint (shapes must match)."""
        state = read_checkpoint(Path(checkpoint))["state_dict"]
        encoder = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
        if not encoder:
            raise ValueError(f"{checkpoint}: holds no encoder weights")
        try:
            self.encoder.load_state_dict(encoder)
        except RuntimeError as err:
            raise ValueError(f"{checkpoint}: its encoder does not fit this model ({err})") from None

    def encode(self, trees: Trees) -> torch.Tensor:
        """Contextual leaf features [N, dim]."""
        return self.encoder(trees.features, trees.leaf_modality, trees.hierarchy)

    def check_loss(self, loss: torch.Tensor, batch_idx: int, ids: list[str]) -> None:
        """Stop on a non-finite loss before it reaches the weights (and the checkpoints)."""
        if not torch.isfinite(loss):
            shown = ", ".join(ids[:8]) + (" ..." if len(ids) > 8 else "")
            raise FloatingPointError(
                f"non-finite loss {loss.item()} at global step {self.global_step}, epoch "
                f"{self.current_epoch}, batch {batch_idx} (samples {shown}); stopping before "
                "the update"
            )

    # ------------------------------------------------------------------ evaluation
    # A task collects its outputs batch by batch (``_collect``) and turns them into metrics over the
    # whole split at the end (``_evaluate``): retrieval ranks need every embedding at once.
    def _collect(self, batch) -> None:
        raise NotImplementedError

    def _evaluate(self, prefix: str) -> dict[str, float]:
        raise NotImplementedError

    def gathered_outputs(self) -> list:
        """This rank's collected outputs, or, under DDP, every rank's (in rank order, on this device)."""
        if world_size() == 1:
            return self._outputs
        mine = [tuple(x.cpu() if isinstance(x, torch.Tensor) else x for x in row) for row in self._outputs]
        everyone = every_rank(mine)
        return [
            tuple(x.to(self.device) if isinstance(x, torch.Tensor) else x for x in row)
            for rows in everyone
            for row in rows
        ]

    def on_validation_epoch_start(self) -> None:
        self._outputs = []

    def validation_step(self, batch, batch_idx: int) -> None:
        self._collect(batch)

    def on_validation_epoch_end(self) -> None:
        self._evaluate("val")

    def on_test_epoch_start(self) -> None:
        self._outputs = []

    def test_step(self, batch, batch_idx: int) -> None:
        self._collect(batch)

    def on_test_epoch_end(self) -> None:
        self._evaluate("test")

    # Resuming must continue the random streams (dropout) where the interrupted run was: the states are taken
    # when the checkpoint is saved (mid-epoch: right after that step), and under DDP each rank's, since each
    # draws dropout masks of its own batches' sizes and the streams part after the first step.
    # The CPU thread count is saved too: CPU kernels split their sums by it, so a run resumed with another count
    # parts from the uninterrupted one by float rounding (docs/training.md, "Checkpoints, resume").
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mmhsa_class"] = f"{type(self).__module__}.{type(self).__qualname__}"  # for inference loading
        states = rng_states()
        checkpoint["rng_states"] = states
        checkpoint["cpu_threads"] = torch.get_num_threads()
        # every rank saves a checkpoint's contents (rank 0 writes them), so all take part in the gather
        if world_size() > 1:
            checkpoint["rng_states_per_rank"] = every_rank(states)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        per_rank, trainer = checkpoint.get("rng_states_per_rank"), self._trainer
        if per_rank and trainer is not None and len(per_rank) == trainer.world_size:
            states = per_rank[trainer.global_rank]  # (another world size: rank 0's states everywhere)
        if states:
            set_rng_states(states)
        saved, now = checkpoint.get("cpu_threads"), torch.get_num_threads()
        resuming_on_cpu = (
            trainer is not None and trainer.state.fn == TrainerFn.FITTING and trainer.strategy.root_device.type == "cpu"
        )
        if resuming_on_cpu and saved is not None and saved != now:
            rank_zero_warn(
                f"resuming a checkpoint saved with {saved} CPU threads with {now}: CPU kernels split their sums by "
                "the thread count, so the weights will part from an uninterrupted run by float rounding; on the same "
                f"machine OMP_NUM_THREADS={saved} resumes exactly"
            )

    def optimizer_groups(self) -> list[dict]:
        """AdamW's parameter groups: weight decay on weight matrices (embeddings aside), none on the rest."""
        decay = [p for n, p in self.named_parameters() if p.ndim >= 2 and "embedding" not in n]
        rest = [p for n, p in self.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
        return [{"params": decay, "weight_decay": self.weight_decay}, {"params": rest, "weight_decay": 0.0}]

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.optimizer_groups(), lr=self.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(self.warmup_steps, total // 2)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def refused_global(err: Exception) -> str | None:
    """The object a ``weights_only`` load refused (e.g. ``posix.system``), from torch's message; else None."""
    found = re.search(r"GLOBAL ([\w.]+)|Unsupported global: GLOBAL ([\w.]+)", str(err))
    return (found.group(1) or found.group(2)) if found else None


def read_checkpoint(path: Path, trust: bool = False) -> dict:
    """A Lightning checkpoint's contents, loaded with ``weights_only=True`` (tensors and plain types only: a
    pickled payload in a downloaded checkpoint cannot run); ``trust=True`` (``--trust-checkpoint``) loads
    whatever the file holds, for a checkpoint of the user's own that needs it.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable mmhsa checkpoint (truncated, foreign, or holding objects whose loading
            could run code: named, with the way out).
    """
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=not trust)
        if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
            raise TypeError("no state_dict")
    except Exception as err:  # a truncated or foreign file fails in many ways inside torch.load
        refused = refused_global(err) if isinstance(err, pickle.UnpicklingError) else None
        if refused:
            raise ValueError(
                f"checkpoint {path}: holds {refused}, not only tensors and plain values; refused, "
                "as loading it could run code. Only for a checkpoint you trust: --trust-checkpoint"
            ) from None
        reason = str(err).strip().split("\n", 1)[0]
        raise ValueError(
            f"checkpoint {path}: not a readable mmhsa checkpoint ({type(err).__name__}: {reason})"
        ) from None
    return state


def _subclasses(cls: type) -> list[type]:
    return [s for c in cls.__subclasses__() for s in (c, *_subclasses(c))]


def mlp(inputs: int, hidden: int, outputs: int, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, outputs))
