"""Training: the Lightning modules, the data module over prepared shards, metrics, callbacks, the recipes' CLI.

The task modules (one per task) all derive from :class:`~pipelines.train.fusion.FusionModule`; :data:`TASKS`
names them for the commands that load a task's checkpoint. Nothing here imports :mod:`pipelines.infer`.
"""

from .fusion import FusionModule
from .qa import QAModule
from .rerank import RerankModule
from .retrieval import RetrievalModule

__all__ = ["TASKS", "FusionModule", "QAModule", "RerankModule", "RetrievalModule"]

TASKS: dict[str, type[FusionModule]] = {"retrieval": RetrievalModule, "qa": QAModule, "rerank": RerankModule}
