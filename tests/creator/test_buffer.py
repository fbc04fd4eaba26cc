import json
import random

import numpy as np
import pytest

from openrlhf_eva.creator import OnlineSchedule, PromptBuffer
from openrlhf_eva.creator.buffer import SumTree

# Upper 0.1% points of the chi-square distribution (from standard tables).
CHI2_CRITICAL_999 = {3: 16.266, 11: 31.264}


def items(infos, prefix="p"):
    return [{"text": f"{prefix}{i}", "info": info} for i, info in enumerate(infos)]


def test_sum_tree_find_and_update():
    tree = SumTree(4)
    tree.update(np.arange(4), np.array([1.0, 0.0, 2.0, 3.0]))
    assert tree.total == 6.0
    targets = np.array([0.0, 0.99, 1.0, 2.5, 3.0, 5.99])
    assert tree.find(targets).tolist() == [0, 0, 2, 2, 3, 3]
    tree.update(np.array([2]), np.array([0.0]))
    assert tree.total == 4.0 and tree.find(np.array([1.0, 3.9])).tolist() == [3, 3]
    single = SumTree(1)
    single.update(np.array([0]), np.array([2.5]))
    assert single.total == 2.5 and single.find(np.array([1.0])).tolist() == [0]


def test_sum_tree_never_returns_zero_slot_on_rounding():
    tree = SumTree(3)
    tree.update(np.arange(3), np.array([0.1, 0.2, 0.0]))
    # A target at the very top of the range must land on the last positive slot, not the empty one.
    assert tree.find(np.array([np.nextafter(tree.total, 0), tree.total])).tolist() == [1, 1]


def check_invariants(buffer: PromptBuffer, live_order: list[int]) -> None:
    entries = list(buffer)
    assert len(buffer) == len(entries) <= buffer.capacity
    assert [entry.id for entry in entries] == live_order  # eviction removed exactly the oldest
    assert len({entry.id for entry in entries}) == len(entries)
    assert buffer.total_info == pytest.approx(sum(entry.info for entry in entries), rel=1e-12, abs=1e-12)
    # Every live slot holds its entry's info; every free slot holds 0 in both trees.
    info_leaves = buffer._info_tree.leaves(np.arange(buffer.capacity))
    live_leaves = buffer._live_tree.leaves(np.arange(buffer.capacity))
    expected_info = np.zeros(buffer.capacity)
    for entry in entries:
        expected_info[buffer._slot_of[entry.id]] = entry.info
    assert np.array_equal(info_leaves, expected_info)
    assert np.array_equal(live_leaves, (buffer._id_at_slot >= 0).astype(float))


@pytest.mark.parametrize("seed", range(12))
def test_random_operation_sequences_keep_invariants(seed):
    rng = random.Random(seed)
    capacity = rng.choice([1, 2, 5, 16, 33])
    buffer = PromptBuffer(capacity=capacity, seed=seed)
    live_order: list[int] = []
    popped: set[int] = set()
    next_id = 0
    for step in range(150):
        op = rng.choice(["push", "push", "sample", "sample", "pop", "pop_trained", "update", "mark"])
        if op == "push":
            infos = [rng.choice([0.0, 0.0, 0.5, 1.0, 3.0, 1e6]) for _ in range(rng.randint(0, capacity + 3))]
            added = buffer.push(items(infos), step=step)
            live_order += range(next_id, next_id + len(infos))
            next_id += len(infos)
            live_order = live_order[-capacity:]
            assert [entry.id for entry in added] == [i for i in live_order if i >= next_id - len(infos)]
            assert all(entry.age == step for entry in added)
        elif op == "sample":
            k = rng.randint(0, len(buffer))
            trees_before = buffer._info_tree.nodes.copy(), buffer._live_tree.nodes.copy()
            drawn = [entry.id for entry in buffer.sample(k)]
            # Drawing zeroes slots between rounds; afterwards both trees are back bit for bit.
            assert np.array_equal(buffer._info_tree.nodes, trees_before[0])
            assert np.array_equal(buffer._live_tree.nodes, trees_before[1])
            assert len(drawn) == k == len(set(drawn))
            assert set(drawn) <= set(live_order) and not set(drawn) & popped
            positive = {i for i in live_order if buffer.get(i).info > 0}
            assert set(drawn) >= positive or positive >= set(drawn)  # positives are drawn before zeros
        elif op == "pop" and live_order:
            ids = rng.sample(live_order, rng.randint(1, len(live_order)))
            assert {entry.id for entry in buffer.pop(ids)} == set(ids)
            popped |= set(ids)
            live_order = [i for i in live_order if i not in popped]
        elif op == "pop_trained":
            trained = [entry.id for entry in buffer if entry.times_trained > 0]
            assert [entry.id for entry in buffer.pop_trained()] == trained
            popped |= set(trained)
            live_order = [i for i in live_order if i not in popped]
        elif op == "update" and live_order:
            ids = rng.sample(live_order, rng.randint(1, len(live_order)))
            buffer.update_info(ids, [rng.choice([0.0, 2.0, 0.25]) for _ in ids])
        elif op == "mark" and live_order:
            buffer.mark_trained(rng.sample(live_order, rng.randint(1, len(live_order))))
        check_invariants(buffer, live_order)


