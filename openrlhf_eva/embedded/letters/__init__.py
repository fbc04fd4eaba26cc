"""`letters`, the second embedded task family: letter-string edits, designed and frozen before any tuning.

Why a second family. The bench's settings were first tuned on the digit family (openrlhf_eva.embedded),
so a result on that family alone could be an artefact of tuning. This family was written, committed and
frozen before any setting was tuned; tuning only ever reads the digit family's dev set. It has the
shape a user's verifiable task has (and the maintainers' held-back family has): ``"<kind> <payload>"``
prompts with one label, a graded reward in [0, 1], and an evolver that deepens, shifts kind and
resamples. It shares no kind with the digit family and its payloads are letters, not digits.

Design (frozen):
- Prompts ``"<kind> <letters>"``, letters drawn uniformly from a-z. Difficulty d in 1..MAX_DIFFICULTY
  (7) means a payload of d + 1 letters.
- Kinds in related pairs, seed kind | kind reachable only by evolving (in-breadth moves):
      dbl  "dbl cat"  -> "ccaatt"  (each letter twice)  |  tri   "tri cat"  -> "cccaaattt" (three times)
      nxt  "nxt cat"  -> "dbu"     (each letter +1, z->a) |  prv   "prv cat"  -> "bzs"     (each letter -1, a->z)
      odd  "odd abcde"-> "ace"     (1st, 3rd, 5th, ...)  |  evn   "evn abcde"-> "bd"      (2nd, 4th, ...)
  Three seed kinds, three new kinds (the held-back family's split too).
- Splits of the held-out test set (fixed by TEST_SEED, 252 rows, every row tagged split/kind/difficulty):
      in_dist   seed kinds, d 1-3, unseen instances   (3 kinds x 3 x 10 = 90)
      harder    seed kinds, d 4-6                     (3 kinds x 3 x 8  = 72)
      new_kind  tri/prv/evn at d 1-3                  (3 kinds x 3 x 10 = 90)
  A dev set of the same shape comes from DEV_SEED (disjoint from test); tuning may read only it.
- Seeds: seed kinds at d 1-3, never a test or dev prompt. SFT data: the same distribution plus 10% at
  d 4, so the warm-started solver sits just below the frontier.
- Reward: 1.0 for the exact answer, else 0.8 * (1 - levenshtein / max(len(pred), len(gold))), the digit
  family's formula (openrlhf_eva.embedded.reward.score), through its response extraction.
- Evolver (evolve_func.py): deepen (d + 1, + 2 with probability 0.25, capped at 7; at the cap a resample),
  shift_kind (any other kind of this family, same d), resample (new instance, same kind and d), plus one
  more by a uniformly chosen method: 4 children, labels recomputed, never the parent, a sibling or a
  test or dev prompt.

``write_task_dir(path)`` writes the family in the format of ``python -m openrlhf_eva.bench --task-dir``:
reward_func.py, evolve_func.py, seeds.jsonl, test.jsonl, dev.jsonl, sft.jsonl.
"""

from __future__ import annotations

import functools
import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

LETTERS = "abcdefghijklmnopqrstuvwxyz"
KINDS: tuple[str, ...] = ("dbl", "nxt", "odd", "tri", "prv", "evn")
SEED_KINDS: tuple[str, ...] = ("dbl", "nxt", "odd")
NEW_KINDS: tuple[str, ...] = ("tri", "prv", "evn")
MIN_DIFFICULTY, MAX_DIFFICULTY = 1, 7
SEED_DIFFICULTIES: tuple[int, ...] = (1, 2, 3)
HARDER_DIFFICULTIES: tuple[int, ...] = (4, 5, 6)
TEST_SEED = 20261202
DEV_SEED = 7
TEST_SPLITS: dict[str, tuple[tuple[str, ...], tuple[int, ...], int]] = {
    "in_dist": (SEED_KINDS, SEED_DIFFICULTIES, 10),
    "harder": (SEED_KINDS, HARDER_DIFFICULTIES, 8),
    "new_kind": (NEW_KINDS, SEED_DIFFICULTIES, 10),
}
MAX_PAYLOAD = 16  # parse_prompt's limit for hand-written prompts
_PATTERN = re.compile(r"^([a-z]+) ([a-z]+)$")
_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Problem:
    kind: str
    difficulty: int
    payload: str
    prompt: str
    answer: str


def _shift(letter: str, by: int) -> str:
    return LETTERS[(LETTERS.index(letter) + by) % len(LETTERS)]


