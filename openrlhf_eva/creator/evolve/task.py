"""The ``task`` evolver: a user's programmatic mutation, for domains whose labels can be recomputed.

The user's Python file defines ``evolve(prompt: str, label, rng: random.Random) -> list[dict]``;
each dict is ``{"prompt": str, "label": ..., "method": str (optional), "metadata": dict
(optional)}``. Because the function computes the child's label itself (e.g. a harder arithmetic
problem and its answer), evolved prompts stay verifiable.

For each parent the function is called until ``n`` distinct children that differ from the parent
(after ``normalize_text``) are gathered, or ``max_calls_per_child * n`` calls are spent.

Failure policy: a call that raises or returns something malformed is counted in
``stats["errors"]`` (``last_error`` keeps its message) and the loop goes on, so a mutation that
fails now and then on odd inputs does not stop training. If every call of one ``evolve`` invocation
fails, the function is broken rather than unlucky, and ``TaskEvolveError`` is raised naming the
file and the first error.
"""

from __future__ import annotations

import os
import random
from typing import Any

from ..filters import normalize_text
from ..registry import load_plugin, register_evolver
from . import Child, Evolver, Parent


class TaskEvolveError(RuntimeError):
    """The user's task evolve function is missing or fails on every call."""


@register_evolver("task")
class TaskEvolver(Evolver):
    """Wraps ``evolve(prompt, label, rng) -> list[dict]`` from the Python file at ``path``."""

    def __init__(self, path: str | os.PathLike, max_calls_per_child: int = 4) -> None:
        super().__init__()
        self.path = os.path.abspath(os.fspath(path))
        self.max_calls_per_child = max_calls_per_child
        self.last_error: str | None = None
        module = load_plugin(self.path)
        self.fn = getattr(module, "evolve", None)
        if not callable(self.fn):
            raise TaskEvolveError(f"task evolver file {self.path} defines no function evolve(prompt, label, rng)")

    def evolve(self, parents: list[Parent], n: int, rng: random.Random) -> list[Child]:
        """Up to ``n`` distinct children per parent, new label included."""
        children: list[Child] = []
        num_calls = num_failed = 0
        first_error = None
        for index, parent in enumerate(parents):
            seen = {normalize_text(parent.prompt)}
            gathered = 0
            for _ in range(self.max_calls_per_child * n):
                if gathered == n:
                    break
                num_calls += 1
                try:
                    outputs = self.fn(parent.prompt, parent.label, rng)
                    outputs = [] if outputs is None else outputs
                    if not isinstance(outputs, list) or not all(
                        isinstance(out, dict) and isinstance(out.get("prompt"), str) for out in outputs
                    ):
                        raise TypeError(
                            f"evolve must return a list of dicts with a str 'prompt', got {outputs!r:.200}"
                        )
                except Exception as error:
                    self.stats["errors"] += 1
                    self.last_error = (
                        f"{self.path}: evolve({parent.prompt!r:.80}) failed: {type(error).__name__}: {error}"
                    )
                    first_error = first_error or self.last_error
                    num_failed += 1
                    continue
                for out in outputs:
                    key = normalize_text(out["prompt"])
                    if gathered == n:
                        break
                    if not key or key in seen:
                        self.stats["repeats"] += 1
                        continue
                    seen.add(key)
                    children.append(Child(
                        prompt=out["prompt"].strip(), parent_index=index, parent_id=parent.id,
                        depth=parent.depth + 1, method=out.get("method", "task"),
                        label=out.get("label"), metadata=dict(out.get("metadata") or {}),
                    ))
                    gathered += 1
            self.stats["children"] += gathered
        self.stats["calls"] += num_calls
        if num_calls > 0 and num_failed == num_calls:
            raise TaskEvolveError(f"every call of the task evolve function failed; first: {first_error}")
        return children
