"""The training engine: DeepSpeed (ZeRO 0-3) around any `Task`; see docs/training.md."""

from cinemamba.train.config import OptimizerConfig, TrainConfig, load_experiment
from cinemamba.train.export import export_weights
from cinemamba.train.task import DataSpec, LossOutput, Task
from cinemamba.train.trainer import NonFiniteError, Trainer, TrainResult, train

__all__ = [
    "DataSpec",
    "LossOutput",
    "NonFiniteError",
    "OptimizerConfig",
    "Task",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "export_weights",
    "load_experiment",
    "train",
]
