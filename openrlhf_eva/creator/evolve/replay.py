"""The ``replay`` evolver: eva's no-evolve ablation (EVA.md: "evolve vs no-evolve").

Each parent comes back ``n`` times, unchanged, with its label and metadata. The creator's
estimate and sample steps still run, so training concentrates on the informative subset, but no
new prompt is ever written. Use it with ``--eva.filters empty``: the ``unchanged`` and
``duplicate`` filters exist to reject exactly what this evolver returns.
"""

from __future__ import annotations

import random

from ..registry import register_evolver
from . import Child, Evolver, Parent


@register_evolver("replay")
class ReplayEvolver(Evolver):
    """n unchanged copies of every parent; ``method`` is "replay" and ``depth`` stays the parent's."""

    def evolve(self, parents: list[Parent], n: int, rng: random.Random) -> list[Child]:
        self.stats["copies"] += n * len(parents)
        return [Child(prompt=p.prompt, parent_index=i, parent_id=p.id, depth=p.depth, method="replay",
                      label=p.label, metadata=dict(p.metadata)) for i, p in enumerate(parents) for _ in range(n)]
