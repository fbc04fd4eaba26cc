"""The ``tree_bon`` evolver: tree best-of-N, keeping the best child of each level and growing from it.

From each parent, the ``base`` evolver (``evol_instruct`` by default, any LLM evolver) writes
``width`` candidates with uniformly drawn methods; a scorer rates them; the best one becomes a child
and the next level grows from it. ``evolve(parents, n)`` runs ``n`` levels, so each parent gets up
to ``n`` children of increasing depth (``metadata["tree_level"]``). The losing candidates go to
``dropped`` with their score, so the search is auditable.

Scorers (``scorer=``):
- ``"judge"`` (default): complexity + quality from the LLM judge (``creator/judge.py``), with
  ``judge_generate`` or the evolver's own ``generate``;
- ``"length"``: the candidate's word count, a cheap proxy for added requirements;
- a callable ``fn(prompts: list[str], parents: list[Parent]) -> list[float]``, e.g. the
  informativeness of the solver's samples (``openrlhf_eva.evolve`` builds one for ``"info"``);
- ``"path/to/file.py:function"``: such a callable from a user's file.
A candidate equal to its node, or scored None/NaN, ranks last; a level where no candidate could be
scored still keeps its first candidate and counts ``stats["unscored"]``.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Sequence

from ..filters import normalize_text
from ..judge import judge_prompts
from ..registry import EVOLVERS, load_plugin, register_evolver
from . import Child, Evolver, Parent
from .llm import Generate

Scorer = Callable[[list[str], list[Parent]], Sequence[float | None]]


def _load_scorer(spec: str) -> Scorer:
    path, _, name = spec.rpartition(":")
    if not path or not name:
        raise ValueError(f"scorer {spec!r}: use judge, length, or path/to/file.py:function")
    function = getattr(load_plugin(path), name, None)
    if not callable(function):
        raise ValueError(f"scorer {spec!r}: {path} defines no function {name}")
    return function


@register_evolver("tree_bon")
class TreeBestOfNEvolver(Evolver):
    uses_llm = True

    def __init__(self, generate: Generate, base: str = "evol_instruct", width: int = 3,
                 scorer: str | Scorer = "judge", judge_generate: Generate | None = None,
                 **base_options: Any) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        base_class = EVOLVERS.get(base)
        if not getattr(base_class, "uses_llm", False) or base == "tree_bon":
            raise ValueError(f"tree_bon's base must be an LLM evolver other than tree_bon, got {base!r}")
        self.base = base_class(generate=generate, **base_options)
        self.width = width
        judge = judge_generate or generate
        if scorer == "judge":
            def score(prompts, nodes):
                return [None if j.complexity is None or j.quality is None else j.complexity + j.quality
                        for j in judge_prompts(judge, prompts)]
            self.score = score
        elif scorer == "length":
            self.score = lambda prompts, nodes: [float(len(p.split())) for p in prompts]
        elif callable(scorer):
            self.score = scorer
        elif isinstance(scorer, str):
            self.score = _load_scorer(scorer)
        else:
            raise ValueError(f"scorer must be judge, length, a callable or file.py:function, got {scorer!r}")

    def evolve(self, parents: list[Parent], n: int, rng: random.Random) -> list[Child]:
        self.dropped = []
        children: list[Child] = []
        nodes = {index: parent for index, parent in enumerate(parents)}  # parent index -> node to grow
        for level in range(1, n + 1):
            alive = sorted(nodes)
            if not alive:
                break
            current = [nodes[index] for index in alive]
            candidates = self.base.evolve(current, self.width, rng)
            for record in self.base.dropped:
                self.dropped.append({**record, "parent_index": alive[record["parent_index"]]})
            scores = list(self.score([c.prompt for c in candidates], [current[c.parent_index] for c in candidates]))
            if len(scores) != len(candidates):
                raise ValueError(f"tree_bon scorer returned {len(scores)} scores for {len(candidates)} candidates")
            by_node: dict[int, list[tuple[float, int]]] = {}
            for k, (candidate, value) in enumerate(zip(candidates, scores)):
                node = current[candidate.parent_index]
                usable = value is not None and math.isfinite(float(value))
                same = normalize_text(candidate.prompt) == normalize_text(node.prompt)
                rank = float(value) if usable and not same else -math.inf
                by_node.setdefault(candidate.parent_index, []).append((rank, k))
            next_nodes = {}
            for position, ranked in by_node.items():
                # max keeps the first of equal scores, so ties resolve in generation order
                best_rank, best = max(ranked, key=lambda pair: (pair[0], -pair[1]))
                if best_rank == -math.inf:
                    self.stats["unscored"] += 1
                index, winner = alive[position], candidates[best]
                origin = parents[index]
                for rank, k in ranked:
                    if k != best:
                        reason = f"tree_bon: score {rank:g} lost to {best_rank:g} at level {level}"
                        self.dropped.append({"parent_index": index, "method": candidates[k].method,
                                             "output": candidates[k].prompt, "reason": reason})
                depth = origin.depth + level
                children.append(Child(prompt=winner.prompt, parent_index=index, parent_id=origin.id, depth=depth,
                                      method=winner.method, label=winner.label,
                                      metadata={**winner.metadata, "tree_level": level,
                                                "tree_score": None if best_rank == -math.inf else best_rank}))
                next_nodes[index] = Parent(id=origin.id, prompt=winner.prompt, label=winner.label,
                                           metadata=origin.metadata, info=origin.info, depth=depth)
            nodes = next_nodes
        self.stats.update({f"base_{key}": value for key, value in self.base.stats.items()})
        self.base.stats.clear()
        self.stats["children"] += len(children)
        return children
