"""eva-bench's tasks: a user's verifiable task as a folder, and the two embedded families written as one.

A task folder (``python -m openrlhf_eva.bench --task-dir DIR``) holds:

    reward_func.py   OpenRLHF's ``--reward.remote_url`` file: reward_func(queries, prompts, labels)
    evolve_func.py   the ``task`` evolver's file: evolve(prompt, label, rng) -> [{"prompt", "label", ...}]
    seeds.jsonl      {"prompt", "label"} rows: the pool each bench seed draws its seed prompts from
    test.jsonl       {"prompt", "label", "split"} rows: the held-out set results are reported on
    sft.jsonl        {"prompt", "response"} rows for the warm start (unless a model is given)
    dev.jsonl        optional, the shape of test.jsonl: what tuning may read (``--eval-set dev``)

Extra keys of a row (kind, difficulty, ...) travel as metadata. A row's "split" groups the results
("all" is always added). Every problem is reported with the file and row, before anything trains.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

REQUIRED = ("reward_func.py", "evolve_func.py", "seeds.jsonl", "test.jsonl")
EMBEDDED_FAMILIES = ("digits", "letters")


class TaskError(ValueError):
    """A task folder that cannot be benchmarked, with the file and row at fault."""


@dataclass
class Task:
    name: str
    folder: Path
    seeds: list[dict]
    test: list[dict]
    dev: list[dict] | None
    sft: list[dict] | None

    @property
    def reward_file(self) -> Path:
        return self.folder / "reward_func.py"

    @property
    def evolve_file(self) -> Path:
        return self.folder / "evolve_func.py"

    @property
    def splits(self) -> list[str]:
        names = sorted({row["split"] for row in self.test if row.get("split") not in (None, "all")})
        return [*names, "all"]

    def eval_rows(self, which: str) -> list[dict]:
        if which == "dev":
            if self.dev is None:
                raise TaskError(f"{self.folder}: --eval-set dev needs a dev.jsonl")
            return self.dev
        return self.test

    def lengths(self, tokenizer) -> dict[str, int]:
        """The longest prompt (chat-templated, as every run builds it), answer (a label or an SFT
        response, with its EOS) and SFT row (prompt and response) of the task, in ``tokenizer``'s
        tokens: what the bench's length limits have to hold."""
        def prompt_lengths(prompts: list[str]) -> list[int]:
            if tokenizer.chat_template:
                prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                         add_generation_prompt=True) for p in prompts]
            return [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]] if prompts else []

        def answer_lengths(answers: list) -> list[int]:
            ids = tokenizer([str(a) for a in answers], add_special_tokens=False)["input_ids"] if answers else []
            return [len(row) + 1 for row in ids]

        rows, sft = [*self.seeds, *self.test, *(self.dev or [])], self.sft or []
        sft_rows = [p + a for p, a in zip(prompt_lengths([r["prompt"] for r in sft]),
                                          answer_lengths([r["response"] for r in sft]))]
        return {"prompt": max(prompt_lengths([r["prompt"] for r in rows])),
                "answer": max(answer_lengths([r["label"] for r in rows] + [r["response"] for r in sft])),
                "sft": max(sft_rows, default=0)}

    def alphabet(self) -> str:
        """Every character the task's data uses (prompts, labels, SFT answers): the tiny model's vocabulary."""
        chars = set()
        for rows in (self.seeds, self.test, self.dev or [], self.sft or []):
            for row in rows:
                for key in ("prompt", "label", "response"):
                    if key in row:
                        chars.update(str(row[key]))
        return "".join(sorted(chars))


def _read_rows(path: Path, keys: tuple[str, ...]) -> list[dict]:
    rows = []
    with open(path) as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise TaskError(f"{path}, row {number}: not JSON ({error.msg})") from None
            missing = [key for key in keys if not isinstance(row, dict) or row.get(key) in (None, "")]
            if missing:
                raise TaskError(f"{path}, row {number}: missing {', '.join(repr(k) for k in missing)}")
            rows.append(row)
    if not rows:
        raise TaskError(f"{path}: no rows")
    return rows


def load_task_dir(folder: str | Path, name: str | None = None, need_sft: bool = True) -> Task:
    folder = Path(folder)
    if not folder.is_dir():
        raise TaskError(f"--task-dir {folder}: not a folder")
    missing = [f for f in REQUIRED + (("sft.jsonl",) if need_sft else ()) if not (folder / f).exists()]
    if missing:
        raise TaskError(f"--task-dir {folder}: missing {', '.join(missing)} (needs {', '.join(REQUIRED)}, "
                        "and sft.jsonl unless --model is given)")
    seeds = _read_rows(folder / "seeds.jsonl", ("prompt", "label"))
    test = _read_rows(folder / "test.jsonl", ("prompt", "label"))
    dev = _read_rows(folder / "dev.jsonl", ("prompt", "label")) if (folder / "dev.jsonl").exists() else None
    sft = _read_rows(folder / "sft.jsonl", ("prompt", "response")) if (folder / "sft.jsonl").exists() else None
    leaked = {row["prompt"] for row in seeds} & {row["prompt"] for row in test}
    if leaked:
        raise TaskError(f"{folder}: {len(leaked)} test prompts are also seed prompts, e.g. {sorted(leaked)[0]!r}")
    return Task(name or folder.name, folder, seeds, test, dev, sft)


def write_embedded_task(name: str, folder: str | Path) -> Path:
    """One of the embedded families as a task folder (idempotent: rewritten each time, same bytes)."""
    folder = Path(folder)
    if name == "letters":
        from openrlhf_eva.embedded import letters

        return letters.write_task_dir(folder)
    if name != "digits":
        raise TaskError(f"unknown embedded family {name!r}; known: {', '.join(EMBEDDED_FAMILIES)}")
    import shutil

    import openrlhf_eva.embedded as embedded
    from openrlhf_eva.embedded.data import make_seeds, make_sft_data, make_test_set

    folder.mkdir(parents=True, exist_ok=True)
    tables = {
        "seeds.jsonl": make_seeds(n=1024, seed=0),
        "test.jsonl": make_test_set(),
        # The dev set the first bench tuned on (another seed of the same generator).
        "dev.jsonl": make_test_set(seed=7),
        "sft.jsonl": make_sft_data(n=6144, seed=42),
    }
    for file_name, rows in tables.items():
        with open(folder / file_name, "w") as file:
            file.writelines(json.dumps(row) + "\n" for row in rows)
    for file_name in ("reward_func.py", "evolve_func.py"):
        shutil.copy(Path(embedded.__file__).parent / file_name, folder / file_name)
    return folder
