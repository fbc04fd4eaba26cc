"""openrlhf_eva.creator.online.OnlinePromptSource: phases, budget, bad input, state, ranks sharing the evolving."""

import math
import random
import threading
from pathlib import Path

import pytest
import torch

from openrlhf_eva.creator import Child, Evolver, TaskEvolver
from openrlhf_eva.creator.online import MAX_EVOLVE_FAILURES, EvolveFailure, OnlinePromptSource
from openrlhf_eva.embedded import data as embedded_data
from openrlhf_eva.embedded.reward import score

EVOLVE_FILE = Path(embedded_data.__file__).parent / "evolve_func.py"


class VersionEvolver(Evolver):
    """Child k of "p" is "p/k": always n distinct, new children; the rng is not used, so the result
    does not depend on how the parents are split between ranks."""

    def evolve(self, parents, n, rng):
        return [Child(prompt=f"{p.prompt}/{k}", parent_index=i, parent_id=p.id, depth=p.depth + 1, method="version",
                      label=p.label) for i, p in enumerate(parents) for k in range(n)]


class SilentEvolver(Evolver):
    def evolve(self, parents, n, rng):
        return []


class BrokenEvolver(Evolver):
    def evolve(self, parents, n, rng):
        raise RuntimeError("creator model is out of memory")


def paper_source(*args, **kwargs):
    """The paper's schedule exactly: no seed replay, no frontier bar (the curriculum tests turn them on)."""
    return OnlinePromptSource(*args, **{"seed_replay": 0.0, "frontier_quantile": 0.0, **kwargs})


def seeds(count=64):
    return [{"prompt": f"seed {i}", "label": str(i)} for i in range(count)]


def rewards_for(batch, n=4, seed=0):
    """Rewards with a spread that depends on the prompt, so infos differ between prompts."""
    rng = random.Random(seed)
    return torch.tensor([[rng.random() * (1 + len(p.prompt) % 3) for _ in range(n)] for p in batch])


def run(source, steps, n=4):
    """Drive the source like a trainer; returns per-step (phase, batch prompts, metrics)."""
    history = []
    for step in range(1, steps + 1):
        batch = source.next_batch()
        if not batch:
            break
        metrics = source.observe(rewards_for(batch, n, seed=step), step)
        history.append((metrics["eva/phase"], [p.prompt for p in batch], metrics))
    return history


def test_phases_change_at_the_steps_the_schedule_implies():
    # 64 seeds, batches of 8: top half (4 parents) x n_new 4 = 16 children a step.
    source = paper_source(seeds(64), 8, VersionEvolver(), capacity=40, total_prompts=3 * 64, seed=1)
    assert source.num_batches == 24
    history = run(source, 100)
    phases = [phase for phase, _, _ in history]
    # warm-up until the buffer is full once: 16, 32, 40 (48 capped) -> 3 steps, 24 seeds used;
    # mix-up: 4 seeds + 4 buffer prompts a step -> 40 seeds last 10 steps; then bootstrap.
    assert phases == ["warmup"] * 3 + ["mixup"] * 10 + ["bootstrap"] * 11
    for phase, prompts, metrics in history:
        from_buffer = metrics["eva/batch_from_buffer"]
        assert from_buffer == {"warmup": 0, "mixup": 4, "bootstrap": 8}[phase]
        per_parent = 2 if phase == "bootstrap" else 4  # n_new_bootstrap 2, n_new 4
        assert metrics["eva/children_generated"] == 4 * per_parent
        if phase != "warmup":
            assert metrics["eva/buffer_size"] == 40  # pops of trained prompts and evictions keep |B| fixed
            assert metrics["eva/popped_trained"] == from_buffer
    assert [m["eva/buffer_size"] for _, _, m in history[:3]] == [16, 32, 40]
    # the budget is exact: 24 batches, then nothing
    assert len(history) == 24 and source.prompts_served == 3 * 64
    assert source.next_batch() == [] and "budget" in source.exhausted
    # lineage grows: bootstrap children of buffer prompts are deeper than depth 1
    assert history[-1][2]["eva/buffer_depth_mean"] > 1.5


