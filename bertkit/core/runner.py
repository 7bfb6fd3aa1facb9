"""The runner contract: the one shape every technique's inference object has.

A runner wraps a model and its tokenizer for use (classify, embed, correct, ...):

- ``Runner(model, tokenizer, **options)`` builds it from objects in memory, so a model still in
  training can be evaluated without a trip through the disk (the training task's ``evaluate``
  does exactly that);
- ``Runner.load(path, **options)`` builds it from a model directory (``None``: the technique's
  shipped default), after :func:`bertkit.core.modelio.resolve_model` has checked the directory;
- ``runner.evaluate(data, **options)`` returns the metrics dict that ``bertkit eval`` (or the
  ``bertkit eval``) prints as one JSON line;
- the technique's own verbs (``predict_proba``, ``embed``, ``correct``) stream results in input
  order.

The command line only parses options, calls ``load`` and a verb or ``evaluate``, and prints.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class Runner(ABC):
    model: Any
    tokenizer: Any

    @classmethod
    @abstractmethod
    def load(cls, path: str | None = None, **options) -> "Runner":
        """The runner of the model directory ``path`` (None: the shipped default)."""

    @abstractmethod
    def evaluate(self, data, **options) -> dict[str, Any]:
        """Scores on labelled ``data``: the dict the CLI prints as one JSON line."""
