"""Programmatic evolver, loaded by path as the generic task evolver will load it."""

import importlib.util
import random
from collections import Counter
from pathlib import Path

import pytest

import openrlhf_eva.embedded
from openrlhf_eva.embedded.data import held_out_prompts, make_seeds
from openrlhf_eva.embedded.tasks import KINDS, MAX_DIFFICULTY, NEW_KINDS, make_problem, parse_prompt, solve

EVOLVE_FILE = Path(openrlhf_eva.embedded.__file__).parent / "evolve_func.py"


@pytest.fixture(scope="module")
def evolve():
    spec = importlib.util.spec_from_file_location("embedded_evolve_func", EVOLVE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.evolve


@pytest.fixture(scope="module")
def evolved(evolve):
    """(parent problem, children) for every seed."""
    rng = random.Random(0)
    return [(parse_prompt(row["prompt"]), evolve(row["prompt"], row["label"], rng)) for row in make_seeds(n=200)]


def test_children_shape_and_labels(evolved):
    for parent, children in evolved:
        assert len(children) == 4
        assert [child["method"] for child in children[:3]] == ["deepen", "shift_kind", "resample"]
        prompts = [child["prompt"] for child in children]
        assert len(set(prompts)) == len(prompts) and parent.prompt not in prompts
        for child in children:
            assert set(child) == {"prompt", "label", "method", "metadata"}
            assert child["label"] == solve(child["prompt"])
            problem = parse_prompt(child["prompt"])
            assert child["metadata"] == {"kind": problem.kind, "difficulty": problem.difficulty}


def test_in_depth_children_are_harder(evolved):
    steps = Counter()
    for parent, children in evolved:
        for child in children:
            if child["method"] == "deepen":
                assert child["metadata"]["kind"] == parent.kind
                step = child["metadata"]["difficulty"] - parent.difficulty
                assert step in (1, 2)
                steps[step] += 1
    assert steps[1] > steps[2] > 0


def test_in_breadth_children_reach_every_kind(evolved):
    shifted_kinds = set()
    for parent, children in evolved:
        for child in children:
            meta = child["metadata"]
            if child["method"] == "shift_kind":
                assert meta["kind"] != parent.kind and meta["difficulty"] == parent.difficulty
                shifted_kinds.add(meta["kind"])
            if child["method"] == "resample":
                assert meta["kind"] == parent.kind and meta["difficulty"] == parent.difficulty
    assert shifted_kinds == set(KINDS)
    assert set(NEW_KINDS) <= shifted_kinds


def test_children_avoid_held_out_prompts(evolve):
    held_out = held_out_prompts()
    rng = random.Random(1)
    # Difficulty 1 has 100 instances per kind, 10 of which are held out: collisions would show here.
    for kind in KINDS:
        for _ in range(30):
            parent = make_problem(kind, 1, rng)
            assert not {child["prompt"] for child in evolve(parent.prompt, None, rng)} & held_out


def test_deterministic_given_rng_seed(evolve):
    first = [evolve("rev 123", "321", random.Random(5)) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    assert evolve("rev 123", "321", random.Random(6)) != first[0]


def test_deepen_at_max_difficulty_resamples(evolve):
    parent = make_problem("add", MAX_DIFFICULTY, random.Random(0))
    children = evolve(parent.prompt, parent.answer, random.Random(0))
    assert children[0]["method"] == "resample"
    assert all(child["metadata"]["difficulty"] == MAX_DIFFICULTY for child in children)


def test_label_argument_is_ignored(evolve):
    assert evolve("sort 321", "wrong", random.Random(2)) == evolve("sort 321", None, random.Random(2))


@pytest.mark.parametrize("garbage", ["", "please write a poem", "rev 12a", "<|user|>rev 12<|assistant|>"])
def test_unparseable_parent_has_no_children(evolve, garbage):
    assert evolve(garbage, None, random.Random(0)) == []
