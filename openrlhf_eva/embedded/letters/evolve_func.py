"""Programmatic evolver of the `letters` family, for ``--eva.evolver task --eva.evolver_path``.

``evolve(prompt, label, rng)``: deepen, shift_kind, resample, then one more by a uniformly chosen
method (see the family's docstring); children never repeat the parent, a sibling or a held-out prompt.
"""

from __future__ import annotations

import random

from openrlhf_eva.embedded.letters import KINDS, MAX_DIFFICULTY, held_out_prompts, make_problem, parse_prompt

METHODS = ("deepen", "shift_kind", "resample")
NUM_CHILDREN = 4
DEEPEN_JUMP_PROB = 0.25
_MAX_DRAWS = 50


def _target(method: str, kind: str, difficulty: int, rng: random.Random) -> tuple[str, str, int]:
    if method == "deepen" and difficulty < MAX_DIFFICULTY:
        step = 2 if rng.random() < DEEPEN_JUMP_PROB else 1
        return "deepen", kind, min(difficulty + step, MAX_DIFFICULTY)
    if method == "shift_kind":
        return "shift_kind", rng.choice([k for k in KINDS if k != kind]), difficulty
    return "resample", kind, difficulty


def evolve(prompt: str, label: str | None = None, rng: random.Random | None = None) -> list[dict]:
    rng = rng if rng is not None else random.Random()
    try:
        parent = parse_prompt(prompt)
    except ValueError:
        return []
    excluded, taken, children = held_out_prompts(), {parent.prompt}, []
    methods = [*METHODS, *(rng.choice(METHODS) for _ in range(NUM_CHILDREN - len(METHODS)))]
    for method in methods:
        applied, kind, difficulty = _target(method, parent.kind, parent.difficulty, rng)
        for _ in range(_MAX_DRAWS):
            child = make_problem(kind, difficulty, rng)
            if child.prompt not in taken and child.prompt not in excluded:
                taken.add(child.prompt)
                children.append({"prompt": child.prompt, "label": child.answer, "method": applied,
                                 "metadata": {"kind": child.kind, "difficulty": child.difficulty}})
                break
    return children