def test_top_half_of_each_batch_is_evolved_and_children_inherit_its_info():
    source = paper_source(seeds(16), 8, VersionEvolver(), capacity=100, seed=0)
    batch = source.next_batch()
    rewards = torch.zeros(8, 4)
    rewards[[1, 3, 5, 6], 0] = torch.tensor([0.4, 0.8, 0.2, 0.6])  # A_avg = max - mean = 3/4 of the max
    source.observe(rewards, step=1)
    parents = {entry.text.rsplit("/", 1)[0]: entry.info for entry in source.buffer}
    assert parents == pytest.approx({batch[i].prompt: 0.75 * r for i, r in zip([1, 3, 5, 6], [0.4, 0.8, 0.2, 0.6])})
    assert {entry.depth for entry in source.buffer} == {1}


def test_plain_source_without_evolver_is_shuffled_seeds_for_each_episode():
    source = paper_source(seeds(20), 8, None, num_episodes=2, seed=3)
    assert source.num_batches == 4  # 2 full batches per episode (drop_last), 2 episodes
    history = run(source, 10)
    assert len(history) == 4 and all(phase == "off" for phase, _, _ in history)
    first, second = history[0][1] + history[1][1], history[2][1] + history[3][1]
    assert len(set(first)) == 16 and len(set(second)) == 16 and first != second
    assert len(source.buffer) == 0


def test_bad_rewards_are_counted_and_info_comes_from_the_finite_ones():
    source = paper_source(seeds(16), 4, VersionEvolver(), capacity=100, seed=0)
    source.next_batch()
    rewards = torch.tensor([[float("nan"), 1.0, 0.0, 0.0],  # non-finite, info from the rest: 1 - 1/3
                            [float("inf"), float("nan"), float("-inf"), float("nan")],  # nothing valid: info 0
                            [0.5, 0.5, 0.5, 0.5],  # all tied: info 0
                            [0.0, 0.0, 0.0, 1.0]])
    metrics = source.observe(rewards, step=1)
    assert metrics["eva/groups_nonfinite"] == 2 and metrics["eva/groups_all_tied"] == 1
    infos = sorted({entry.info for entry in source.buffer})
    assert infos == pytest.approx([2 / 3, 0.75])  # the top half: rows 0 and 3


def test_an_evolver_that_returns_nothing_is_counted_and_the_source_ends_with_a_reason():
    source = paper_source(seeds(16), 8, SilentEvolver(), total_prompts=64, seed=0)
    history = run(source, 10)
    assert len(history) == 2  # the seeds, then an empty buffer cannot fill a bootstrap batch
    assert all(m["eva/evolve_empty"] == 1 and m["eva/children_generated"] == 0 for _, _, m in history)
    assert "only 0 prompts left" in source.exhausted


def test_an_evolver_that_raises_is_skipped_until_it_has_failed_several_steps_in_a_row():
    source = paper_source(seeds(64), 8, BrokenEvolver(), seed=0)
    for step in range(1, MAX_EVOLVE_FAILURES):
        batch = source.next_batch()
        metrics = source.observe(rewards_for(batch), step)
        assert metrics["eva/evolve_errors"] == 1 and "out of memory" in metrics["eva/evolve_error"]
    batch = source.next_batch()
    with pytest.raises(EvolveFailure, match="out of memory"):
        source.observe(rewards_for(batch), MAX_EVOLVE_FAILURES)


def test_state_round_trip_continues_exactly_and_refuses_other_versions_and_data():
    def make():
        return paper_source(seeds(32), 8, TaskEvolver(EVOLVE_FILE), capacity=24, total_prompts=96, seed=5)

    # the embedded task family: real prompts, labels recomputed by the task evolver
    task_seeds = embedded_data.make_seeds(32, seed=0)

    def make_task(**curriculum):  # the shipped curriculum defaults: replay and the frontier window are state too
        return OnlinePromptSource(task_seeds, 8, TaskEvolver(EVOLVE_FILE), capacity=24, total_prompts=96, seed=5,
                                  **curriculum)

    def task_rewards(batch, step):
        rng = random.Random(step)
        return torch.tensor([[score(rng.choice([p.label, p.label[:-1], "0"]), p.label) for _ in range(4)]
                             for p in batch])

    def drive(source, first, last):
        out = []
        for step in range(first, last + 1):
            batch = source.next_batch()
            source.observe(task_rewards(batch, step), step)
            out.append(([p.prompt for p in batch], source.fingerprint()))
        return out

    uninterrupted = make_task()
    full = drive(uninterrupted, 1, 12)
    resumed = make_task()
    drive(resumed, 1, 5)
    state = resumed.state_dict()
    fresh = make_task()
    fresh.load_state_dict(state)
    assert drive(fresh, 6, 12) == full[5:]
    assert fresh.buffer.state_dict() == uninterrupted.buffer.state_dict()
    assert any(entry.metadata.get("kind") for entry in fresh.buffer)  # task children keep their metadata

    with pytest.raises(ValueError, match="version 0"):
        make_task().load_state_dict({**state, "version": 0})
    with pytest.raises(ValueError, match="prompt buffer state has version"):
        make_task().load_state_dict({**state, "buffer": {**state["buffer"], "version": 99}})
    with pytest.raises(ValueError, match="other prompts or settings.*seeds_fingerprint"):
        make().load_state_dict(state)
    with pytest.raises(ValueError, match="other prompts or settings.*seed_replay: saved 0.5, now 0.25"):
        make_task(seed_replay=0.25).load_state_dict(state)
    assert state["seed_means"] and full[-1][0] != full[-2][0]


