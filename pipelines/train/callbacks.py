"""The callbacks every recipe uses: the best checkpoint by the task's own metric, and prediction files.

:class:`BestCheckpoint` keeps the best model by the validation metric its task module declares
(``monitor``: ``val/t2v_R@1`` for retrieval and re-ranking, ``val/acc`` for QA), so one shared trainer
block (``pipelines/train/trainer_defaults.yaml``) serves every recipe.

``mmhsa predict``: each task's ``predict_step`` returns plain rows (QA: one per question with the scores
and the chosen candidate; retrieval: one per video and one per caption with its embedding).
:class:`PredictionWriter` writes them when the split is done: ``<output_dir>/predictions.jsonl``
(``predictions-rank<r>.jsonl`` per process under DDP), written atomically, and any file the task module
adds in the form a benchmark's own scorer reads (``prediction_files``: QA writes ``eval_mc.json`` for
NExT-QA's ``eval_mc.py``). Only ``predict`` triggers it.

    mmhsa predict -c configs/qa_synthetic.yaml --ckpt_path runs/.../best.ckpt [--data.predict_split val]
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint

from data_prep.shards import atomic_write

__all__ = ["BestCheckpoint", "PredictionWriter"]


class BestCheckpoint(ModelCheckpoint):
    """A :class:`~lightning.pytorch.callbacks.ModelCheckpoint` of the best model (``mode="max"``) whose
    ``monitor``, when not given, is the task module's ``monitor`` attribute.

    Args:
        monitor: the metric to maximise; None: the module's.
        **kwargs: as :class:`~lightning.pytorch.callbacks.ModelCheckpoint` (``filename``, ``dirpath``...).
    """

    def __init__(self, monitor: str | None = None, **kwargs):
        super().__init__(monitor=monitor, mode="max", **kwargs)

    def setup(self, trainer, pl_module, stage: str) -> None:
        # before a resumed run restores this callback's state, which is keyed on the monitor
        if self.monitor is None:
            self.monitor = getattr(pl_module, "monitor", None)
            if self.monitor is None:
                raise ValueError(
                    f"BestCheckpoint: {type(pl_module).__name__} names no monitor metric; give "
                    "BestCheckpoint(monitor=...)"
                )
        super().setup(trainer, pl_module, stage)


class PredictionWriter(BasePredictionWriter):
    """Writes every prediction row of the split as JSON lines once the split is done.

    Args:
        output_dir: where ``predictions.jsonl`` goes (created); None: ``<trainer.default_root_dir>/predictions``.
    """

    def __init__(self, output_dir: str | None = None):
        super().__init__(write_interval="epoch")
        self.output_dir = Path(output_dir) if output_dir is not None else None

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        rows = [row for batch in predictions for row in batch]
        directory = self.output_dir or Path(trainer.default_root_dir) / "predictions"
        name = "predictions.jsonl" if trainer.world_size == 1 else f"predictions-rank{trainer.global_rank}.jsonl"
        path = directory / name
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(path, "".join(json.dumps(row) + "\n" for row in rows).encode("utf-8"))
        print(f"{len(rows)} predictions -> {os.fspath(path)}", flush=True)
        for name, content in getattr(pl_module, "prediction_files", lambda rows: {})(rows).items():
            extra = directory / (name if trainer.world_size == 1 else f"rank{trainer.global_rank}-{name}")
            atomic_write(extra, json.dumps(content, indent=1).encode("utf-8"))
            print(f"  and {os.fspath(extra)}", flush=True)
