"""The evolver interface: turn selected parent prompts into new child prompts.

An evolver is a class registered in ``EVOLVERS`` (``@register_evolver("name")``) whose ``evolve``
takes a list of ``Parent`` and returns ``Child`` objects, up to ``n`` per parent. Built-ins:
``task`` (a user's programmatic mutation function, for verifiable domains) and the LLM evolvers,
built with ``generate=`` (a batched ``list[str] -> list[str]`` callable, see
``openrlhf_eva.generation``): ``evol_instruct``, ``evol_complexity``, ``evol_quality``,
``self_instruct``, ``tree_bon`` and ``distilabel``. Evolvers keep counters in ``self.stats``
(e.g. unparsable outputs, failed calls) for logging, and the outputs of their last ``evolve`` call
that gave no child in ``self.dropped`` (with the reason), so a run can write them to its rejects.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..registry import EVOLVERS


@dataclass
class Parent:
    """A prompt selected for evolving. ``id`` is its buffer id (None for a seed prompt); ``responses``
    and ``rewards`` are the solver's rollouts, for evolvers that use the environment's feedback."""

    id: int | None
    prompt: str
    label: Any = None
    metadata: dict = field(default_factory=dict)
    info: float = 0.0
    depth: int = 0
    responses: list[str] | None = None
    rewards: list[float] | None = None


@dataclass
class Child:
    """A new prompt. ``parent_index`` is the position of its parent in the list given to ``evolve``
    (seed parents may all have ``id=None``, so the id alone cannot find the parent); ``depth`` is
    the parent's depth + 1; ``method`` names the mutation that produced it."""

    prompt: str
    parent_index: int
    parent_id: int | None
    depth: int
    method: str | None
    label: Any = None
    metadata: dict = field(default_factory=dict)


class Evolver(ABC):
    """Base class of evolvers. Subclasses call ``super().__init__()`` to get ``stats`` and ``dropped``.

    ``uses_llm`` tells the entry points to build the evolver with ``generate=`` (the creator LLM).
    """

    uses_llm = False

    def __init__(self) -> None:
        self.stats: Counter[str] = Counter()
        # {"parent_index", "method", "output", "reason"} per output of the last call that gave no child
        self.dropped: list[dict] = []

    @abstractmethod
    def evolve(self, parents: list[Parent], n: int, rng: random.Random) -> list[Child]:
        """Return up to ``n`` children per parent (fewer when outputs are unusable)."""


def build_evolver(name: str, **kwargs: Any) -> Evolver:
    """Instantiate the evolver registered as ``name`` with ``kwargs``; unknown names list the known ones."""
    return EVOLVERS.get(name)(**kwargs)


# Imported last: the built-ins subclass Evolver and register themselves in EVOLVERS.
from .evol_instruct import EvolInstructEvolver  # noqa: E402
from .evol_complexity import EvolComplexityEvolver  # noqa: E402
from .evol_quality import EvolQualityEvolver  # noqa: E402
from .self_instruct import SelfInstructEvolver  # noqa: E402
from .tree_bon import TreeBestOfNEvolver  # noqa: E402
from .distilabel_adapter import DistilabelEvolver  # noqa: E402
from .task import TaskEvolver  # noqa: E402
from .replay import ReplayEvolver  # noqa: E402

__all__ = ["Child", "DistilabelEvolver", "EvolComplexityEvolver", "EvolInstructEvolver", "EvolQualityEvolver",
           "Evolver", "Parent", "ReplayEvolver", "SelfInstructEvolver", "TaskEvolver", "TreeBestOfNEvolver", "build_evolver"]