def drive_until_bootstrap_ends(source, rewards_of):
    history = []
    step = 0
    while batch := source.next_batch():
        step += 1
        metrics = source.observe(rewards_of(batch, step), step)
        history.append((batch, metrics))
    return history


def test_seed_replay_keeps_a_share_of_every_bootstrap_batch_on_fresh_passes_over_the_seeds():
    source = OnlinePromptSource(seeds(32), 8, VersionEvolver(), capacity=40, total_prompts=4 * 32, seed=2,
                                seed_replay=0.25, frontier_quantile=0.0)
    history = drive_until_bootstrap_ends(source, lambda batch, step: rewards_for(batch, seed=step))
    assert len(history) == 16 and all(len(batch) == 8 for batch, _ in history)  # the budget, every batch full
    bootstrap = [(batch, m) for batch, m in history if m["eva/phase"] == "bootstrap"]
    assert len(bootstrap) > 4
    for batch, metrics in bootstrap:
        assert metrics["eva/batch_from_seeds"] == 2 and metrics["eva/batch_from_buffer"] == 6  # round(0.25 * 8)
    seed_pass = [m["eva/seed_pass"] for _, m in history]
    assert seed_pass == sorted(seed_pass) and seed_pass[-1] >= 2  # the seeds came round again
    # every pass is a full permutation of the seeds, each pass shuffled anew
    replayed = [p.prompt for batch, _ in history for p in batch if p.buffer_id is None]
    assert sorted(replayed[:32]) == sorted(f"seed {i}" for i in range(32)) and replayed[32:64] != replayed[:32]
    assert len(replayed[32:]) >= 8 and set(replayed[32:]) <= {f"seed {i}" for i in range(32)}

    paper = paper_source(seeds(32), 8, VersionEvolver(), capacity=40, total_prompts=4 * 32, seed=2)
    for batch, metrics in drive_until_bootstrap_ends(paper, lambda batch, step: rewards_for(batch, seed=step)):
        if metrics["eva/phase"] == "bootstrap":
            assert metrics["eva/batch_from_seeds"] == 0  # the paper's buffer-only bootstrap


def test_seed_replay_by_info_replays_the_seeds_the_solver_still_learns_from():
    """Seeds 0-15 always tie (all 1: learned), seeds 16-31 and children spread. By info, the replay share
    takes only spreading seeds once the first pass is over; shuffled passes take every seed; a metric
    that ranks nothing replays exactly the shuffled passes; a resumed run replays what the whole one did."""

    def rewards_of(batch, step):
        solved = [p.seed_index is not None and p.seed_index < 16 for p in batch]
        spread = rewards_for(batch, seed=step)
        return torch.where(torch.tensor(solved)[:, None], torch.ones_like(spread), spread)

    def make(order, metric="A_avg"):
        return OnlinePromptSource(seeds(32), 8, VersionEvolver(), capacity=40, total_prompts=6 * 32, seed=2,
                                  seed_replay=0.5, seed_replay_order=order, frontier_quantile=0.0, metric=metric)

    def replayed(history):
        return [p.seed_index for batch, m in history if m["eva/phase"] == "bootstrap" for p in batch
                if p.buffer_id is None]

    by_info = drive_until_bootstrap_ends(make("info"), rewards_of)
    assert len(replayed(by_info)) >= 40 and all(i >= 16 for i in replayed(by_info))
    assert len(set(replayed(by_info))) > 8  # weighted draws, not the same few seeds
    first_pass = [p.seed_index for batch, m in by_info for p in batch if m["eva/phase"] != "bootstrap"
                  and p.buffer_id is None]
    assert sorted(first_pass) == list(range(32))  # the first pass is the paper's, whatever the order
    shuffled = replayed(drive_until_bootstrap_ends(make("shuffled"), rewards_of))
    assert {i < 16 for i in shuffled} == {True, False}
    def prompts(source, rewards=rewards_of):
        return [[p.prompt for p in batch] for batch, _ in drive_until_bootstrap_ends(source, rewards)]

    # uniform: every info ties, so "info" ranks nothing and replays the shuffled passes, prompt for prompt
    assert prompts(make("info", "uniform")) == prompts(make("shuffled", "uniform"))

    whole = [[p.prompt for p in batch] for batch, _ in by_info]
    resumed = make("info")
    for step in range(1, 11):  # into bootstrap
        resumed.observe(rewards_of(resumed.next_batch(), step), step)
    fresh = make("info")
    fresh.load_state_dict(resumed.state_dict())
    assert prompts(fresh, lambda batch, step: rewards_of(batch, step + 10)) == whole[10:]
    with pytest.raises(ValueError, match="seed_replay_order: saved 'info', now 'shuffled'"):
        make("shuffled").load_state_dict(resumed.state_dict())
    with pytest.raises(ValueError, match="seed_replay_order must be one of shuffled, info"):
        make("by_reward")


