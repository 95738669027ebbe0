"""The NER window model: data, model, training, evaluation, and the fused
training step of the lecture's window model (:class:`WindowTrainer`)."""

from cygrad._window import WindowTrainer

__all__ = ["WindowTrainer"]
