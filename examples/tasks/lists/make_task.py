"""Write the `lists` task as a folder for ``python -m openrlhf_eva.bench --task-dir OUT_DIR``.

    python examples/tasks/lists/make_task.py OUT_DIR [--seed-pool 1024] [--sft-rows 6144] [--tasks FILE]

OUT_DIR receives seeds.jsonl, test.jsonl, dev.jsonl, sft.jsonl and copies of reward_func.py,
evolve_func.py and tasks.py. Every generator has a fixed seed, so each run writes the same bytes.
--tasks builds another family of the same layout from its own tasks.py (default: this folder's); the
reward and the evolver here read the kinds from the tasks.py copied next to them (examples/tasks/marks).
Rows carry ``kind`` and ``difficulty`` next to the required keys (the bench keeps them as metadata).

  test.jsonl  TEST_SEED; in_dist: seed kinds x d1-3 x 10, harder: seed kinds x d4-6 x 8,
              new_kind: new kinds x d1-3 x 10 (252 distinct rows)
  dev.jsonl   the same layout from DEV_SEED, disjoint from test: the only set tuning may read
  seeds.jsonl distinct seed kinds at d1-3, uniform over (kind, difficulty) cells, never test or dev
  sft.jsonl   solved seed kinds at d1-3 plus SFT_FRONTIER_FRACTION at d4, never test or dev;
              repeats allowed (d1 has only 100 instances per kind)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tasks  # noqa: E402  (this folder's tasks.py, found through the path entry above; see --tasks)

TEST_SEED = 20250301
DEV_SEED = 7
SEEDS_SEED = 0
SFT_SEED = 42

# (kinds, difficulties, rows per (kind, difficulty) cell) of each held-out split. in_dist is what
# the seeds cover; harder measures in-depth reach past the seed frontier; new_kind measures breadth
# alone (kinds only the evolver produces, at seed difficulties).
HELD_OUT_SPLITS: dict[str, tuple[tuple[str, ...], tuple[int, ...], int]] = {
    "in_dist": (tasks.SEED_KINDS, tasks.SEED_DIFFICULTIES, 10),
    "harder": (tasks.SEED_KINDS, tasks.HARDER_DIFFICULTIES, 8),
    "new_kind": (tasks.NEW_KINDS, tasks.SEED_DIFFICULTIES, 10),
}

# One step past the hardest seed difficulty, so the warm-started solver sits just below the
# frontier and earns partial credit there (what eva's informativeness has to measure).
SFT_FRONTIER_FRACTION = 0.1

# Draws allowed per requested row before giving up on finding unseen prompts.
_MAX_DRAWS_PER_ROW = 200

COPIED_FILES = ("reward_func.py", "evolve_func.py")  # and the family's tasks.py


def _row(problem: tasks.Problem, split: str) -> dict:
    return {
        "prompt": problem.prompt,
        "label": problem.answer,
        "kind": problem.kind,
        "difficulty": problem.difficulty,
        "split": split,
    }


def make_held_out(seed: int, excluded: frozenset[str] = frozenset()) -> list[dict]:
    """A test-shaped set: distinct prompts, none in ``excluded``, tagged with their split."""
    rng = random.Random(seed)
    rows: list[dict] = []
    seen = set(excluded)
    for split, (kinds, difficulties, per_cell) in HELD_OUT_SPLITS.items():
        for kind in kinds:
            for difficulty in difficulties:
                taken = 0
                while taken < per_cell:
                    problem = tasks.make_problem(kind, difficulty, rng)
                    if problem.prompt not in seen:
                        seen.add(problem.prompt)
                        rows.append(_row(problem, split))
                        taken += 1
    return rows


def make_seeds(n: int, excluded: frozenset[str], seed: int = SEEDS_SEED) -> list[dict]:
    """``n`` distinct seed prompts outside ``excluded``.

    Each draw picks a (kind, difficulty) cell uniformly; a d1 cell has only 100 instances, so a large
    ``n`` exhausts it and the pool leans toward d2-3. If those run out too, a ValueError says so.
    """
    rng = random.Random(seed)
    rows: list[dict] = []
    seen = set(excluded)
    for _ in range(_MAX_DRAWS_PER_ROW * n):
        if len(rows) == n:
            break
        problem = tasks.make_problem(rng.choice(tasks.SEED_KINDS), rng.choice(tasks.SEED_DIFFICULTIES), rng)
        if problem.prompt not in seen:
            seen.add(problem.prompt)
            rows.append(_row(problem, "seed"))
    if len(rows) < n:
        raise ValueError(f"found only {len(rows)} distinct seed prompts outside test and dev, asked for {n}")
    return rows


def make_sft(n: int, excluded: frozenset[str], seed: int = SFT_SEED) -> list[dict]:
    """``n`` solved examples ``{"prompt", "response", "kind", "difficulty"}`` for the warm start."""
    rng = random.Random(seed)
    frontier = max(tasks.SEED_DIFFICULTIES) + 1
    rows: list[dict] = []
    while len(rows) < n:
        difficulty = frontier if rng.random() < SFT_FRONTIER_FRACTION else rng.choice(tasks.SEED_DIFFICULTIES)
        problem = tasks.make_problem(rng.choice(tasks.SEED_KINDS), difficulty, rng)
        if problem.prompt not in excluded:
            rows.append(
                {
                    "prompt": problem.prompt,
                    "response": problem.answer,
                    "kind": problem.kind,
                    "difficulty": problem.difficulty,
                }
            )
    return rows


def write_task(out_dir: str | Path, seed_pool: int = 1024, sft_rows: int = 6144) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    test = make_held_out(TEST_SEED)
    dev = make_held_out(DEV_SEED, excluded=frozenset(row["prompt"] for row in test))
    held_out = frozenset(row["prompt"] for row in test + dev)
    tables = {
        "seeds.jsonl": make_seeds(seed_pool, held_out),
        "test.jsonl": test,
        "dev.jsonl": dev,
        "sft.jsonl": make_sft(sft_rows, held_out),
    }
    for name, rows in tables.items():
        with open(out / name, "w") as file:
            file.writelines(json.dumps(row) + "\n" for row in rows)
    for source in [HERE / name for name in COPIED_FILES] + [Path(tasks.__file__).resolve()]:
        # Writing into the source folder itself would copy a file onto itself: nothing to do then.
        target = out / ("tasks.py" if source.name == "tasks.py" else source.name)
        if target.resolve() != source:
            shutil.copyfile(source, target)
    return out


def use_tasks(path: str | Path) -> None:
    """Build the family defined by the tasks.py at ``path`` instead of lists (module-wide)."""
    global tasks
    spec = importlib.util.spec_from_file_location(f"tasks_{Path(path).resolve().parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves its own module while it runs
    spec.loader.exec_module(module)
    tasks = module
    for split, (kinds, difficulties, per_cell) in list(HELD_OUT_SPLITS.items()):
        HELD_OUT_SPLITS[split] = ({"in_dist": tasks.SEED_KINDS, "harder": tasks.SEED_KINDS,
                                   "new_kind": tasks.NEW_KINDS}[split],
                                  tasks.HARDER_DIFFICULTIES if split == "harder" else tasks.SEED_DIFFICULTIES,
                                  per_cell)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the task into (created if missing)")
    parser.add_argument("--seed-pool", type=int, default=1024, help="distinct seed prompts (default 1024)")
    parser.add_argument("--sft-rows", type=int, default=6144, help="SFT warm-start rows (default 6144)")
    parser.add_argument("--tasks", default=None, metavar="FILE", help="another family's tasks.py (default: lists)")
    args = parser.parse_args(argv)
    if args.tasks:
        use_tasks(args.tasks)
    out = write_task(args.out_dir, seed_pool=args.seed_pool, sft_rows=args.sft_rows)
    print(f"wrote the {Path(tasks.__file__).resolve().parent.name} task to {out}: "
          + ", ".join(sorted(p.name for p in out.iterdir())))


if __name__ == "__main__":
    main()