def test_frontier_evolves_only_prompts_at_least_as_solved_as_the_weaker_seeds():
    source = OnlinePromptSource(seeds(64), 8, VersionEvolver(), capacity=100, seed=0, seed_replay=0.0,
                                frontier_quantile=0.5, frontier_window=1)
    batch = source.next_batch()
    # Seed rows' mean rewards 0.05 .. 0.8; rows 0 and 1 tie (all 0, all 1): never parents.
    rewards = torch.tensor([[0.0] * 4, [1.0] * 4, [0.0, 0.0, 0.0, 0.2], [0.0, 0.1, 0.2, 0.1], [0.2, 0.4, 0.6, 0.8],
                            [0.5, 0.7, 0.9, 0.5], [0.6, 0.8, 1.0, 0.8], [0.1, 0.3, 0.5, 0.3]])
    metrics = source.observe(rewards, step=1)
    means = rewards.mean(dim=1)
    threshold = float(torch.quantile(means, 0.5))  # numpy and torch both interpolate linearly
    assert metrics["eva/frontier_threshold"] == pytest.approx(threshold)
    assert metrics["eva/parents_tied"] == 2
    eligible = [i for i in range(2, 8) if means[i] >= threshold]
    assert metrics["eva/parents_below_frontier"] == 6 - len(eligible)
    parents = {child["parent"] for child in source.last_children}
    assert parents == {batch[i].prompt for i in eligible}  # top half is 4, only these clear the bar
    assert metrics["eva/parents"] == len(eligible)

    no_bar = OnlinePromptSource(seeds(64), 8, VersionEvolver(), capacity=100, seed=0, seed_replay=0.0,
                                frontier_quantile=0.0)
    no_bar.next_batch()
    metrics = no_bar.observe(rewards, step=1)
    assert metrics["eva/frontier_threshold"] is None and metrics["eva/parents"] == 4  # tied rows still excluded


def test_a_metric_that_ranks_nothing_picks_random_parents_and_ties_otherwise_go_to_buffer_prompts():
    """Under the uniform metric every info ties. Batch order puts buffer prompts first, so breaking ties
    by index evolved only buffer prompts once the buffer served half of each batch; parents must be a
    seeded random half of the batch, seeds and buffer prompts alike, and the same on a rerun. An
    informative metric keeps its tie rule: equal infos go to the lower batch index (buffer first)."""

    def buffer_parent_shares(seed):
        source = paper_source(seeds(64), 8, VersionEvolver(), capacity=40, total_prompts=3 * 64, seed=seed,
                              metric="uniform")
        shares = []
        for step in range(1, source.num_batches + 1):
            batch = source.next_batch()
            metrics = source.observe(rewards_for(batch, seed=step), step)
            if metrics["eva/phase"] == "mixup":  # 4 buffer prompts and 4 seeds a batch, 4 parents
                from_buffer = {p.prompt for p in batch if p.buffer_id is not None}
                parents = {child["parent"] for child in source.last_children}
                shares.append(len(parents & from_buffer) / len(parents))
        return shares

    shares = buffer_parent_shares(seed=3)
    assert len(shares) == 10 and shares == buffer_parent_shares(seed=3)
    assert 0.25 <= sum(shares) / len(shares) <= 0.75  # buffer-first tie-breaking gives 1.0 at every step
    assert shares != buffer_parent_shares(seed=4)

    source = paper_source(seeds(64), 8, VersionEvolver(), capacity=40, seed=0)
    for step in range(1, 5):  # warm-up fills the buffer; the 4th batch is mix-up: 4 buffer prompts, 4 seeds
        batch = source.next_batch()
        source.observe(rewards_for(batch, seed=step), step)
    batch = source.next_batch()
    assert [p.buffer_id is not None for p in batch] == [True] * 4 + [False] * 4
    # A_avg 0.5 on seven rows (four buffer prompts first), 0.25 on the last seed: the top half is a tie
    source.observe(torch.tensor([[0.0, 1.0, 0.5, 0.5]] * 7 + [[0.0, 0.5, 0.25, 0.25]]), step=5)
    assert {child["parent"] for child in source.last_children} == {p.prompt for p in batch[:4]}


