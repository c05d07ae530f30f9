"""Per-rank state under torch.distributed: world size, gathering from every rank, random streams.

Evaluation gathers every rank's outputs before computing metrics over the whole split; resuming from
a checkpoint restores each rank's own random streams (dropout), saved as plain types and tensors so
checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["every_rank", "rng_states", "set_rng_states", "world_size"]


def world_size() -> int:
    """Processes of the running torch.distributed group (1 without one)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def every_rank(value) -> list:
    """Every rank's ``value``, in rank order (a collective: every rank must call it)."""
    import torch.distributed as dist

    everyone: list = [None] * world_size()
    dist.all_gather_object(everyone, value)
    return everyone


def rng_states() -> dict:
    """This process's random states, as plain types and tensors (checkpoints load with weights_only=True)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(states["python"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