def test_sampling_without_replacement_matches_sequential_probabilities():
    # P(first=i, second=j) = w_i / W * w_j / (W - w_i): checks the vectorised rounds are exact.
    weights = [1.0, 2.0, 3.0, 4.0]
    buffer = PromptBuffer(capacity=4, seed=5)
    buffer.push(items(weights), step=0)
    draws = 12000
    counts: dict[tuple[int, int], int] = {}
    for _ in range(draws):
        first, second = (entry.id for entry in buffer.sample(2))
        counts[first, second] = counts.get((first, second), 0) + 1
    total = sum(weights)
    pairs = [(i, j) for i in range(4) for j in range(4) if i != j]
    expected = np.array([draws * weights[i] / total * weights[j] / (total - weights[i]) for i, j in pairs])
    observed = np.array([counts.get(pair, 0) for pair in pairs])
    assert ((observed - expected) ** 2 / expected).sum() < CHI2_CRITICAL_999[11]


def test_all_zero_info_samples_uniformly_and_positives_first():
    buffer = PromptBuffer(capacity=4, seed=6)
    buffer.push(items([0.0, 0.0, 0.0, 0.0]), step=0)
    counts = np.zeros(4)
    for _ in range(4000):
        counts[buffer.sample(1)[0].id] += 1
    assert ((counts - 1000) ** 2 / 1000).sum() < CHI2_CRITICAL_999[3]

    buffer.update_info([2], [5.0])
    for _ in range(20):
        drawn = [entry.id for entry in buffer.sample(3)]
        assert drawn[0] == 2 and len(set(drawn)) == 3


def test_update_info_steers_sampling():
    buffer = PromptBuffer(capacity=10, seed=7)
    buffer.push(items([1.0] * 10), step=0)
    buffer.update_info(range(10), [0.0] * 9 + [2.0])
    assert buffer.total_info == 2.0
    assert {buffer.sample(1)[0].id for _ in range(20)} == {9}
    with pytest.raises(ValueError, match="finite and >= 0"):
        buffer.update_info([0], [float("nan")])
    with pytest.raises(ValueError, match="2 ids but 1 values"):
        buffer.update_info([0, 1], [1.0])
    with pytest.raises(KeyError, match="no entry with id 99"):
        buffer.update_info([99], [1.0])


def test_push_validates_everything_before_changing_anything():
    buffer = PromptBuffer(capacity=4)
    buffer.push(items([1.0]), step=0)
    for bad, message in [
        ({"text": "x"}, "needs an 'info'"),
        ({"text": "x", "info": -1.0}, "finite and >= 0"),
        ({"text": 3, "info": 1.0}, "str 'text'"),
        ({"text": "x", "info": 1.0, "parent_id": 42}, "parent_id 42 not in the buffer needs a 'depth'"),
    ]:
        with pytest.raises(ValueError, match=message):
            buffer.push([{"text": "fine", "info": 1.0}, bad], step=1)
        assert len(buffer) == 1 and buffer.next_id == 1