def test_curriculum_settings_are_checked():
    for bad in (dict(seed_replay=1.0), dict(seed_replay=-0.1), dict(frontier_quantile=1.5), dict(frontier_window=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            OnlinePromptSource(seeds(8), 4, VersionEvolver(), **bad)


def test_two_ranks_share_the_evolving_and_end_with_the_buffer_of_one_rank():
    """Two sources in threads exchange children through a barrier, as all_gather_object does."""
    steps = 8
    single = paper_source(seeds(64), 8, VersionEvolver(), capacity=24, seed=2)
    single_history = run(single, steps)

    slots, barrier = [None, None], threading.Barrier(2)

    def gather_for(rank):
        def all_gather_object(obj):
            slots[rank] = obj
            barrier.wait()
            out = list(slots)
            barrier.wait()
            return out
        return all_gather_object

    sources = [paper_source(seeds(64), 8, VersionEvolver(), capacity=24, seed=2, rank=r, world_size=2,
                                  all_gather_object=gather_for(r)) for r in range(2)]
    histories = [None, None]

    def worker(rank):
        histories[rank] = run(sources[rank], steps)

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sources[0].fingerprint() == sources[1].fingerprint() == single.fingerprint()
    for (_, _, m0), (_, _, m1), (_, _, m) in zip(histories[0], histories[1], single_history):
        assert m0["eva/parents_per_rank"] == [2, 2]  # 4 parents, split, not repeated
        assert m0["eva/children_accepted"] == m1["eva/children_accepted"] == m["eva/children_accepted"]
    assert math.isclose(sources[0].buffer.total_info, single.buffer.total_info)


def test_greedy_buffer_draws_take_the_most_informative_entries_and_uniform_ignores_info():
    greedy = paper_source(seeds(32), 8, VersionEvolver(), total_prompts=96, capacity=16, sample_mode="greedy")
    checked = 0
    for step in range(1, 12):
        infos = sorted((e.info for e in greedy.buffer), reverse=True)  # before the draw
        batch = greedy.next_batch()
        drawn = [greedy.buffer.get(p.buffer_id).info for p in batch if p.buffer_id is not None]
        assert sorted(drawn, reverse=True) == infos[:len(drawn)]
        checked += bool(drawn)
        greedy.observe(rewards_for(batch, seed=step), step)
    assert checked >= 3

    uniform = [paper_source(seeds(32), 8, VersionEvolver(), total_prompts=96, capacity=16,
                                  sample_mode="uniform", seed=3) for _ in range(2)]
    assert [h[1] for h in run(uniform[0], 12)] == [h[1] for h in run(uniform[1], 12)]  # seeded, repeatable
    with pytest.raises(Exception, match="unknown sampler 'top'"):
        paper_source(seeds(8), 4, VersionEvolver(), sample_mode="top")


def test_last_children_record_every_child_with_its_parent_and_outcome():
    source = paper_source(seeds(16), 8, VersionEvolver(), total_prompts=32, n_new=2)
    batch = source.next_batch()
    batch[0].prompt = batch[1].prompt  # the two parents' children collide: one set is a duplicate
    metrics = source.observe(rewards_for(batch), 1)
    records = source.last_children
    assert len(records) == metrics["eva/children_generated"]
    assert sum(r["accepted"] for r in records) == metrics["eva/children_accepted"]
    assert all(r["reason"] is None for r in records if r["accepted"])
    assert all(r["reason"] and r["reason"].startswith(("duplicate", "unchanged", "empty"))
               for r in records if not r["accepted"])
    assert all(r["prompt"].startswith(r["parent"] + "/") and r["step"] == 1 for r in records)
    assert all(len(r["parent_rewards"]) == 4 for r in records)
