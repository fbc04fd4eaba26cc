"""Task family: hand-checked answers, parse/solve round-trip, clear errors on garbage."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openrlhf_eva.embedded import vocab
from openrlhf_eva.embedded.tasks import (
    KINDS,
    MAX_DIFFICULTY,
    MIN_DIFFICULTY,
    NEW_KINDS,
    SEED_KINDS,
    Problem,
    make_problem,
    parse_prompt,
    solve,
)


@pytest.mark.parametrize(
    "prompt, answer",
    [
        ("copy 4721", "4721"),
        ("copy 007", "007"),
        ("rev 4721", "1274"),
        ("rev 10", "01"),
        ("rot 4721", "7214"),
        ("rot 12", "21"),
        ("swap 4721", "1724"),
        ("swap 12", "21"),
        ("swap 5", "5"),
        ("sort 4721", "1247"),
        ("sort 90090", "00099"),
        ("max 4721", "7"),
        ("max 000", "0"),
        ("add 12+345", "357"),
        ("add 99+1", "100"),
        ("add 0+0", "0"),
        ("inc 4729", "4730"),
        ("inc 999", "1000"),
        ("  rev 123 ", "321"),
    ],
)
def test_solve_hand_checked(prompt, answer):
    assert solve(prompt) == answer


def test_kind_groups():
    assert set(SEED_KINDS) | set(NEW_KINDS) == set(KINDS)
    assert not set(SEED_KINDS) & set(NEW_KINDS)


def test_difficulty_sets_operand_size():
    rng = random.Random(0)
    assert len(make_problem("rev", 3, rng).args[0]) == 4
    assert len(make_problem("inc", 1, rng).args[0]) == 2
    a, b = make_problem("add", 5, rng).args
    assert len(a) == len(b) == 5 and a[0] != "0" and b[0] != "0"
    assert parse_prompt("add 12+345").difficulty == 3
    assert parse_prompt("copy 1").difficulty == 1


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    difficulty=st.integers(MIN_DIFFICULTY, MAX_DIFFICULTY),
    seed=st.integers(0, 2**32),
)
def test_make_parse_solve_round_trip(kind, difficulty, seed):
    problem = make_problem(kind, difficulty, random.Random(seed))
    assert parse_prompt(problem.prompt) == problem
    assert solve(problem.prompt) == problem.answer
    assert problem.kind == kind and problem.difficulty == difficulty
    assert len(problem.prompt) <= 24
    assert set(problem.prompt) <= set(vocab.ALPHABET)
    assert problem.answer and problem.answer.isdigit()


def test_make_problem_is_deterministic():
    first = [make_problem(k, d, random.Random(7)) for k in KINDS for d in (1, 8)]
    second = [make_problem(k, d, random.Random(7)) for k in KINDS for d in (1, 8)]
    assert first == second


@pytest.mark.parametrize(
    "garbage, message",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("hello world", "unknown task kind 'hello'"),
        ("REV 12", "unknown task kind"),
        ("rev", "malformed 'rev'"),
        ("rev 12a", "malformed 'rev'"),
        ("rev  12", "malformed 'rev'"),
        ("rev -12", "malformed 'rev'"),
        ("add 12", "malformed 'add'"),
        ("add 12+", "malformed 'add'"),
        ("add 1+2+3", "malformed 'add'"),
        ("copy 12345678901234567", "longer than"),
        ("<|user|>rev 12", "unknown task kind"),
    ],
)
def test_parse_prompt_rejects_garbage(garbage, message):
    with pytest.raises(ValueError, match=message):
        parse_prompt(garbage)


def test_parse_prompt_rejects_non_string():
    with pytest.raises(ValueError, match="must be a string"):
        parse_prompt(None)


@pytest.mark.parametrize("kind, difficulty", [("mul", 2), ("rev", 0), ("rev", MAX_DIFFICULTY + 1)])
def test_make_problem_rejects_bad_arguments(kind, difficulty):
    with pytest.raises(ValueError):
        make_problem(kind, difficulty, random.Random(0))


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=vocab.ALPHABET + "-<>|\n", max_size=24))
def test_parse_prompt_never_crashes_otherwise(text):
    # Any text either parses into a problem that re-renders to it, or raises ValueError.
    try:
        problem = parse_prompt(text)
    except ValueError:
        return
    assert isinstance(problem, Problem)
    assert problem.prompt == text.strip()