def test_lineage_fields():
    buffer = PromptBuffer(capacity=8)
    (root,) = buffer.push([{"text": "seed child", "info": 1.0, "depth": 1, "method": "task"}], step=3)
    (child,) = buffer.push([{"text": "grandchild", "info": 0.5, "parent_id": root.id, "label": {"a": 1}}], step=4)
    assert (root.depth, root.parent_id, root.age, root.method) == (1, None, 3, "task")
    assert (child.depth, child.parent_id, child.age, child.label) == (2, root.id, 4, {"a": 1})
    assert buffer.get(child.id) is child and child.id in buffer
    assert buffer.push([{"text": "plain", "info": 0.0}], step=5)[0].depth == 0


def test_sample_and_pop_errors():
    buffer = PromptBuffer(capacity=3)
    buffer.push(items([1.0, 2.0]), step=0)
    assert buffer.sample(0) == []
    with pytest.raises(ValueError, match="cannot sample 3 entries from a buffer of 2"):
        buffer.sample(3)
    with pytest.raises(KeyError, match="no entry with id 7"):
        buffer.pop([0, 7])
    assert len(buffer) == 2  # the failed pop removed nothing
    with pytest.raises(KeyError):
        buffer.mark_trained([7])
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        PromptBuffer(capacity=0)


def test_push_larger_than_capacity_keeps_newest():
    buffer = PromptBuffer(capacity=3)
    added = buffer.push(items(range(5)), step=0)
    assert [entry.id for entry in added] == [2, 3, 4] == [entry.id for entry in buffer]
    assert buffer.num_evicted == 2 and buffer.has_filled


def build_used_buffer(seed: int) -> PromptBuffer:
    rng = random.Random(seed)
    buffer = PromptBuffer(capacity=20, seed=seed)
    for step in range(15):
        buffer.push(
            [{"text": f"s{step}-{i}", "info": rng.choice([0.0, 0.3, 2.0]), "label": [i], "metadata": {"k": i}}
             for i in range(rng.randint(1, 6))],
            step=step,
        )
        if len(buffer) > 4:
            drawn = buffer.sample(3)
            buffer.mark_trained([entry.id for entry in drawn[:2]])
            if step % 3 == 0:
                buffer.pop_trained()
    return buffer


