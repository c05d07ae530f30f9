"""``mmhsa predict``: the task modules' predictions on a split, written to files.

Each task's ``predict_step`` returns plain rows (QA: one per question with the scores and the chosen
candidate; retrieval: one per video and one per caption with its embedding). :class:`PredictionWriter`,
a callback in every recipe, writes them when the split is done: ``<output_dir>/predictions.jsonl``
(``predictions-rank<r>.jsonl`` per process under DDP), written atomically. Only ``predict`` triggers it.

    mmhsa predict -c configs/qa_synthetic.yaml --ckpt_path runs/.../best.ckpt [--data.predict_split val]
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lightning.pytorch.callbacks import BasePredictionWriter

from data_prep.shards import atomic_write

__all__ = ["PredictionWriter"]


class PredictionWriter(BasePredictionWriter):
    """Writes every prediction row of the split as JSON lines once the split is done.

    Args:
        output_dir: where ``predictions.jsonl`` goes (created).
    """

    def __init__(self, output_dir: str):
        super().__init__(write_interval="epoch")
        self.output_dir = Path(output_dir)

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        rows = [row for batch in predictions for row in batch]
        name = "predictions.jsonl" if trainer.world_size == 1 else f"predictions-rank{trainer.global_rank}.jsonl"
        path = self.output_dir / name
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(path, "".join(json.dumps(row) + "\n" for row in rows).encode("utf-8"))
        print(f"{len(rows)} predictions -> {os.fspath(path)}", flush=True)
