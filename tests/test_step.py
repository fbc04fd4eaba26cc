"""creator_step: estimate -> sample -> evolve -> mix on hand-made rewards (no model needed)."""

import random

import pytest
import torch

from openrlhf_eva.creator import Child, Evolver
from openrlhf_eva.creator.step import creator_step


class SuffixEvolver(Evolver):
    """Deterministic evolver: child j of a parent is its prompt + ' v{j}' (one empty child to filter)."""

    def evolve(self, parents, n, rng):
        children = []
        for index, parent in enumerate(parents):
            for j in range(n):
                text = "" if (index == 0 and j == 0) else f"{parent.prompt} v{j}"
                children.append(Child(prompt=text, parent_index=index, parent_id=parent.id,
                                      depth=parent.depth + 1, method=f"m{j}", label=f"{parent.label}{j}",
                                      metadata={"kind": "k"}))
        return children


def make_rows(num):
    return [{"prompt": f"p{i}", "label": str(i), "kind": "k", "difficulty": 1} for i in range(num)]


def test_creator_step_counts_lineage_and_mix():
    rows = make_rows(20)
    # prompts 0..4 informative (gap 1), others tied (gap 0): weighted A_min must pick only 0..4
    rewards = torch.zeros(20, 4)
    rewards[:5, 0] = 1.0
    step = creator_step(rows, rewards, SuffixEvolver(), metric="A_min", sample_fraction=0.25, seed=3)
    assert sorted(step.selected) == [0, 1, 2, 3, 4]
    assert step.counts["children/generated"] == 20
    assert step.counts["children/accepted"] == 19 and step.counts["filter/empty"] == 1
    assert [reason for _, reason in step.rejected] == ["empty: empty prompt"]
    # 80% of an equal-size set from evolved children, 20% from the originals
    assert len(step.next_set) == 20
    evolved = [r for r in step.next_set if r["eva_origin"] == "evolved"]
    originals = [r for r in step.next_set if r["eva_origin"] == "seed"]
    assert len(evolved) == 16 and len(originals) == 4
    for r in evolved:
        assert r["prompt"].startswith(r["eva_parent"] + " v")
        assert r["eva_depth"] == 1 and r["eva_method"].startswith("m") and r["eva_info"] == 1.0
        assert r["kind"] == "k"
    assert len({r["prompt"] for r in step.next_set}) == 20
    for r in originals:
        assert r["eva_parent"] == "" and r["eva_depth"] == 0


def test_next_set_is_shuffled_so_a_prefix_keeps_the_mix():
    # train_dpo's --data.max_samples trains on the first rows: the originals' share must be in any prefix,
    # not appended after the children (it was, and iterate's DPO then never saw an original prompt).
    rows = make_rows(100)
    rewards = torch.zeros(100, 4)
    rewards[:, 0] = 1.0
    for seed in range(5):
        step = creator_step(rows, rewards, SuffixEvolver(), seed=seed)
        origins = [r["eva_origin"] for r in step.next_set]
        assert origins.count("seed") == 20 and origins.count("evolved") == 80
        assert 0 < origins[:40].count("seed") < 20  # about 8 expected; all 20 after the children before


def test_replay_pool_supplies_the_original_share_and_equal_rows_change_nothing():
    # iterate --replay seeds: round t's originals come from the seeds X_1, not from X_t (mostly evolved)
    rows = [{**r, "prompt": f"q{i}", "eva_origin": "evolved", "eva_depth": 1} for i, r in enumerate(make_rows(40))]
    seeds = make_rows(30)
    rows[0] = {**seeds[5], "eva_origin": "seed"}  # a seed that is also in this round's set: estimated here
    rewards = torch.zeros(40, 4)
    rewards[:, 0] = 1.0
    step = creator_step(rows, rewards, SuffixEvolver(), seed=2, replay=seeds)
    originals = [r for r in step.next_set if r["eva_origin"] == "seed"]
    assert len(originals) == 8 and {r["prompt"] for r in originals} <= {r["prompt"] for r in seeds}
    assert all(r["eva_info"] == (1.0 if r["prompt"] == "p5" else -1.0) for r in originals)
    # the seeds themselves as the pool: the same next set, bitwise, as no pool (round 1 is unchanged)
    same = creator_step(seeds, rewards[:30], SuffixEvolver(), seed=2)
    assert creator_step(seeds, rewards[:30], SuffixEvolver(), seed=2, replay=list(seeds)).next_set == same.next_set


def test_creator_step_is_reproducible_and_handles_all_tied_rewards():
    rows = make_rows(12)
    rewards = torch.full((12, 3), 0.5)  # info all zero: weighted sampling must fall back to uniform
    a = creator_step(rows, rewards, SuffixEvolver(), seed=7)
    b = creator_step(rows, rewards, SuffixEvolver(), seed=7)
    assert a.selected == b.selected and a.next_set == b.next_set
    assert len(a.selected) == 3 and float(a.info.sum()) == 0.0


def test_creator_step_rejects_bad_arguments():
    rows = make_rows(4)
    with pytest.raises(ValueError, match="4 prompts but rewards for 3"):
        creator_step(rows, torch.zeros(3, 2), SuffixEvolver())
    with pytest.raises(ValueError, match="sample_fraction"):
        creator_step(rows, torch.zeros(4, 2), SuffixEvolver(), sample_fraction=0)
    with pytest.raises(ValueError, match="unknown metric"):
        creator_step(rows, torch.zeros(4, 2), SuffixEvolver(), metric="A_max")