def answer(kind: str, payload: str) -> str:
    if kind == "dbl":
        return "".join(c * 2 for c in payload)
    if kind == "tri":
        return "".join(c * 3 for c in payload)
    if kind == "nxt":
        return "".join(_shift(c, 1) for c in payload)
    if kind == "prv":
        return "".join(_shift(c, -1) for c in payload)
    if kind == "odd":
        return payload[0::2]
    if kind == "evn":
        return payload[1::2]
    raise ValueError(f"unknown letters kind {kind!r}; known kinds: {', '.join(KINDS)}")


def make_problem(kind: str, difficulty: int, rng: random.Random) -> Problem:
    if kind not in KINDS:
        raise ValueError(f"unknown letters kind {kind!r}; known kinds: {', '.join(KINDS)}")
    if not MIN_DIFFICULTY <= difficulty <= MAX_DIFFICULTY:
        raise ValueError(f"difficulty must be in {MIN_DIFFICULTY}..{MAX_DIFFICULTY}, got {difficulty}")
    payload = "".join(rng.choice(LETTERS) for _ in range(difficulty + 1))
    return Problem(kind, difficulty, payload, f"{kind} {payload}", answer(kind, payload))


def parse_prompt(prompt: str) -> Problem:
    """``"nxt cat"`` -> Problem; ValueError for anything that is not a prompt of this family."""
    match = _PATTERN.match(prompt.strip()) if isinstance(prompt, str) else None
    if match is None or match.group(1) not in KINDS:
        raise ValueError(f"not a letters prompt: {prompt!r} (expected '<kind> <letters>', kinds {', '.join(KINDS)})")
    kind, payload = match.groups()
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload longer than {MAX_PAYLOAD} letters in {prompt!r}")
    return Problem(kind, max(MIN_DIFFICULTY, len(payload) - 1), payload, f"{kind} {payload}", answer(kind, payload))


def _row(problem: Problem, split: str) -> dict:
    return {"prompt": problem.prompt, "label": problem.answer, "kind": problem.kind,
            "difficulty": problem.difficulty, "split": split}


def make_eval_set(seed: int, exclude: frozenset[str] = frozenset()) -> list[dict]:
    rng = random.Random(seed)
    rows, seen = [], set(exclude)
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


@functools.lru_cache(maxsize=1)
def held_out_prompts() -> frozenset[str]:
    """Test and dev prompts: never a seed, an SFT example or an evolved child."""
    test = make_eval_set(TEST_SEED)
    dev = make_eval_set(DEV_SEED, exclude=frozenset(r["prompt"] for r in test))
    return frozenset(r["prompt"] for r in test + dev)


def make_seeds(n: int, seed: int = 0) -> list[dict]:
    rng, excluded = random.Random(seed), held_out_prompts()
    rows, seen = [], set()
    while len(rows) < n:
        problem = make_problem(rng.choice(SEED_KINDS), rng.choice(SEED_DIFFICULTIES), rng)
        if problem.prompt not in seen and problem.prompt not in excluded:
            seen.add(problem.prompt)
            rows.append(_row(problem, "seed"))
    return rows


def make_sft_data(n: int, seed: int = 1, frontier_fraction: float = 0.1) -> list[dict]:
    rng, excluded = random.Random(seed), held_out_prompts()
    frontier = max(SEED_DIFFICULTIES) + 1
    rows = []
    while len(rows) < n:
        difficulty = frontier if rng.random() < frontier_fraction else rng.choice(SEED_DIFFICULTIES)
        problem = make_problem(rng.choice(SEED_KINDS), difficulty, rng)
        if problem.prompt not in excluded:
            rows.append({"prompt": problem.prompt, "response": problem.answer, "kind": problem.kind,
                         "difficulty": problem.difficulty})
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as file:
        file.writelines(json.dumps(row) + "\n" for row in rows)


def write_task_dir(path: str | Path, num_seeds: int = 1024, num_sft: int = 6144) -> Path:
    """The family as a bench task folder (see the module docstring); returns the folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    test = make_eval_set(TEST_SEED)
    _write_jsonl(path / "test.jsonl", test)
    _write_jsonl(path / "dev.jsonl", make_eval_set(DEV_SEED, exclude=frozenset(r["prompt"] for r in test)))
    _write_jsonl(path / "seeds.jsonl", make_seeds(num_seeds, seed=0))
    _write_jsonl(path / "sft.jsonl", make_sft_data(num_sft, seed=1))
    for name in ("reward_func.py", "evolve_func.py"):
        shutil.copy(_HERE / name, path / name)
    return path
