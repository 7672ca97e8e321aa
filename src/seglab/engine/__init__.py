"""Training and evaluation, task-agnostic: they call a :class:`seglab.tasks.Task` for everything
that depends on what the model predicts."""

from seglab.engine.evaluate import evaluate_model
from seglab.engine.trainer import Trainer, TrainingDiverged, TrainResult, train

__all__ = ["train", "Trainer", "TrainResult", "TrainingDiverged", "evaluate_model"]
