"""Seed prompts, held-out test set and SFT warm-start data for the embedded tasks.

Rows are plain dicts (write them out with any JSONL writer):
  seeds / test: {"prompt", "label", "kind", "difficulty", "split"}
  sft:          {"prompt", "response", "kind", "difficulty"}
The test set is fixed by TEST_SEED; seeds and SFT data never contain a test prompt.
"""

from __future__ import annotations

import functools
import random

from openrlhf_eva.embedded.tasks import (
    HARDER_DIFFICULTIES,
    NEW_KINDS,
    SEED_DIFFICULTIES,
    SEED_KINDS,
    make_problem,
)

TEST_SEED = 20241101
SPLITS: tuple[str, ...] = ("in_dist", "harder", "new_kind", "all")

# (kinds, difficulties, rows per (kind, difficulty) cell) of each held-out split.
# in_dist: what the seeds cover; harder: the same kinds past the seed frontier (in-depth reach);
# new_kind: kinds only the evolver's in-breadth moves produce, at seed difficulties so the split
# measures breadth alone. 120 + 96 + 120 = 336 rows: cheap to evaluate on CPU.
TEST_SPLITS: dict[str, tuple[tuple[str, ...], tuple[int, ...], int]] = {
    "in_dist": (SEED_KINDS, SEED_DIFFICULTIES, 10),
    "harder": (SEED_KINDS, HARDER_DIFFICULTIES, 8),
    "new_kind": (NEW_KINDS, SEED_DIFFICULTIES, 10),
}

# Draws allowed per requested row before giving up on finding unseen prompts.
_MAX_DRAWS_PER_ROW = 200


def _row(problem, split: str) -> dict:
    return {
        "prompt": problem.prompt,
        "label": problem.answer,
        "kind": problem.kind,
        "difficulty": problem.difficulty,
        "split": split,
    }


def make_test_set(seed: int = TEST_SEED) -> list[dict]:
    """The fixed held-out set: distinct prompts tagged ``split`` in {in_dist, harder, new_kind}."""
    rng = random.Random(seed)
    rows: list[dict] = []
    seen: set[str] = set()
    for split, (kinds, difficulties, per_cell) in TEST_SPLITS.items():
        for kind in kinds:
            for difficulty in difficulties:
                taken = 0
                while taken < per_cell:
                    problem = make_problem(kind, difficulty, rng)
                    if problem.prompt not in seen:
                        seen.add(problem.prompt)
                        rows.append(_row(problem, split))
                        taken += 1
    return rows


@functools.lru_cache(maxsize=4)
def held_out_prompts(test_seed: int = TEST_SEED) -> frozenset[str]:
    """Prompts of ``make_test_set(test_seed)``, to keep training data and evolved prompts clean."""
    return frozenset(row["prompt"] for row in make_test_set(test_seed))


def select_split(rows: list[dict], split: str) -> list[dict]:
    """Rows of one test split; ``"all"`` returns every row."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}")
    return list(rows) if split == "all" else [row for row in rows if row["split"] == split]


def make_seeds(n: int = 256, seed: int = 0, test_seed: int = TEST_SEED) -> list[dict]:
    """``n`` distinct seed prompts: seed kinds at seed difficulties, uniform over (kind, difficulty).

    Small difficulties have few instances (100 at difficulty 1), so a very large ``n`` skews toward
    higher ones; if even those run out, a ValueError says so.
    """
    rng = random.Random(seed)
    excluded = held_out_prompts(test_seed)
    rows: list[dict] = []
    seen: set[str] = set()
    for _ in range(_MAX_DRAWS_PER_ROW * n):
        if len(rows) == n:
            break
        problem = make_problem(rng.choice(SEED_KINDS), rng.choice(SEED_DIFFICULTIES), rng)
        if problem.prompt in seen or problem.prompt in excluded:
            continue
        seen.add(problem.prompt)
        rows.append(_row(problem, "seed"))
    if len(rows) < n:
        raise ValueError(f"found only {len(rows)} distinct seed prompts outside the test set, asked for {n}")
    return rows


def make_sft_data(
    n: int = 4096, seed: int = 1, frontier_fraction: float = 0.1, test_seed: int = TEST_SEED
) -> list[dict]:
    """``n`` solved examples ``{"prompt", "response", ...}`` for the SFT warm start.

    Seed kinds at seed difficulties, plus ``frontier_fraction`` of them one step past the hardest
    seed difficulty, so the warm-started solver sits just below the frontier: it gets partial credit
    there, which gives eva's informativeness something to measure. Repeats are allowed (difficulty 1
    has only 100 instances per kind); test prompts are not.
    """
    rng = random.Random(seed)
    excluded = held_out_prompts(test_seed)
    frontier = max(SEED_DIFFICULTIES) + 1
    rows: list[dict] = []
    while len(rows) < n:
        difficulty = frontier if rng.random() < frontier_fraction else rng.choice(SEED_DIFFICULTIES)
        problem = make_problem(rng.choice(SEED_KINDS), difficulty, rng)
        if problem.prompt in excluded:
            continue
        rows.append(
            {
                "prompt": problem.prompt,
                "response": problem.answer,
                "kind": problem.kind,
                "difficulty": problem.difficulty,
            }
        )
    return rows
