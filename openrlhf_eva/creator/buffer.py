"""The prioritized generative prompt buffer of online eva, and its warm-up / mix-up / bootstrap schedule.

``PromptBuffer`` holds evolved prompts with their informativeness ``info``. ``sample(k)`` draws k
distinct entries, each successive draw proportional to ``info`` among those not yet drawn, in
O(k log N): weights live in a sum-tree over a fixed array of ``capacity`` slots, and a freed slot
simply gets weight 0. Draws are vectorised: a round draws the missing m entries with replacement
by descending the tree for m uniforms at once and keeps the first occurrence of each slot (this is
exactly sequential sampling without replacement, because discarding repeats is rejection sampling
from the remaining weights). Only if repeats leave fewer than k does the next round run, after the
drawn slots are zeroed; the sums on their paths are saved first and written back at the end, so
sampling leaves the trees bit-identical.

All-zero weights: a second sum-tree holds 1 for every live slot. When the info tree runs dry
(every entry has info 0, or fewer than k entries have info > 0), the remaining draws come uniformly
from the live entries not yet drawn. This keeps the weights exact (no epsilon floor that would
distort small infos) at the cost of one more tree (16 bytes per slot).

Online eva, one training step (``OnlineSchedule`` does the pure bookkeeping)::

    phase = schedule.phase(seeds_left)
    n_buffer, n_seeds = schedule.plan_batch(batch_size, seeds_left)
    batch = buffer.sample(n_buffer) + next n_seeds seed prompts
    ... roll out, score, compute info per prompt ...
    buffer.update_info(ids of the buffer prompts, their fresh info)
    parents = [batch[i] for i in schedule.select_parents(infos)]
    children = evolver.evolve(parents, schedule.children_per_parent(phase), rng)
    buffer.mark_trained(ids of the buffer prompts); buffer.pop_trained()
    buffer.push(children with info = their parent's info, step)   # evicts the oldest when full

Entries are returned by reference; change them only through ``update_info`` / ``mark_trained`` so
the sum-tree stays in sync.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from .data import write_jsonl
from .sample import sample_informative

STATE_VERSION = 1
PHASES = ("warmup", "mixup", "bootstrap")


@dataclass(slots=True)
class BufferEntry:
    """One prompt in the buffer. ``age`` is the step at which it was pushed; ``depth`` counts evolutions
    from a seed (a child of a seed prompt has depth 1 and, as seeds live outside the buffer, usually
    ``parent_id=None``)."""

    id: int
    text: str
    info: float
    age: int
    label: Any = None
    metadata: dict = field(default_factory=dict)
    times_trained: int = 0
    parent_id: int | None = None
    depth: int = 0
    method: str | None = None


class SumTree:
    """Binary sum-tree in one flat float64 array: root at 1, node i has children 2i and 2i+1, and the
    leaves (one per slot) sit at ``size .. 2*size-1``. Every parent is recomputed as the sum of its
    two children, never incremented, so the same leaves always give bit-identical sums."""

    def __init__(self, num_slots: int) -> None:
        self.size = 1 << max(0, (num_slots - 1).bit_length())
        self.depth = self.size.bit_length() - 1
        self.nodes = np.zeros(2 * self.size, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.nodes[1])

    def leaves(self, slots: np.ndarray) -> np.ndarray:
        return self.nodes[self.size + slots]

    def update(self, slots: np.ndarray, values: np.ndarray) -> None:
        """Set the weights of ``slots`` (distinct) and refresh their ancestors."""
        if len(slots) == 0:
            return
        self.nodes[self.size + slots] = values
        if len(slots) * 16 > self.size:
            # Many slots: rebuilding every level is O(size) numpy work, cheaper than many paths.
            level = self.size // 2
            while level >= 1:
                self.nodes[level : 2 * level] = (
                    self.nodes[2 * level : 4 * level : 2] + self.nodes[2 * level + 1 : 4 * level : 2]
                )
                level //= 2
            return
        # Few slots: walk their ancestors up level by level. Shared ancestors appear several times,
        # which is harmless: each copy is assigned the same freshly computed sum.
        nodes = (self.size + slots) // 2
        for _ in range(self.depth):
            self.nodes[nodes] = self.nodes[2 * nodes] + self.nodes[2 * nodes + 1]
            nodes //= 2

    def find(self, targets: np.ndarray) -> np.ndarray:
        """For each target in [0, total), the slot whose cumulative-weight interval contains it."""
        nodes = np.ones(len(targets), dtype=np.int64)
        for _ in range(self.depth):
            left = 2 * nodes
            left_sum = self.nodes[left]
            # Rounding can leave a target just past a subtree's sum; never step into a zero subtree,
            # so a zero-weight (free or already drawn) slot is never returned.
            go_right = (targets >= left_sum) & (self.nodes[left + 1] > 0)
            targets = np.where(go_right, targets - left_sum, targets)
            nodes = left + go_right
        return nodes - self.size


class PromptBuffer:
    """Fixed-capacity prompt buffer with info-weighted sampling; see the module docstring."""

    def __init__(self, capacity: int = 3200, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.next_id = 0
        self.has_filled = False  # sticky: the schedule stays in mix-up once the buffer has been full
        self.num_evicted = 0
        self._rng = np.random.default_rng(seed)
        self._entries: OrderedDict[int, BufferEntry] = OrderedDict()  # oldest first
        self._slot_of: dict[int, int] = {}
        self._id_at_slot = np.full(capacity, -1, dtype=np.int64)
        self._free_slots = list(range(capacity - 1, -1, -1))  # pop() hands out slot 0 first
        self._trained: set[int] = set()
        self._info_tree = SumTree(capacity)
        self._live_tree = SumTree(capacity)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[BufferEntry]:
        """Entries from oldest to newest (a snapshot: the buffer may be changed while iterating)."""
        return iter(list(self._entries.values()))

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._entries

    @property
    def total_info(self) -> float:
        """Sum of the live entries' info (the sum-tree's root)."""
        return self._info_tree.total

    def get(self, entry_id: int) -> BufferEntry:
        """The entry with id ``entry_id``; KeyError if it is not (or no longer) in the buffer."""
        if entry_id not in self._entries:
            raise KeyError(f"buffer has no entry with id {entry_id!r} (evicted, popped or never pushed)")
        return self._entries[entry_id]

    def push(self, items: Iterable[Mapping[str, Any]], step: int) -> list[BufferEntry]:
        """Add prompts, evicting the oldest entries (smallest id) beyond capacity.

        Each item is a mapping with ``text`` (str) and ``info`` (finite, >= 0), and optionally
        ``label``, ``metadata``, ``parent_id``, ``depth`` (default: 0 without a parent, else the
        parent's depth + 1 if the parent is in the buffer) and ``method``. ``step`` becomes the
        entries' ``age``. All items are validated before the buffer changes. Returns the new
        entries; a push larger than capacity keeps only its last ``capacity`` items (the earlier
        ones get ids and count as evicted, since they would be the oldest).
        """
        rows = []
        for item in items:
            if not isinstance(item, Mapping):
                raise TypeError(f"buffer items are mappings with 'text' and 'info', got {type(item).__name__}")
            if not isinstance(item.get("text"), str):
                raise ValueError(f"buffer item needs a str 'text', got {item.get('text')!r}")
            if "info" not in item:
                raise ValueError("buffer item needs an 'info' (e.g. its parent's info for a new child)")
            info = float(item["info"])
            if not math.isfinite(info) or info < 0:
                raise ValueError(f"buffer info must be finite and >= 0, got {item['info']!r}")
            parent_id, depth = item.get("parent_id"), item.get("depth")
            if depth is None:
                if parent_id is not None and parent_id not in self._entries:
                    raise ValueError(f"buffer item with parent_id {parent_id} not in the buffer needs a 'depth'")
                depth = 0 if parent_id is None else self._entries[parent_id].depth + 1
            rows.append((item["text"], info, item.get("label"), dict(item.get("metadata") or {}),
                         parent_id, int(depth), item.get("method")))

        num_skipped = max(0, len(rows) - self.capacity)
        num_to_evict = max(0, len(self._entries) + len(rows) - num_skipped - self.capacity)
        self.pop(list(itertools.islice(self._entries, num_to_evict)))  # oldest first, O(evicted)
        self.num_evicted += num_to_evict + num_skipped
        self.next_id += num_skipped

        added = []
        for text, info, label, metadata, parent_id, depth, method in rows[num_skipped:]:
            slot = self._free_slots.pop()
            entry = BufferEntry(id=self.next_id, text=text, info=info, age=step, label=label,
                                metadata=metadata, parent_id=parent_id, depth=depth, method=method)
            self.next_id += 1
            self._entries[entry.id] = entry
            self._slot_of[entry.id] = slot
            self._id_at_slot[slot] = entry.id
            added.append(entry)
        if len(self._entries) == self.capacity:
            self.has_filled = True
        slots = np.array([self._slot_of[entry.id] for entry in added], dtype=np.int64)
        self._info_tree.update(slots, np.array([entry.info for entry in added], dtype=np.float64))
        self._live_tree.update(slots, np.ones(len(slots)))
        return added

    def sample(self, k: int) -> list[BufferEntry]:
        """Draw ``k`` distinct entries, successively proportional to info (uniform once info runs out)."""
        if not 0 <= k <= len(self._entries):
            raise ValueError(f"cannot sample {k} entries from a buffer of {len(self._entries)}")
        chosen: list[int] = []
        saved: list[tuple[SumTree, np.ndarray, np.ndarray]] = []  # (tree, nodes, their old sums)
        for tree in (self._info_tree, self._live_tree):
            while len(chosen) < k and tree.total > 0:
                slots = tree.find(self._rng.random(k - len(chosen)) * tree.total)
                _, first_positions = np.unique(slots, return_index=True)
                new_slots = slots[np.sort(first_positions)]
                chosen.extend(new_slots.tolist())
                if len(chosen) < k:
                    # Another round follows: take the drawn slots out of both trees, saving every
                    # node on their paths so that the trees can be put back bit for bit.
                    for each_tree in (self._info_tree, self._live_tree):
                        leaves = each_tree.size + new_slots
                        path = (leaves[:, None] >> np.arange(each_tree.depth + 1)).ravel()
                        saved.append((each_tree, path, each_tree.nodes[path]))
                        each_tree.update(new_slots, np.zeros(len(new_slots)))
        for tree, path, old_sums in reversed(saved):
            tree.nodes[path] = old_sums
        return [self._entries[int(entry_id)] for entry_id in self._id_at_slot[chosen]]

    def mark_trained(self, ids: Iterable[int]) -> None:
        """Count one training pass for each id (all ids are checked first)."""
        entries = [self.get(entry_id) for entry_id in ids]
        for entry in entries:
            entry.times_trained += 1
            self._trained.add(entry.id)

    def pop(self, ids: Iterable[int]) -> list[BufferEntry]:
        """Remove and return the entries with these ids (all ids are checked first)."""
        entries = [self.get(entry_id) for entry_id in dict.fromkeys(ids)]
        slots = np.array([self._slot_of.pop(entry.id) for entry in entries], dtype=np.int64)
        for entry in entries:
            del self._entries[entry.id]
            self._trained.discard(entry.id)
        self._id_at_slot[slots] = -1
        self._free_slots.extend(slots.tolist())
        self._info_tree.update(slots, np.zeros(len(slots)))
        self._live_tree.update(slots, np.zeros(len(slots)))
        return entries

    def pop_trained(self) -> list[BufferEntry]:
        """Remove and return every entry trained at least once, in id order."""
        return self.pop(sorted(self._trained))

    def update_info(self, ids: Iterable[int], values: Iterable[float]) -> None:
        """Set new info values (finite, >= 0), e.g. from the solver's fresh rollouts."""
        ids, values = list(ids), [float(value) for value in values]
        bad = [value for value in values if not (math.isfinite(value) and value >= 0)]
        if bad:
            raise ValueError(f"buffer info must be finite and >= 0, got {bad[:5]}")
        if len(ids) != len(values):
            raise ValueError(f"update_info got {len(ids)} ids but {len(values)} values")
        new_info = {entry_id: value for entry_id, value in zip(ids, values)}  # last value wins
        entries = [self.get(entry_id) for entry_id in new_info]
        for entry in entries:
            entry.info = new_info[entry.id]
        slots = np.array([self._slot_of[entry.id] for entry in entries], dtype=np.int64)
        self._info_tree.update(slots, np.array([entry.info for entry in entries], dtype=np.float64))

    def state_dict(self) -> dict:
        """A snapshot of plain dicts, lists, str, int and float (JSON-serialisable when the labels and
        metadata are) from which ``load_state_dict`` restores the buffer exactly."""
        entries = []
        for entry in self._entries.values():
            row = dataclasses.asdict(entry)
            row["slot"] = self._slot_of[entry.id]
            entries.append(row)
        return {
            "version": STATE_VERSION,
            "capacity": self.capacity,
            "next_id": self.next_id,
            "has_filled": self.has_filled,
            "num_evicted": self.num_evicted,
            "free_slots": list(self._free_slots),
            "rng_state": self._rng.bit_generator.state,
            "entries": entries,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ``state_dict()``; the next draws match the saved buffer's exactly."""
        version = state.get("version") if isinstance(state, Mapping) else None
        if version != STATE_VERSION:
            raise ValueError(
                f"prompt buffer state has version {version!r}; this code reads version {STATE_VERSION}"
            )
        if state["capacity"] != self.capacity:
            raise ValueError(
                f"prompt buffer state has capacity {state['capacity']}, this buffer {self.capacity}"
            )
        fresh = PromptBuffer(self.capacity)
        for row in state["entries"]:
            row = dict(row)
            slot = row.pop("slot")
            entry = BufferEntry(**row)
            fresh._entries[entry.id] = entry
            fresh._slot_of[entry.id] = slot
            fresh._id_at_slot[slot] = entry.id
            if entry.times_trained > 0:
                fresh._trained.add(entry.id)
        fresh.next_id = state["next_id"]
        fresh.has_filled = state["has_filled"]
        fresh.num_evicted = state["num_evicted"]
        fresh._free_slots = list(state["free_slots"])
        fresh._rng.bit_generator.state = state["rng_state"]
        all_slots = np.arange(self.capacity)
        info = np.zeros(self.capacity)
        for entry_id, entry in fresh._entries.items():
            info[fresh._slot_of[entry_id]] = entry.info
        fresh._info_tree.update(all_slots, info)
        fresh._live_tree.update(all_slots, (fresh._id_at_slot >= 0).astype(np.float64))
        self.__dict__.update(fresh.__dict__)

    def to_jsonl(self, path: str) -> None:
        """Write every entry (oldest first) as one JSON object per line, atomically."""
        write_jsonl(path, (dataclasses.asdict(entry) for entry in self._entries.values()))


@dataclass
class OnlineSchedule:
    """Phase bookkeeping of online eva for one ``PromptBuffer`` (defaults from the paper).

    - ``warmup`` (seeds remain, buffer never yet full): batches come from the seeds; evolve the top
      ``top_frac`` of each batch into ``n_new`` children each and push only the children.
    - ``mixup`` (seeds remain, buffer has been full): ``ratio_evol`` of each batch from the buffer
      (info-weighted), the rest from the seeds; keep evolving; pop trained entries, and pushes evict
      the oldest, so the buffer stays full.
    - ``bootstrap`` (seeds exhausted): batches come from the buffer only, ``n_new_bootstrap``
      children per selected prompt.
    """

    buffer: PromptBuffer
    top_frac: float = 0.5
    n_new: int = 4
    n_new_bootstrap: int = 2
    ratio_evol: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.top_frac <= 1:
            raise ValueError(f"top_frac must be in (0, 1], got {self.top_frac}")
        if not 0 <= self.ratio_evol <= 1:
            raise ValueError(f"ratio_evol must be in [0, 1], got {self.ratio_evol}")
        if self.n_new < 1 or self.n_new_bootstrap < 1:
            raise ValueError(f"n_new and n_new_bootstrap must be >= 1, got {self.n_new}, {self.n_new_bootstrap}")

    def phase(self, seeds_left: int) -> str:
        """``"warmup"``, ``"mixup"`` or ``"bootstrap"`` given how many seed prompts are left."""
        if seeds_left <= 0:
            return "bootstrap"
        return "mixup" if self.buffer.has_filled else "warmup"

    def plan_batch(self, batch_size: int, seeds_left: int) -> tuple[int, int]:
        """``(n_from_buffer, n_from_seeds)`` for the next batch.

        The phase fixes the buffer's share (0, ``round(ratio_evol * batch_size)`` rounding halves up,
        or all); a side that runs short is topped up from the other, so the batch is full while
        prompts last. ``(0, 0)`` means nothing is left to train on.
        """
        phase = self.phase(seeds_left)
        mixup_share = math.floor(self.ratio_evol * batch_size + 0.5)
        target = {"warmup": 0, "mixup": mixup_share, "bootstrap": batch_size}[phase]
        n_buffer = min(target, len(self.buffer))
        n_seeds = min(batch_size - n_buffer, max(seeds_left, 0))
        n_buffer = min(batch_size - n_seeds, len(self.buffer))
        return n_buffer, n_seeds

    def select_parents(self, infos: Any, k: int | None = None) -> list[int]:
        """Indices of the ``top_frac`` (or ``k``) most informative prompts of a batch, most informative
        first (rounding halves up; ties go to the lower index)."""
        num_prompts = len(infos)
        k = min(num_prompts, math.floor(self.top_frac * num_prompts + 0.5) if k is None else k)
        return sample_informative(infos, k, mode="greedy").tolist()

    def children_per_parent(self, phase: str) -> int:
        """Children to request per selected parent in ``phase``."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")
        return self.n_new_bootstrap if phase == "bootstrap" else self.n_new
