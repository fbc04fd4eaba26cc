"""Programmatic evolver for the embedded tasks, loaded by path by the generic ``task`` evolver.

``evolve(prompt, label, rng)`` returns up to NUM_CHILDREN children in a fixed method order:
  deepen      in-depth: same kind, difficulty +1 (+2 with probability DEEPEN_JUMP_PROB), capped
              at MAX_DIFFICULTY (at the cap it degrades to ``resample``)
  shift_kind  in-breadth: another kind from the WHOLE family (new kinds included), same difficulty
  resample    in-breadth "shift-in": a different instance of the same kind and difficulty
  + one more child by a uniformly chosen method
so a caller keeping only the first two still gets one harder and one different prompt.
Labels are recomputed with ``solve``; children never repeat the parent, each other or a held-out
test prompt. An unparseable parent yields no children.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

try:
    from openrlhf_eva.embedded.data import held_out_prompts
    from openrlhf_eva.embedded.tasks import KINDS, MAX_DIFFICULTY, Problem, make_problem, parse_prompt, solve
except ImportError:
    # Loaded by path in a process where the package is not installed: use the checkout it lives in.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from openrlhf_eva.embedded.data import held_out_prompts
    from openrlhf_eva.embedded.tasks import KINDS, MAX_DIFFICULTY, Problem, make_problem, parse_prompt, solve

METHODS: tuple[str, ...] = ("deepen", "shift_kind", "resample")
IN_DEPTH_METHODS: tuple[str, ...] = ("deepen",)
IN_BREADTH_METHODS: tuple[str, ...] = ("shift_kind", "resample")
NUM_CHILDREN = 4
DEEPEN_JUMP_PROB = 0.25

# Fresh draws tried per child before skipping it; difficulty 1 has only 100 instances per kind.
_MAX_DRAWS = 50


def _target(method: str, parent: Problem, rng: random.Random) -> tuple[str, str, int]:
    """(method actually applied, kind, difficulty) of the child."""
    if method == "deepen":
        if parent.difficulty >= MAX_DIFFICULTY:
            return "resample", parent.kind, parent.difficulty
        step = 2 if rng.random() < DEEPEN_JUMP_PROB else 1
        return "deepen", parent.kind, min(parent.difficulty + step, MAX_DIFFICULTY)
    if method == "shift_kind":
        return "shift_kind", rng.choice([kind for kind in KINDS if kind != parent.kind]), parent.difficulty
    if method == "resample":
        return "resample", parent.kind, parent.difficulty
    raise ValueError(f"unknown evolve method {method!r}; known: {', '.join(METHODS)}")


def evolve(prompt: str, label: str | None = None, rng: random.Random | None = None) -> list[dict]:
    """Children ``{"prompt", "label", "method", "metadata": {"kind", "difficulty"}}`` of a task prompt.

    ``label`` is ignored (children are re-solved); ``rng`` makes the result deterministic.
    """
    rng = rng if rng is not None else random.Random()
    try:
        parent = parse_prompt(prompt)
    except ValueError:
        return []

    excluded = held_out_prompts()
    taken = {parent.prompt}
    children: list[dict] = []
    extra_methods = [rng.choice(METHODS) for _ in range(NUM_CHILDREN - len(METHODS))]
    for method in (*METHODS, *extra_methods):
        applied, kind, difficulty = _target(method, parent, rng)
        for _ in range(_MAX_DRAWS):
            child = make_problem(kind, difficulty, rng)
            if child.prompt not in taken and child.prompt not in excluded:
                taken.add(child.prompt)
                children.append(
                    {
                        "prompt": child.prompt,
                        "label": solve(child.prompt),
                        "method": applied,
                        "metadata": {"kind": child.kind, "difficulty": child.difficulty},
                    }
                )
                break
    return children
