"""Evolver for the `lists` task: pass this file's path as ``--eva.evolver_path`` (the bench does).

``evolve(prompt, label, rng)`` returns up to NUM_CHILDREN children, methods in a fixed order:
  deepen      in-depth: same kind, difficulty +1 (+2 with probability DEEPEN_JUMP_PROB), capped at
              MAX_DIFFICULTY; a parent already at the cap gets a ``resample`` instead
  shift_kind  in-breadth: another of the six kinds (new kinds included), same difficulty
  resample    in-breadth: a new instance of the same kind and difficulty
  + one more child by a uniformly chosen method
Labels are recomputed by solving the child. Children never equal the parent, each other, or a prompt
of test.jsonl / dev.jsonl lying next to this file. An unparseable parent yields no children.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# tasks.py is loaded by path under a name unique to this folder: a plain ``import tasks`` could pick
# up another task folder's tasks.py already imported in the same process. Registering the module
# before running it lets its dataclass resolve its own module.
_name = "lists_tasks_" + hashlib.sha1(str(HERE).encode()).hexdigest()[:12]
_spec = importlib.util.spec_from_file_location(_name, HERE / "tasks.py")
tasks = importlib.util.module_from_spec(_spec)
sys.modules[_name] = tasks
_spec.loader.exec_module(tasks)

METHODS: tuple[str, ...] = ("deepen", "shift_kind", "resample")
NUM_CHILDREN = 4
DEEPEN_JUMP_PROB = 0.25

# Fresh draws per child before skipping it; difficulty 1 has only 100 instances per kind.
_MAX_DRAWS = 50


@functools.lru_cache(maxsize=1)
def held_out_prompts() -> frozenset[str]:
    """Prompts of test.jsonl and dev.jsonl next to this file (read once; missing files are skipped)."""
    prompts = set()
    for name in ("test.jsonl", "dev.jsonl"):
        path = HERE / name
        if path.exists():
            with open(path) as file:
                prompts.update(json.loads(line)["prompt"] for line in file if line.strip())
    return frozenset(prompts)


def _target(method: str, parent, rng: random.Random) -> tuple[str, str, int]:
    """(method actually applied, kind, difficulty) of one child."""
    # A hand-written parent may be longer than any generated list: its children stay at the cap.
    difficulty = min(parent.difficulty, tasks.MAX_DIFFICULTY)
    if method == "deepen" and difficulty < tasks.MAX_DIFFICULTY:
        step = 2 if rng.random() < DEEPEN_JUMP_PROB else 1
        return "deepen", parent.kind, min(difficulty + step, tasks.MAX_DIFFICULTY)
    if method == "shift_kind":
        return "shift_kind", rng.choice([kind for kind in tasks.KINDS if kind != parent.kind]), difficulty
    return "resample", parent.kind, difficulty


def evolve(prompt: str, label: str | None = None, rng: random.Random | None = None) -> list[dict]:
    """Children ``{"prompt", "label", "method", "metadata": {"kind", "difficulty"}}`` of a task prompt.

    ``label`` is ignored (children are re-solved); a seeded ``rng`` makes the result deterministic.
    """
    rng = rng if rng is not None else random.Random()
    try:
        parent = tasks.parse_prompt(prompt)
    except ValueError:
        return []

    excluded = held_out_prompts()
    taken = {parent.prompt}
    children: list[dict] = []
    for method in (*METHODS, rng.choice(METHODS)):
        applied, kind, difficulty = _target(method, parent, rng)
        for _ in range(_MAX_DRAWS):
            child = tasks.make_problem(kind, difficulty, rng)
            if child.prompt not in taken and child.prompt not in excluded:
                taken.add(child.prompt)
                children.append(
                    {
                        "prompt": child.prompt,
                        "label": child.answer,
                        "method": applied,
                        "metadata": {"kind": child.kind, "difficulty": child.difficulty},
                    }
                )
                break
    return children