def test_state_round_trip_is_exact(tmp_path):
    original = build_used_buffer(seed=11)
    state = json.loads(json.dumps(original.state_dict()))
    assert state["version"] == 1
    restored = PromptBuffer(capacity=20, seed=999)
    restored.load_state_dict(state)

    assert [vars_of(e) for e in restored] == [vars_of(e) for e in original]
    assert np.array_equal(restored._info_tree.nodes, original._info_tree.nodes)
    assert np.array_equal(restored._live_tree.nodes, original._live_tree.nodes)
    assert restored.state_dict() == state
    for _ in range(20):
        assert [e.id for e in restored.sample(4)] == [e.id for e in original.sample(4)]
    new = [{"text": "after", "info": 1.0}] * 5
    assert [e.id for e in restored.push(new, step=99)] == [e.id for e in original.push(new, step=99)]
    assert restored.state_dict() == original.state_dict()

    path = tmp_path / "buffer.jsonl"
    original.to_jsonl(path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [row["id"] for row in rows] == [e.id for e in original]
    assert set(rows[0]) == {"id", "text", "info", "age", "label", "metadata", "times_trained", "parent_id",
                            "depth", "method"}


def vars_of(entry):
    return {name: getattr(entry, name) for name in entry.__slots__}


def test_load_state_rejects_other_versions_and_capacities():
    state = PromptBuffer(capacity=5).state_dict()
    with pytest.raises(ValueError, match="version 2; this code reads version 1"):
        PromptBuffer(capacity=5).load_state_dict({**state, "version": 2})
    with pytest.raises(ValueError, match="version None"):
        PromptBuffer(capacity=5).load_state_dict({"entries": []})
    with pytest.raises(ValueError, match="capacity 5, this buffer 6"):
        PromptBuffer(capacity=6).load_state_dict(state)


def test_same_seed_same_draws():
    a, b = build_used_buffer(seed=3), build_used_buffer(seed=3)
    assert [e.id for e in a.sample(5)] == [e.id for e in b.sample(5)]


# ---- online schedule ----


def test_plan_batch_per_phase():
    buffer = PromptBuffer(capacity=10)
    schedule = OnlineSchedule(buffer)
    assert schedule.phase(seeds_left=100) == "warmup"
    assert schedule.plan_batch(8, seeds_left=100) == (0, 8)
    buffer.push(items([1.0] * 6), step=0)
    assert schedule.plan_batch(8, seeds_left=3) == (5, 3)  # last seeds, topped up from the buffer
    buffer.push(items([1.0] * 4), step=1)
    assert schedule.phase(seeds_left=100) == "mixup"
    assert schedule.plan_batch(8, seeds_left=100) == (4, 4)
    assert schedule.plan_batch(5, seeds_left=100) == (3, 2)  # round(2.5) goes up
    assert schedule.plan_batch(8, seeds_left=2) == (6, 2)
    buffer.pop(range(7))
    assert schedule.phase(seeds_left=100) == "mixup"  # sticky once the buffer has been full
    assert schedule.plan_batch(8, seeds_left=100) == (3, 5)  # buffer short: seeds fill in
    assert schedule.phase(seeds_left=0) == "bootstrap"
    assert schedule.plan_batch(8, seeds_left=0) == (3, 0)
    buffer.pop_trained()
    buffer.pop([7, 8, 9])
    assert schedule.plan_batch(8, seeds_left=0) == (0, 0)


def test_select_parents_and_children_per_parent():
    schedule = OnlineSchedule(PromptBuffer(capacity=4))
    infos = [0.1, 0.9, 0.5, 0.9, 0.2, 0.0, 0.3, 0.7]
    assert schedule.select_parents(infos) == [1, 3, 7, 2]
    assert schedule.select_parents([0.4, 0.2, 0.3]) == [0, 2]  # 1.5 rounds up to 2
    assert schedule.select_parents([]) == []
    assert [schedule.children_per_parent(p) for p in ("warmup", "mixup", "bootstrap")] == [4, 4, 2]
    with pytest.raises(ValueError, match="unknown phase 'cooldown'"):
        schedule.children_per_parent("cooldown")
    with pytest.raises(ValueError, match="top_frac"):
        OnlineSchedule(PromptBuffer(capacity=4), top_frac=0.0)


def test_online_loop_phase_transitions():
    # capacity 32, batch 8: warm-up pushes 4 parents x 4 children = 16 per step, so the buffer is
    # full after 2 steps; mix-up uses 4 seeds per step, so the remaining 24 seeds last 6 steps.
    buffer = PromptBuffer(capacity=32, seed=0)
    schedule = OnlineSchedule(buffer)
    rng = random.Random(0)
    seeds = [f"seed {i}" for i in range(40)]
    phases, sizes = [], []
    for step in range(12):
        seeds_left = len(seeds)
        phase = schedule.phase(seeds_left)
        n_buffer, n_seeds = schedule.plan_batch(8, seeds_left)
        drawn = buffer.sample(n_buffer)
        batch = [(entry.text, entry.id) for entry in drawn] + [(seeds.pop(0), None) for _ in range(n_seeds)]
        infos = [rng.random() for _ in batch]
        buffer.update_info([entry.id for entry in drawn], infos[:n_buffer])
        parents = schedule.select_parents(infos)
        children = [
            {"text": f"{batch[i][0]} / child {c}", "info": infos[i], "parent_id": batch[i][1],
             "depth": 1 if batch[i][1] is None else buffer.get(batch[i][1]).depth + 1}
            for i in parents for c in range(schedule.children_per_parent(phase))
        ]
        buffer.mark_trained([entry.id for entry in drawn])
        buffer.pop_trained()
        buffer.push(children, step=step)
        phases.append(phase)
        sizes.append(len(buffer))
    assert phases == ["warmup"] * 2 + ["mixup"] * 6 + ["bootstrap"] * 4
    assert sizes[:2] == [16, 32] and all(size == 32 for size in sizes[2:8])
    assert max(entry.depth for entry in buffer) >= 2
