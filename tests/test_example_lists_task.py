"""The example task folder examples/tasks/lists: built by its own script, loaded as the bench loads it."""

import importlib.util
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openrlhf_eva.bench_tasks import load_task_dir

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tasks" / "lists"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # tasks.py's dataclass looks its module up while being defined
    spec.loader.exec_module(module)
    return module


tasks = _load(EXAMPLE / "tasks.py", "example_lists_tasks")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("lists")
    # Small pools keep the build fast; test and dev do not depend on them.
    command = [sys.executable, str(EXAMPLE / "make_task.py"), str(out), "--seed-pool", "300", "--sft-rows", "500"]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=60)
    return out


@pytest.fixture(scope="module")
def evolve_module(task_dir):
    # The copy inside the built folder, so it finds test.jsonl and dev.jsonl next to it.
    return _load(task_dir / "evolve_func.py", "example_lists_evolve_func")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_folder_loads_and_is_clean(task_dir):
    task = load_task_dir(task_dir)
    assert task.splits == ["harder", "in_dist", "new_kind", "all"]
    assert Counter(row["split"] for row in task.test) == {"in_dist": 90, "harder": 72, "new_kind": 90}
    assert len(task.seeds) == 300 and len(task.sft) == 500
    test = {row["prompt"] for row in task.test}
    dev = {row["prompt"] for row in task.dev}
    seeds = {row["prompt"] for row in task.seeds}
    assert len(test) == len(task.test) and len(dev) == len(task.dev) and len(seeds) == len(task.seeds)
    assert not test & dev and not seeds & (test | dev)
    assert not {row["prompt"] for row in task.sft} & (test | dev)
    for row in task.seeds + task.test + task.dev:
        assert tasks.solve(row["prompt"]) == row["label"]
        assert tasks.parse_prompt(row["prompt"]).difficulty == row["difficulty"]
    assert {row["kind"] for row in task.seeds + task.sft} == set(tasks.SEED_KINDS)
    assert {row["difficulty"] for row in task.sft} == {1, 2, 3, 4}
    assert {row["kind"] for row in task.test if row["split"] == "new_kind"} == set(tasks.NEW_KINDS)
    assert any(row["label"] == "none" for row in task.test)


def test_build_is_byte_identical(task_dir, tmp_path):
    subprocess.run([sys.executable, str(EXAMPLE / "make_task.py"), str(tmp_path), "--seed-pool", "300",
                    "--sft-rows", "500"], check=True, capture_output=True, timeout=60)
    for path in task_dir.iterdir():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name


@pytest.mark.parametrize(
    "prompt, answer",
    [
        ("join 3,1,4", "314"),
        ("uniq 3,1,3", "31"),
        ("uniq 7,7,7,2,7", "72"),
        ("odds 3,1,4,6", "31"),
        ("odds 2,4", "none"),
        ("evens 3,1,4,6", "46"),
        ("evens 0,1", "0"),
        ("evens 1,3,5", "none"),
        ("inc 3,1,9", "420"),
        ("inc 9,9", "00"),
        ("dec 3,1,0", "209"),
        (" join 1,2\n", "12"),
    ],
)
def test_solve(prompt, answer):
    assert tasks.solve(prompt) == answer


@pytest.mark.parametrize(
    "prompt",
    ["", "join", "join 3", "join 3,,1", "join 3, 1", "join  3,1", "join 31,4", "join 3,1,", "Join 3,1",
     "sort 3,1", "join " + ",".join("1" * 17), "join 3;1"],
)
def test_parse_rejects_malformed(prompt):
    with pytest.raises(ValueError):
        tasks.parse_prompt(prompt)


def test_parse_accepts_up_to_sixteen_digits():
    assert tasks.parse_prompt("join " + ",".join("1" * 16)).difficulty == 15


@given(st.sampled_from(tasks.KINDS), st.integers(1, tasks.MAX_DIFFICULTY), st.integers(0, 2**32))
def test_make_problem_round_trips(kind, difficulty, seed):
    problem = tasks.make_problem(kind, difficulty, random.Random(seed))
    parsed = tasks.parse_prompt(problem.prompt)
    assert (parsed.kind, parsed.difficulty, parsed.answer) == (kind, difficulty, problem.answer)
    assert problem.answer


