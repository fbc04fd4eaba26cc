"""Seeds, held-out splits and SFT data."""

from collections import Counter

import pytest

from openrlhf_eva.embedded.data import (
    SPLITS,
    TEST_SPLITS,
    held_out_prompts,
    make_seeds,
    make_sft_data,
    make_test_set,
    select_split,
)
from openrlhf_eva.embedded.tasks import (
    HARDER_DIFFICULTIES,
    NEW_KINDS,
    SEED_DIFFICULTIES,
    SEED_KINDS,
    solve,
)


@pytest.fixture(scope="module")
def test_set():
    return make_test_set()


def test_test_set_is_fixed_and_distinct(test_set):
    assert make_test_set() == test_set
    assert make_test_set(seed=1) != test_set
    prompts = [row["prompt"] for row in test_set]
    assert len(prompts) == len(set(prompts))
    assert 200 <= len(test_set) <= 500
    for row in test_set:
        assert set(row) == {"prompt", "label", "kind", "difficulty", "split"}
        assert solve(row["prompt"]) == row["label"]


def test_splits_are_as_specified(test_set):
    in_dist = select_split(test_set, "in_dist")
    harder = select_split(test_set, "harder")
    new_kind = select_split(test_set, "new_kind")
    assert {(r["kind"], r["difficulty"]) for r in in_dist} == {(k, d) for k in SEED_KINDS for d in SEED_DIFFICULTIES}
    assert {(r["kind"], r["difficulty"]) for r in harder} == {(k, d) for k in SEED_KINDS for d in HARDER_DIFFICULTIES}
    assert {r["kind"] for r in new_kind} == set(NEW_KINDS)
    assert {r["difficulty"] for r in new_kind} == set(SEED_DIFFICULTIES)
    assert select_split(test_set, "all") == test_set
    assert len(in_dist) + len(harder) + len(new_kind) == len(test_set)
    for split, (kinds, difficulties, per_cell) in TEST_SPLITS.items():
        assert len(select_split(test_set, split)) == len(kinds) * len(difficulties) * per_cell
    assert set(SPLITS) == {*TEST_SPLITS, "all"}
    with pytest.raises(ValueError, match="unknown split"):
        select_split(test_set, "train")


def test_seeds_cover_only_seed_kinds_at_low_difficulty(test_set):
    seeds = make_seeds(n=300, seed=0)
    assert len(seeds) == 300
    assert make_seeds(n=300, seed=0) == seeds
    assert {row["kind"] for row in seeds} == set(SEED_KINDS)
    assert {row["difficulty"] for row in seeds} == set(SEED_DIFFICULTIES)
    assert all(row["split"] == "seed" and solve(row["prompt"]) == row["label"] for row in seeds)
    prompts = [row["prompt"] for row in seeds]
    assert len(set(prompts)) == len(prompts)
    assert not set(prompts) & {row["prompt"] for row in test_set}


def test_seeds_can_saturate_difficulty_one():
    # 4 kinds x 90 non-test instances at difficulty 1: asking for many must still work.
    seeds = make_seeds(n=2000, seed=3)
    assert len({row["prompt"] for row in seeds}) == 2000
    assert not {row["prompt"] for row in seeds} & held_out_prompts()


def test_sft_data(test_set):
    rows = make_sft_data(n=2000, seed=1)
    assert len(rows) == 2000 and make_sft_data(n=2000, seed=1) == rows
    assert not {row["prompt"] for row in rows} & {row["prompt"] for row in test_set}
    assert all(solve(row["prompt"]) == row["response"] for row in rows)
    assert {row["kind"] for row in rows} == set(SEED_KINDS)
    difficulties = Counter(row["difficulty"] for row in rows)
    frontier = max(SEED_DIFFICULTIES) + 1
    assert set(difficulties) == {*SEED_DIFFICULTIES, frontier}
    assert 0.05 < difficulties[frontier] / len(rows) < 0.15
    assert {row["difficulty"] for row in make_sft_data(n=200, seed=1, frontier_fraction=0.0)} == set(SEED_DIFFICULTIES)
