"""The training layer: one loop for every technique (:mod:`.loop`), its checkpoints
(:mod:`.checkpoints`), DDP under torchrun (:mod:`.distributed`) and activation recomputation
(:mod:`.recompute`).  It builds on :mod:`bertkit.core` and knows no technique."""

from .loop import TrainConfig, Trainer, TrainerHook, TrainTask, build_optimizer, warmup_linear
from .recompute import RecomputeOptions

__all__ = ["TrainConfig", "Trainer", "TrainerHook", "TrainTask", "RecomputeOptions", "build_optimizer", "warmup_linear"]
