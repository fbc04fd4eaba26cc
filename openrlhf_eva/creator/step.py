"""One offline creator step (EVA.md, Algorithm 1): estimate -> sample -> evolve -> mix.

Framework-free: the caller has already sampled n responses per prompt and scored them, and
passes the reward matrix. `creator_step` computes informativeness, draws the informative
subset, evolves it, filters the children and mixes the next prompt set (by default 80% drawn
uniformly from the evolved children, 20% from the original set, same size as the input, in
shuffled order). The original share comes from `replay` when given: `iterate` passes the seed
prompts X_1 there, so that they stay in the mix in every round instead of thinning out by 20% a round.
Every row of the next set carries its lineage in flat `eva_*` keys (flat, fixed types, so
OpenRLHF's `datasets`-based loaders read it without schema surprises).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .estimate import informativeness
from .evolve import Child, Evolver, Parent
from .filters import DEFAULT_FILTERS, apply_filters
from .sample import sample_informative


@dataclass
class CreatorStep:
    """What one creator step decided, kept whole so it can be printed, logged and written."""

    info: torch.Tensor  # [P] informativeness of every input prompt under `metric`
    selected: list[int]  # indices of the informative subset, in draw order
    children: list[Child]  # accepted children
    rejected: list[tuple[Child, str]]  # filtered-out children and "<filter>: <reason>"
    next_set: list[dict]  # the mixed prompt set for the next solver round
    counts: Counter = field(default_factory=Counter)  # evolver and filter counters
    dropped: list[dict] = field(default_factory=list)  # evolver outputs that gave no child (Evolver.dropped)


def _metadata(row: dict) -> dict:
    """A row's task metadata: everything but the prompt, the label and eva's own lineage keys."""
    return {key: v for key, v in row.items() if key not in ("prompt", "label") and not key.startswith("eva_")}


def _row(prompt: str, label: Any, metadata: dict, origin: str, parent: str, method: str, depth: int, info: float):
    row = {"prompt": prompt, "label": label, **metadata}
    row.update(eva_origin=origin, eva_parent=parent, eva_method=method, eva_depth=depth, eva_info=float(info))
    return row


def creator_step(
    rows: Sequence[dict],
    rewards: torch.Tensor,
    evolver: Evolver,
    *,
    metric: str = "A_min",
    sample_mode: str = "weighted",
    sample_fraction: float = 0.25,
    evolutions_per_prompt: int = 4,
    evolved_fraction: float = 0.8,
    next_size: int | None = None,
    filters: Sequence[Any] = DEFAULT_FILTERS,
    seed: int = 42,
    responses: Sequence[Sequence[str]] | None = None,
    replay: Sequence[dict] | None = None,
) -> CreatorStep:
    """Run estimate/sample/evolve/mix on `rows` (dicts with `prompt`, optional `label`) and `rewards` [P, n].

    `filters` are names or built filters (see `filters.apply_filters`). `responses` [P][n], when
    given, reach the evolver with the rewards (`Parent.responses`), for feedback-aware evolving.
    `replay` (rows as `rows`), when given, is the pool of the next set's original share instead of
    `rows`; its rows that were not estimated here carry eva_info -1.
    """
    if len(rows) != rewards.shape[0]:
        raise ValueError(f"{len(rows)} prompts but rewards for {rewards.shape[0]}")
    if responses is not None and len(responses) != len(rows):
        raise ValueError(f"{len(rows)} prompts but responses for {len(responses)}")
    if not 0 < sample_fraction <= 1:
        raise ValueError(f"sample_fraction must be in (0, 1], got {sample_fraction}")
    if not 0 <= evolved_fraction <= 1:
        raise ValueError(f"evolved_fraction must be in [0, 1], got {evolved_fraction}")
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)

    info = informativeness(rewards, metric=metric)
    k = max(1, round(sample_fraction * len(rows)))
    selected = sample_informative(info, k, mode=sample_mode, generator=generator).tolist()

    parents = []
    for i in selected:
        row = rows[i]
        parents.append(
            Parent(id=i, prompt=row["prompt"], label=row.get("label"), metadata=_metadata(row), info=float(info[i]),
                   depth=int(row.get("eva_depth", 0)), rewards=rewards[i].tolist(),
                   responses=list(responses[i]) if responses is not None else None)
        )
    children = evolver.evolve(parents, evolutions_per_prompt, rng)
    kept, rejected, filter_counts = apply_filters(children, parents, filters, existing=[r["prompt"] for r in rows])
    counts = Counter({f"evolver/{k}": v for k, v in evolver.stats.items()})
    counts.update({f"filter/{k}": v for k, v in filter_counts.items()})
    counts.update({"children/generated": len(children), "children/accepted": len(kept)})

    # Next set: equal prompt budget. Evolved share drawn uniformly from the accepted children,
    # the rest uniformly from the originals (the "buffer" that keeps the seeds in the mix).
    size = len(rows) if next_size is None else next_size
    n_evolved = min(len(kept), round(evolved_fraction * size))
    pool = rows if replay is None else replay
    n_original = min(len(pool), size - n_evolved)
    next_set = []
    for child in rng.sample(kept, n_evolved):
        parent = parents[child.parent_index]
        next_set.append(
            _row(child.prompt, child.label, child.metadata, "evolved", parent.prompt, child.method or "",
                 child.depth, parent.info)
        )
    estimated = {row["prompt"]: float(info[i]) for i, row in enumerate(rows)}
    for i in rng.sample(range(len(pool)), n_original):
        row = pool[i]
        next_set.append(
            _row(row["prompt"], row.get("label"), _metadata(row), row.get("eva_origin", "seed"), row.get("eva_parent", ""),
                 row.get("eva_method", ""), int(row.get("eva_depth", 0)), estimated.get(row["prompt"], -1.0))
        )
    # Shuffled: solvers often train on a prefix (train_dpo's --data.max_samples takes the first rows),
    # and evolved-then-original order made that prefix all children, so the 20% of the set kept from
    # the originals never reached the solver (measured: iterate's DPO trained on 96 pairs, all evolved).
    rng.shuffle(next_set)
    counts.update({"next/evolved": n_evolved, "next/original": n_original})
    return CreatorStep(info=info, selected=selected, children=kept, rejected=rejected, next_set=next_set,
                       counts=counts, dropped=list(getattr(evolver, "dropped", [])))
