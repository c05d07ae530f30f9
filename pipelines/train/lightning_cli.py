"""The Lightning CLI over the task modules and the prepared shards (``mmhsa fit|validate|test|predict``).

Recipes (``configs/*.yaml``) hold only what differs between runs: the model, the data and a few trainer
keys, with the run directory named once (``trainer.default_root_dir``). What every run shares (devices,
the checkpoint callbacks, the learning-rate monitor, the prediction writer) is the trainer block in
``trainer_defaults.yaml`` beside this file, set as the parser's defaults; the logs (CSV and TensorBoard)
go under the run directory unless the recipe names loggers. The model's input widths are linked from
the data module (the prepared manifest's ``feature_dims``).
"""

from __future__ import annotations

import sys
from functools import cache
from importlib import resources
from pathlib import Path

import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from .data import ShardDataModule
from .fusion import FusionModule

__all__ = ["RecipeCLI", "lightning_cli", "run_loggers", "trainer_defaults"]


@cache
def trainer_defaults() -> dict:
    """The shared trainer block (``trainer_defaults.yaml``)."""
    return yaml.safe_load(resources.files(__package__).joinpath("trainer_defaults.yaml").read_text(encoding="utf-8"))


def run_loggers(run_dir: str | Path) -> list:
    """A run's loggers: metrics.csv under ``<run>/csv/version_N`` (where the checkpoints go too) and
    TensorBoard events under ``<run>/tensorboard``."""
    return [CSVLogger(save_dir=str(run_dir), name="csv"), TensorBoardLogger(save_dir=str(run_dir), name="tensorboard")]


class RecipeCLI(LightningCLI):
    """:class:`~lightning.pytorch.cli.LightningCLI` with the shared trainer defaults, the run directory's
    loggers and the model's input widths linked from the data."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({f"trainer.{key}": value for key, value in trainer_defaults().items()})
        parser.link_arguments(
            "data", "model.init_args.feature_dims", compute_fn=lambda data: data.feature_dims, apply_on="instantiate"
        )

    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        # --ckpt_path never runs code from the file, whatever torch's default (LightningCLI reads its
        # hyper-parameters weights-only too)
        parser.set_defaults(weights_only=True)
        return parser

    def instantiate_trainer(self, **kwargs):
        config = self._get(self.config_init, "trainer", default={})
        if config.get("logger") in (None, True):  # not named by the recipe: the run directory's loggers
            kwargs.setdefault("logger", run_loggers(config.get("default_root_dir") or "."))
        # The shared callbacks follow the flags a user passes: no learning-rate monitor without a logger, no
        # checkpoint callbacks with --trainer.enable_checkpointing false (Lightning refuses both otherwise).
        unwanted = (LearningRateMonitor,) * (config.get("logger") is False)
        unwanted += (ModelCheckpoint,) * (config.get("enable_checkpointing") is False)
        if unwanted and isinstance(config.get("callbacks"), list):
            kwargs["callbacks"] = [c for c in config["callbacks"] if not isinstance(c, unwanted)]
        return super().instantiate_trainer(**kwargs)


def lightning_cli(argv: list[str], run: bool = True) -> RecipeCLI:
    """The CLI on ``argv`` (e.g. ``["fit", "-c", "configs/qa_synthetic.yaml"]``): any
    :class:`~pipelines.train.fusion.FusionModule` (``model.class_path``) on :class:`ShardDataModule`.
    ``run=False``: parse and instantiate only (no subcommand; the caller runs fit/test)."""
    return RecipeCLI(
        FusionModule,
        ShardDataModule,
        subclass_mode_model=True,
        args=None if list(argv) == sys.argv[1:] else argv,  # from the shell: Lightning reads sys.argv itself
        run=run,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "mmhsa"},
    )