def test_reward():
    reward_func = _load(EXAMPLE / "reward_func.py", "example_lists_reward_func").reward_func
    prompt = "<|user|>\njoin 3,1\n<|assistant|>\n"
    queries = [
        prompt + "31</s><pad><pad>",  # exact
        prompt + "32</s><pad>",  # near miss: one substitution
        prompt + "</s><pad><pad>",  # empty response
        prompt + " 31 <|user|>\nmore",  # a new turn ends the response
        "<s><|user|>\njoin 3,1\n<|assistant|>\n31</s>",  # prompt re-tokenised: last assistant turn
    ]
    out = reward_func(queries, [prompt] * 5, ["31"] * 5)
    assert out["rewards"].shape == (5,) and out["scores"].shape == (5,)
    assert out["rewards"].tolist() == pytest.approx([1.0, 0.4, 0.0, 1.0, 1.0])
    assert out["extra_logs"]["exact_match"].tolist() == [1.0, 0.0, 0.0, 1.0, 1.0]
    near = reward_func([prompt + "314</s>"], [prompt], ["31"])["rewards"].item()
    assert near == pytest.approx(0.8 * (1 - 1 / 3))


def test_evolve(task_dir, evolve_module):
    held_out = {row["prompt"] for row in _rows(task_dir / "test.jsonl") + _rows(task_dir / "dev.jsonl")}
    rng = random.Random(0)
    methods = Counter()
    for row in _rows(task_dir / "seeds.jsonl")[:100]:
        parent = tasks.parse_prompt(row["prompt"])
        children = evolve_module.evolve(row["prompt"], row["label"], rng)
        assert len(children) == 4
        assert [child["method"] for child in children[:3]] == ["deepen", "shift_kind", "resample"]
        prompts = [child["prompt"] for child in children]
        assert len(set(prompts)) == 4 and parent.prompt not in prompts and not set(prompts) & held_out
        for child in children:
            problem = tasks.parse_prompt(child["prompt"])
            assert child["label"] == problem.answer
            assert child["metadata"] == {"kind": problem.kind, "difficulty": problem.difficulty}
            methods[child["method"]] += 1
        assert children[0]["metadata"]["difficulty"] in (parent.difficulty + 1, parent.difficulty + 2)
        assert children[1]["metadata"]["kind"] != parent.kind
        assert (children[2]["metadata"]["kind"], children[2]["metadata"]["difficulty"]) == (
            parent.kind, parent.difficulty)
    assert set(methods) == {"deepen", "shift_kind", "resample"}

    # At the cap, deepen becomes a resample; an unparseable parent has no children.
    capped = evolve_module.evolve("inc " + ",".join("5" * 9), rng=random.Random(1))
    assert capped[0]["method"] == "resample" and capped[0]["metadata"]["difficulty"] == tasks.MAX_DIFFICULTY
    assert evolve_module.evolve("not a task", rng=random.Random(1)) == []
    assert evolve_module.evolve("join " + ",".join("1" * 16), rng=random.Random(1))  # longer than generated

    first = evolve_module.evolve("odds 3,1,4", rng=random.Random(7))
    assert first == evolve_module.evolve("odds 3,1,4", rng=random.Random(7))


MARKS = EXAMPLE.parent / "marks"
marks = _load(MARKS / "tasks.py", "example_marks_tasks")


@pytest.mark.parametrize("prompt, answer", [("srt dbad", "abdd"), ("dsc dbad", "ddba"), ("pal abc", "abccba"),
                                            ("mir abc", "cbaabc"), ("shl abcd", "bcda"), ("shr abcd", "dabc")])
def test_marks_answers(prompt, answer):
    assert marks.solve(prompt) == answer


def test_marks_builds_with_the_lists_script_and_its_evolver_reads_marks_kinds(tmp_path):
    """make_task.py --tasks: the second tuning family, same layout, same reward and evolver files."""
    command = [sys.executable, str(EXAMPLE / "make_task.py"), str(tmp_path), "--seed-pool", "300", "--sft-rows", "500",
               "--tasks", str(MARKS / "tasks.py")]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=60)
    assert (tmp_path / "tasks.py").read_bytes() == (MARKS / "tasks.py").read_bytes()
    task = load_task_dir(tmp_path)
    assert Counter(row["split"] for row in task.test) == {"in_dist": 90, "harder": 72, "new_kind": 90}
    assert {row["kind"] for row in task.seeds + task.sft} == set(marks.SEED_KINDS)
    for row in task.seeds + task.test + task.dev:
        assert marks.solve(row["prompt"]) == row["label"]
    evolver = _load(tmp_path / "evolve_func.py", "example_marks_evolve_func")
    held_out = {row["prompt"] for row in task.test + task.dev}
    children = [c for seed in task.seeds[:20] for c in evolver.evolve(seed["prompt"], None, random.Random(0))]
    assert {c["metadata"]["kind"] for c in children} & set(marks.NEW_KINDS)
    assert all(marks.solve(c["prompt"]) == c["label"] and c["prompt"] not in held_out for c in children)
