"""eva-bench's statistics: paired bootstrap intervals over seeds, and a task's per-arm summary.

Every interval is a 95% percentile bootstrap over seeds; a difference between arms is paired by seed
(the arms of one seed share the seed prompts and the training seed). Below MIN_SEEDS_FOR_CI seeds
there is no interval: a spread cannot be estimated from one or two values.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

MIN_SEEDS_FOR_CI = 3


def bootstrap_ci(values: Sequence[float], draws: int = 10_000, seed: int = 0) -> tuple[float, list[float] | None]:
    """Mean and 95% percentile-bootstrap interval over `values` (one per seed; for a paired
    difference, pass the per-seed differences). Fewer than MIN_SEEDS_FOR_CI values: no interval
    (None): a spread cannot be estimated from one or two seeds."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < MIN_SEEDS_FOR_CI:
        return float(values.mean()), None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(draws, len(values)))].mean(axis=1)
    return float(values.mean()), [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def summarize(runs: list[dict], splits: list[str], theta_0: dict, arm_order: Sequence[str]) -> dict:
    """One task's "arms": per solver/arm, test means with CIs and paired deltas vs static, uniform and
    theta_0; keyed "<solver>/<arm>", in arm_order."""
    by_arm: dict[str, dict[int, dict]] = {}
    for run in runs:
        by_arm.setdefault(f"{run['solver']}/{run['arm']}", {})[run["seed"]] = run
    arms = {}
    for key, seeds in sorted(by_arm.items(), key=lambda item: arm_order.index(item[0])):
        solver = key.split("/")[0]
        order = sorted(seeds)
        entry: dict[str, Any] = {"seeds": order, "test": {}, "per_seed": {}}
        for split in splits:
            values = [seeds[s]["test"][split]["reward"] for s in order]
            mean, ci = bootstrap_ci(values)
            entry["test"][split] = {"mean": mean, "ci95": ci,
                                    "exact": float(np.mean([seeds[s]["test"][split]["exact"] for s in order]))}
            if "sampled" in seeds[order[0]]["test"][split]:
                entry["test"][split]["sampled"] = float(np.mean([seeds[s]["test"][split]["sampled"] for s in order]))
            entry["per_seed"][split] = values
        for baseline in ("static", "uniform"):
            other = by_arm.get(f"{solver}/{baseline}", {})
            shared = [s for s in order if s in other]
            if not shared or key == f"{solver}/{baseline}":
                continue
            entry[f"delta_vs_{baseline}"] = {}
            for split in splits:
                diffs = [seeds[s]["test"][split]["reward"] - other[s]["test"][split]["reward"] for s in shared]
                mean, ci = bootstrap_ci(diffs)
                entry[f"delta_vs_{baseline}"][split] = {"mean": mean, "ci95": ci, "n": len(shared)}
        entry["delta_vs_theta0"] = {}
        for split in splits:
            mean, ci = bootstrap_ci([seeds[s]["test"][split]["reward"] - theta_0[split]["reward"] for s in order])
            entry["delta_vs_theta0"][split] = {"mean": mean, "ci95": ci, "n": len(order)}
        entry["curve"] = mean_curve([seeds[s]["curve"] for s in order])
        entry["steps"] = float(np.mean([seeds[s]["steps"] for s in order]))
        entry["rollouts"] = float(np.mean([seeds[s]["rollouts"] for s in order]))
        entry["seconds_mean"] = float(np.mean([seeds[s]["seconds"] for s in order]))
        arms[key] = entry
    return arms


def mean_curve(curves: list[list[dict]]) -> list[dict]:
    """Per evaluation step, the mean reward of every group over the seeds that reached it."""
    steps = sorted({point["step"] for curve in curves for point in curve})
    merged = []
    for step in steps:
        points = [p for curve in curves for p in curve if p["step"] == step]
        groups = set.intersection(*(set(k for k in p if k != "step") for p in points))
        merged.append({"step": step, **{g: float(np.mean([p[g]["reward"] for p in points])) for g in sorted(groups)}})
    return merged
