"""The NER window model: data, model (its one description), training, evaluation,
and :class:`WindowTrainer`, the lecture's window model as one compiled step."""

from cygrad.ner.window_trainer import WindowTrainer

__all__ = ["WindowTrainer"]
