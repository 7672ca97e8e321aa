"""Training, evaluation and checkpoint machinery."""

from seglab.tasks.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from seglab.engine.evaluate import evaluate_model
from seglab.engine.trainer import Trainer, TrainResult, TrainingDiverged, train

__all__ = ["train", "Trainer", "TrainResult", "TrainingDiverged", "evaluate_model", "save_checkpoint",
           "load_checkpoint", "model_from_checkpoint"]
