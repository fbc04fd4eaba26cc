"""Online eva's prompt source: seed prompts plus the prioritized generative buffer, batch by batch.

A trainer asks ``next_batch()`` for the prompts of its next rollout batch, samples n responses for
each, scores them, and hands the reward matrix back to ``observe(rewards, step)``. ``observe``
computes each prompt's informativeness from those rewards (no extra sampling), refreshes the info
of the buffer prompts in the batch, evolves the batch's most informative prompts, filters the
children, pops the trained buffer prompts and pushes the children (``PromptBuffer`` evicts the
oldest beyond capacity). ``OnlineSchedule`` decides the phase:

    warmup     batches from the seeds; children fill the buffer until it has been full once
    mixup      ratio_evol of each batch from the buffer (info-weighted), the rest from the seeds
    bootstrap  seeds used up: batches from the buffer only, n_new_bootstrap children per parent

Without an evolver the source is plain OpenRLHF behaviour: shuffled seeds, episode after episode.

Curriculum control (not in the paper; its "known limits" name both risks). Measured at 16x budget
on a task family we never tuned on: once the seeds are used up the buffer drifts away from them
and the solver forgets them (in-distribution reward fell from 0.61 to 0.35). Two guards, on by default:

    seed_replay        after the first pass over the seeds (bootstrap), this share of every batch
                       still comes from the seeds (0: the paper's buffer-only bootstrap)
    seed_replay_order  which seeds that share replays: ``shuffled``, a fresh shuffled pass each time
                       (every seed equally often), or ``info``, drawn by ``sample_mode`` over each
                       seed's informativeness when it was last served, as the buffer is drawn. A metric
                       whose infos all tie (``uniform``) ranks nothing: shuffled passes then
    frontier_quantile  a prompt is evolved only if its rewards do not all tie (info 0: too easy or too
                       hard, nothing to learn from) and its mean reward is at least this quantile of
                       the mean rewards of the seed prompts in the last ``frontier_window`` batches.
                       Children of prompts the solver handles worse than its weaker seeds would lead
                       the buffer past what it can learn; as the solver improves the bar lets deeper
                       prompts through. Scale-free: any reward, any range (0: no bar)

Both are logged every step (eva/seed_pass, eva/batch_from_seeds, eva/frontier_threshold,
eva/parents_tied, eva/parents_below_frontier, eva/seed_info_mean).

Prompt budget. ``total_prompts`` counts prompts served (seeds and buffer draws alike; the paper's
"1x" is one seed set's worth). It fixes ``num_batches = total_prompts // batch_size`` before
training starts, so a trainer can size its LR schedule exactly although the prompt set grows.
A batch is always full; if the prompts run out first (an evolver that produces nothing leaves an
empty buffer after the seeds), ``next_batch`` returns [] and ``exhausted`` says why.

Many ranks, one buffer. Every rank builds the same source (same seeds, same seed) and calls it with
the same global rewards, so every rank draws the same batches and holds the same buffer. Evolving
is split, not repeated: rank r evolves its contiguous slice of the parents, ``all_gather_object``
brings every rank all children in rank order, and every rank filters and pushes them identically.
``fingerprint()`` hashes the state, for checking that ranks agree.

Bad input is counted, not fatal: rows with a non-finite reward (info from the finite ones), rows
whose rewards all tie (info 0), an evolver that returns nothing or raises. An evolver that raises
on every rank for ``MAX_EVOLVE_FAILURES`` steps in a row is broken, and ``EvolveFailure`` says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .buffer import PHASES, OnlineSchedule, PromptBuffer
from .estimate import informativeness
from .evolve import Child, Evolver, Parent
from .filters import apply_filters, normalize_text
from .registry import SAMPLERS
from .sample import sample_informative

STATE_VERSION = 3  # 2: seed replay and the frontier window; 3: the seeds' last infos
MAX_EVOLVE_FAILURES = 3
SEED_REPLAY_ORDERS = ("shuffled", "info")


class EvolveFailure(RuntimeError):
    """The evolver raised on every rank for several steps in a row."""


@dataclass
class BatchPrompt:
    """One prompt of a batch. ``buffer_id`` is None for a seed prompt."""

    prompt: str
    label: Any = None
    metadata: dict = field(default_factory=dict)
    buffer_id: int | None = None
    depth: int = 0
    seed_index: int | None = None  # position in the seeds, for a seed prompt

    @property
    def origin(self) -> str:
        return "seed" if self.buffer_id is None else "buffer"


def _single_process_gather(obj: Any) -> list[Any]:
    return [obj]


class OnlinePromptSource:
    """Seeds + ``PromptBuffer`` + ``OnlineSchedule`` + an evolver; see the module docstring.

    ``seeds`` are dicts with ``prompt`` and optionally ``label`` and ``metadata`` (what
    ``read_prompts`` returns). ``evolver=None`` turns eva off. ``rank``/``world_size``/
    ``all_gather_object`` describe the process group (``torch.distributed.all_gather_object``
    wrapped to return the list); the defaults are one process.
    """

    def __init__(
        self,
        seeds: Sequence[dict],
        batch_size: int,
        evolver: Evolver | None = None,
        *,
        total_prompts: int | None = None,
        num_episodes: int = 1,
        capacity: int = 3200,
        top_frac: float = 0.5,
        n_new: int = 4,
        n_new_bootstrap: int = 2,
        ratio_evol: float = 0.5,
        metric: str = "A_avg",
        sample_mode: str = "weighted",
        filters: Sequence[str] = ("empty", "unchanged", "duplicate"),
        seed_replay: float = 0.5,
        seed_replay_order: str = "shuffled",
        frontier_quantile: float = 0.25,
        frontier_window: int = 8,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        all_gather_object: Callable[[Any], list[Any]] = _single_process_gather,
    ) -> None:
        if not seeds:
            raise ValueError("the prompt source needs at least one seed prompt")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.seeds = [
            {"prompt": row["prompt"], "label": row.get("label"), "metadata": dict(row.get("metadata") or {})}
            for row in seeds
        ]
        self.batch_size = batch_size
        self.evolver = evolver
        if not 0 <= seed_replay < 1:
            raise ValueError(f"seed_replay must be in [0, 1), got {seed_replay}")
        if not 0 <= frontier_quantile <= 1:
            raise ValueError(f"frontier_quantile must be in [0, 1], got {frontier_quantile}")
        if frontier_window < 1:
            raise ValueError(f"frontier_window must be >= 1, got {frontier_window}")
        if seed_replay_order not in SEED_REPLAY_ORDERS:
            raise ValueError(f"seed_replay_order must be one of {', '.join(SEED_REPLAY_ORDERS)}, "
                             f"got {seed_replay_order!r}")
        self.seed_replay, self.frontier_quantile = seed_replay, frontier_quantile
        self.seed_replay_order = seed_replay_order
        # Each seed's informativeness when it was last served (NaN: not yet), for seed_replay_order "info".
        self._seed_info = np.full(len(self.seeds), np.nan)
        # Mean reward of each seed prompt of the last frontier_window batches: the frontier's yardstick.
        self._seed_means: deque[float] = deque(maxlen=frontier_window * batch_size)
        self.metric = metric
        SAMPLERS.get(sample_mode)  # an unknown name fails now, listing the registered samplers
        self.sample_mode = sample_mode
        self.filters = tuple(filters)
        # The last observe()'s children, accepted and rejected, with their parents: for a trainer's logs.
        self.last_children: list[dict] = []
        self.seed = seed
        self.rank, self.world_size, self.all_gather_object = rank, world_size, all_gather_object
        self.buffer = PromptBuffer(capacity, seed=seed)
        self.schedule = OnlineSchedule(self.buffer, top_frac=top_frac, n_new=n_new,
                                       n_new_bootstrap=n_new_bootstrap, ratio_evol=ratio_evol)
        if total_prompts is None:
            # eva: one pass over the seeds ("1x"); plain: upstream's episodes of full batches.
            per_episode = len(self.seeds) if evolver else len(self.seeds) // batch_size * batch_size
            total_prompts = per_episode * (1 if evolver else num_episodes)
        if total_prompts < batch_size:
            raise ValueError(f"total_prompts {total_prompts} is less than one batch of {batch_size} prompts")
        self.total_prompts = total_prompts
        self.num_batches = total_prompts // batch_size
        self._seed_keys = {normalize_text(row["prompt"]) for row in self.seeds}
        self._seeds_fingerprint = hashlib.sha256(
            json.dumps([row["prompt"] for row in self.seeds]).encode()).hexdigest()[:16]
        # Position in the data; everything below is saved by state_dict().
        self.episode = 0
        self.cursor = 0
        self.batches_served = 0
        self.prompts_served = 0
        self.totals: Counter[str] = Counter()
        self.failed_steps_in_a_row = 0
        self.exhausted = ""
        self._order = self._episode_order(0)
        self._pending: list[BatchPrompt] | None = None
        self._pending_phase = self.phase

    # --- drawing batches ---------------------------------------------------------------------------

    def _episode_order(self, episode: int) -> np.ndarray:
        return np.random.default_rng([self.seed, episode]).permutation(len(self.seeds))

    @property
    def seeds_left(self) -> int:
        return len(self.seeds) - self.cursor

    @property
    def phase(self) -> str:
        if not self.evolver:
            return "off"
        # Replayed seed passes (episode >= 1) do not bring mix-up back: the first pass is over.
        return self.schedule.phase(self.seeds_left if self.episode == 0 else 0)

    def _take_seeds(self, k: int) -> list[BatchPrompt]:
        """The next k seeds of this pass; with eva's seed replay a spent pass continues in a new one."""
        rows = []
        while len(rows) < k:
            if self.seeds_left == 0:
                self.episode += 1
                self.cursor = 0
                self._order = self._episode_order(self.episode)
            take = min(k - len(rows), self.seeds_left)
            rows += [int(i) for i in self._order[self.cursor : self.cursor + take]]
            self.cursor += take
        return [self._seed_prompt(i) for i in rows]

    def _seed_prompt(self, index: int) -> BatchPrompt:
        row = self.seeds[index]
        return BatchPrompt(row["prompt"], row["label"], dict(row["metadata"]), seed_index=index)

    def _replay_seeds(self, k: int) -> list[BatchPrompt]:
        """Bootstrap's seed share: by the seeds' last infos (``seed_replay_order`` "info"), else the next
        shuffled pass. Seeded by the batch index, so a resumed run replays the same seeds."""
        info = self._seed_info
        if (self.seed_replay_order == "shuffled" or k > len(info) or np.isnan(info).any()
                or bool((info == info[0]).all())):
            return self._take_seeds(k)
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.batches_served) * 7 + 3)
        picked = sample_informative(info, k, mode=self.sample_mode, generator=generator)
        return [self._seed_prompt(i) for i in picked.tolist()]

    def next_batch(self, size: int | None = None) -> list[BatchPrompt]:
        """The next ``size`` (default ``batch_size``) prompts, or [] when the budget is spent or
        prompts ran out. A smaller ``size`` is a refill (upstream's dynamic filtering replaces the
        prompts it drops); the budget counts prompts, so refills use it up like any batch."""
        size = self.batch_size if size is None else size
        if self._pending is not None:
            raise RuntimeError("observe() the rewards of the previous batch before drawing the next one")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if self.prompts_served + size > self.total_prompts:
            self.exhausted = f"prompt budget of {self.total_prompts} prompts ({self.num_batches} batches) spent"
            return []
        self._pending_phase = self.phase
        if not self.evolver:
            if self.seeds_left < size:  # like upstream's drop_last: next episode
                self.episode += 1
                self.cursor = 0
                self._order = self._episode_order(self.episode)
            batch = self._take_seeds(size)
        elif self._pending_phase == "bootstrap" and self.seed_replay > 0:
            # Seeds are never used up here: the replay share always fills, the buffer the rest.
            n_buffer = min(len(self.buffer), size - math.floor(self.seed_replay * size + 0.5))
            batch = [BatchPrompt(e.text, e.label, dict(e.metadata), e.id, e.depth)
                     for e in self._draw_from_buffer(n_buffer)]
            batch += self._replay_seeds(size - n_buffer)
        else:
            n_buffer, n_seeds = self.schedule.plan_batch(size, self.seeds_left if self.episode == 0 else 0)
            if n_buffer + n_seeds < size:
                self.exhausted = (f"only {n_buffer + n_seeds} prompts left for a batch of {size} "
                                  f"(seeds left {self.seeds_left}, buffer {len(self.buffer)})")
                return []
            drawn = self._draw_from_buffer(n_buffer)
            batch = [BatchPrompt(e.text, e.label, dict(e.metadata), e.id, e.depth) for e in drawn]
            batch += self._take_seeds(n_seeds)
        self.batches_served += 1
        self.prompts_served += len(batch)
        self._pending = batch
        return batch

    def _draw_from_buffer(self, k: int) -> list:
        """``k`` distinct buffer entries: info-weighted (the paper; the buffer's sum-tree), or another
        sampler over the entries' info (``greedy``: the top k; ``uniform``), seeded by the batch index
        so that a resumed run draws the same prompts."""
        if self.sample_mode == "weighted" or k == 0:
            return self.buffer.sample(k)
        entries = list(self.buffer)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.batches_served)
        picked = sample_informative([e.info for e in entries], k, mode=self.sample_mode, generator=generator)
        return [entries[i] for i in picked.tolist()]

    # --- learning from the batch's rewards ---------------------------------------------------------

    def observe(self, rewards: Any, step: int, responses: Sequence[Sequence[str]] | None = None) -> dict:
        """Update the buffer from the rewards ``[P, n]`` of the last batch (global, in batch order).

        Non-finite rewards mark missing responses. Returns this step's metrics (``eva/...``).
        """
        batch, self._pending = self._pending, None
        self.last_children = []
        if batch is None:
            raise RuntimeError("observe() called without a batch from next_batch()")
        rewards = torch.as_tensor(rewards, dtype=torch.float32)
        if rewards.dim() != 2 or rewards.shape[0] != len(batch):
            raise ValueError(f"rewards must be [{len(batch)}, n], got shape {tuple(rewards.shape)}")
        phase = self._pending_phase
        info = informativeness(rewards, self.metric)
        seed_rows = [i for i, p in enumerate(batch) if p.seed_index is not None]
        self._seed_info[[batch[i].seed_index for i in seed_rows]] = info[seed_rows].double().numpy()
        finite = torch.isfinite(rewards)
        finite_max = rewards.masked_fill(~finite, float("-inf")).amax(dim=1)
        finite_min = rewards.masked_fill(~finite, float("inf")).amin(dim=1)
        metrics: dict[str, Any] = {
            "eva/phase": phase,
            "eva/batch_info_mean": float(info.mean()),
            "eva/batch_info_max": float(info.max()),
            "eva/seed_info_mean": float(info[seed_rows].mean()) if seed_rows else None,
            "eva/batch_from_buffer": sum(p.buffer_id is not None for p in batch),
            "eva/batch_from_seeds": sum(p.buffer_id is None for p in batch),
            "eva/groups_nonfinite": int((~finite).any(dim=1).sum()),
            "eva/groups_all_tied": int((finite.any(dim=1) & (finite_max == finite_min)).sum()),
        }
        if self.evolver:
            metrics.update(self._evolve(batch, info, rewards, responses, phase, step))
        metrics.update({
            "eva/phase_index": PHASES.index(phase) if phase in PHASES else -1,
            "eva/seeds_left": self.seeds_left,
            "eva/seed_pass": self.episode + 1,
            "eva/buffer_size": len(self.buffer),
            "eva/buffer_info_mean": self.buffer.total_info / max(1, len(self.buffer)),
            "eva/buffer_depth_mean": sum(e.depth for e in self.buffer) / max(1, len(self.buffer)),
            "eva/buffer_evicted": self.buffer.num_evicted,
            "eva/prompts_served": self.prompts_served,
        })
        return metrics

    def _evolve(self, batch, info, rewards, responses, phase, step) -> dict:
        buffer_rows = [i for i, p in enumerate(batch) if p.buffer_id is not None]
        self.buffer.update_info([batch[i].buffer_id for i in buffer_rows], [float(info[i]) for i in buffer_rows])
        selected, frontier = self._select_parents(batch, info, rewards)
        parents = [
            Parent(id=batch[i].buffer_id, prompt=batch[i].prompt, label=batch[i].label,
                   metadata=dict(batch[i].metadata), info=float(info[i]), depth=batch[i].depth,
                   responses=list(responses[i]) if responses is not None else None, rewards=rewards[i].tolist())
            for i in selected
        ]
        # This rank's contiguous slice of the parents; its rng depends on (seed, step, rank) only,
        # so a resumed run evolves exactly what the uninterrupted one did.
        per_rank = math.ceil(len(parents) / self.world_size)
        start = min(len(parents), self.rank * per_rank)
        mine = parents[start : start + per_rank]
        rng = random.Random((self.seed * 1_000_003 + step) * 1009 + self.rank)
        started, error, children = time.perf_counter(), None, []
        stats_before = Counter(self.evolver.stats)
        try:
            if mine:
                children = self.evolver.evolve(mine, self.schedule.children_per_parent(phase), rng)
        except Exception as exc:  # one bad step must not stop training; a broken evolver does, below
            error, children = f"{type(exc).__name__}: {exc}", []
        for child in children:
            child.parent_index += start
        stats = Counter(self.evolver.stats)
        stats.subtract(stats_before)
        gathered = self.all_gather_object({
            "children": children, "error": error, "parents": len(mine),
            "seconds": time.perf_counter() - started, "stats": dict(+stats),
        })

        all_children: list[Child] = [c for part in gathered for c in part["children"]]
        errors = [part["error"] for part in gathered if part["error"]]
        failed_everywhere = bool(errors) and all(part["error"] or not part["parents"] for part in gathered)
        self.failed_steps_in_a_row = self.failed_steps_in_a_row + 1 if failed_everywhere else 0
        if self.failed_steps_in_a_row >= MAX_EVOLVE_FAILURES:
            raise EvolveFailure(f"the evolver raised on every rank for {self.failed_steps_in_a_row} steps in a row; "
                                f"last error: {errors[0]}")

        existing = [e.text for e in self.buffer] + [p.prompt for p in batch]
        kept, rejected, filter_counts = apply_filters(all_children, parents, self.filters,
                                                      existing=existing + list(self._seed_keys))
        order = {id(c): i for i, c in enumerate(all_children)}
        outcome = sorted([(c, None) for c in kept] + list(rejected), key=lambda item: order[id(item[0])])
        self.last_children = [
            {"step": step, "parent": parents[c.parent_index].prompt, "parent_id": c.parent_id,
             "parent_info": parents[c.parent_index].info, "parent_rewards": parents[c.parent_index].rewards,
             "prompt": c.prompt, "label": c.label, "method": c.method, "depth": c.depth, "metadata": c.metadata,
             "accepted": reason is None, "reason": reason}
            for c, reason in outcome
        ]
        self.buffer.mark_trained([batch[i].buffer_id for i in buffer_rows])
        popped = self.buffer.pop_trained()
        self.buffer.push([
            {"text": c.prompt, "info": parents[c.parent_index].info, "label": c.label, "metadata": c.metadata,
             "parent_id": c.parent_id, "depth": c.depth, "method": c.method}
            for c in kept
        ], step)

        step_counts = Counter({"children_generated": len(all_children), "children_accepted": len(kept),
                               "children_rejected": len(rejected), "evolve_errors": len(errors),
                               "evolve_empty": int(not all_children)})
        for part in gathered:
            step_counts.update({f"evolver_{k}": v for k, v in part["stats"].items()})
        self.totals.update(step_counts)
        metrics = {f"eva/{k}": v for k, v in step_counts.items()}
        metrics.update(frontier)
        metrics.update({f"eva/rejected_{name}": count for name, count in filter_counts.items()})
        metrics.update({
            "eva/parents": len(parents),
            "eva/parents_per_rank": [part["parents"] for part in gathered],
            "eva/popped_trained": len(popped),
            "timing/evolve": max(part["seconds"] for part in gathered),
            "eva/total_children_accepted": self.totals["children_accepted"],
            "eva/total_children_rejected": self.totals["children_rejected"],
            "eva/total_evolve_errors": self.totals["evolve_errors"],
        })
        if errors:
            metrics["eva/evolve_error"] = errors[0]
        return metrics

    def _select_parents(self, batch, info: torch.Tensor, rewards: torch.Tensor) -> tuple[list[int], dict]:
        """The schedule's top_frac most informative prompts of the batch (a seeded random draw when
        every info is equal), among those past the frontier checks (see the module docstring);
        returns them and the step's frontier metrics."""
        finite = torch.isfinite(rewards)
        counts = finite.sum(dim=1)
        means = torch.where(finite, rewards, torch.zeros_like(rewards)).sum(dim=1) / counts.clamp(min=1)
        self._seed_means.extend(float(means[i]) for i, p in enumerate(batch)
                                if p.buffer_id is None and counts[i] > 0)
        threshold = None
        if self.frontier_quantile > 0 and self._seed_means:
            threshold = float(np.quantile(np.asarray(self._seed_means, dtype=np.float64), self.frontier_quantile))
        tied = [bool(info[i] <= 0 or counts[i] == 0) for i in range(len(batch))]
        below = [threshold is not None and not tied[i] and float(means[i]) < threshold for i in range(len(batch))]
        # Every row, most informative first; ties go to the lower batch index, buffer prompts first (a random
        # tie order was worse on the digits dev set). Equal infos everywhere (`uniform`) rank nothing, and
        # batch order would evolve only the buffer prompts: then the order is a seeded random permutation.
        ranked = self.schedule.select_parents(info, k=len(batch))
        if len(batch) and bool((info == info[0]).all()):
            ranked = np.random.default_rng([self.seed, self.batches_served, 1]).permutation(len(batch)).tolist()
        k = len(self.schedule.select_parents(info))
        selected = [i for i in ranked if not (tied[i] or below[i])][:k]
        return selected, {"eva/frontier_threshold": threshold, "eva/parents_tied": sum(tied),
                          "eva/parents_below_frontier": sum(below)}

    # --- state -------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: buffer (with its rng), data position, counters."""
        return {
            "version": STATE_VERSION,
            "seeds_fingerprint": self._seeds_fingerprint,
            "num_seeds": len(self.seeds),
            "batch_size": self.batch_size,
            "total_prompts": self.total_prompts,
            "eva": bool(self.evolver),
            "episode": self.episode,
            "cursor": self.cursor,
            "batches_served": self.batches_served,
            "prompts_served": self.prompts_served,
            "totals": dict(self.totals),
            "failed_steps_in_a_row": self.failed_steps_in_a_row,
            "seed_replay": self.seed_replay,
            "frontier_quantile": self.frontier_quantile,
            "seed_means": list(self._seed_means),
            "seed_replay_order": self.seed_replay_order,
            "seed_info": [None if np.isnan(x) else float(x) for x in self._seed_info],
            "buffer": self.buffer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``; a state from another version, seed set or configuration is refused."""
        version = state.get("version") if isinstance(state, dict) else None
        if version != STATE_VERSION:
            raise ValueError(f"prompt source state has version {version!r}; this code reads version {STATE_VERSION}")
        expected = {"seeds_fingerprint": self._seeds_fingerprint, "num_seeds": len(self.seeds),
                    "batch_size": self.batch_size, "total_prompts": self.total_prompts, "eva": bool(self.evolver),
                    "seed_replay": self.seed_replay, "seed_replay_order": self.seed_replay_order,
                    "frontier_quantile": self.frontier_quantile}
        different = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
        if different:
            raise ValueError("prompt source state was saved with other prompts or settings "
                             + ", ".join(f"{k}: saved {s!r}, now {n!r}" for k, (s, n) in different.items()))
        self.buffer.load_state_dict(state["buffer"])
        self.episode, self.cursor = state["episode"], state["cursor"]
        self.batches_served, self.prompts_served = state["batches_served"], state["prompts_served"]
        self.totals = Counter(state["totals"])
        self.failed_steps_in_a_row = state["failed_steps_in_a_row"]
        self._seed_means.clear()
        self._seed_means.extend(state["seed_means"])
        self._seed_info = np.array([np.nan if x is None else x for x in state["seed_info"]], dtype=np.float64)
        self._order = self._episode_order(self.episode)
        self._pending = None

    def fingerprint(self) -> str:
        """A short hash of the buffer (entries, slots, rng) and the data position."""
        state = {"buffer": self.buffer.state_dict(), "cursor": self.cursor, "episode": self.episode,
                 "seed_means": list(self._seed_means), "seed_info": self._seed_info.tolist()}
        return hashlib.sha256(json.dumps(state, sort_keys=True, default=repr).encode()).hexdigest()[:16]
