"""eva-bench's tables, targets and plots, from results.json and the runs' own logs (see openrlhf_eva.bench)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _cell(stat: dict | None, signed: bool = False) -> str:
    """mean [CI95]; ** marks an interval above zero, ↓ one below. No interval: "(n seeds, no CI)"."""
    if stat is None:
        return "-"
    sign = "+" if signed else ""
    if stat.get("ci95") is None:
        return f"{stat['mean']:{sign}.3f} (no CI)"
    lo, hi = stat["ci95"]
    mark = " **" if signed and lo > 0 else (" ↓" if signed and hi < 0 else "")
    return f"{stat['mean']:{sign}.3f} [{lo:{sign}.3f}, {hi:{sign}.3f}]{mark}"


def _split_order(splits: list[str]) -> list[str]:
    preferred = [s for s in ("in_dist", "harder", "new_kind") if s in splits]
    return preferred + [s for s in splits if s not in preferred and s != "all"] + ["all"]


def markdown_table(results: dict) -> str:
    """Per task and solver: every arm's greedy reward, sampled mean@k, and paired deltas with CI95."""
    lines = []
    for name, family in results["families"].items():
        splits = _split_order(family["splits"])
        # The embedded families' splits, or a user's task's own when it names them otherwise.
        delta_splits = ["all"] + ([s for s in ("in_dist", "harder") if s in splits] or splits[:-1][:2])
        theta_split = "in_dist" if "in_dist" in splits else "all"
        theta = family["theta_0"]
        for solver in dict.fromkeys(key.split("/")[0] for key in family["arms"]):
            keys = [k for k in family["arms"] if k.startswith(solver + "/")]
            header = (["arm", *splits, "sampled mean@k (all)"] + [f"Δ vs static: {s}" for s in delta_splits]
                      + ["Δ vs uniform: all", f"Δ vs θ0: {theta_split}", "steps", "rollouts"])
            lines += [f"\n### {name}, {solver.upper()}: held-out greedy reward, mean over seeds [95% paired bootstrap]\n",
                      "| " + " | ".join(header) + " |", "|---" * len(header) + "|",
                      "| θ0 (start) | " + " | ".join(f"{theta[s]['reward']:.3f}" for s in splits)
                      + f" | {theta['all'].get('sampled', float('nan')):.3f} |" + " |" * (len(header) - len(splits) - 2)]
            for key in keys:
                arm = family["arms"][key]
                static, uniform = arm.get("delta_vs_static", {}), arm.get("delta_vs_uniform", {})
                cells = [_cell(arm["test"][s]) for s in splits]
                cells.append(f"{arm['test']['all'].get('sampled', float('nan')):.3f}")
                cells += [_cell(static.get(s), True) for s in delta_splits]
                cells += [_cell(uniform.get("all"), True), _cell(arm["delta_vs_theta0"].get(theta_split), True)]
                cells += [f"{arm['steps']:.0f}", f"{arm['rollouts']:.0f}"]
                lines.append(f"| {key.split('/')[1]} (n={len(arm['seeds'])}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(results: dict) -> list[dict]:
    """The bench's targets (issue 13), each with the numbers that decide it and whether it is met.

    A target that needs an interval is met only with one: fewer than 3 seeds never meet it. A target
    on a split the task's test set does not have (a user's task may name its splits otherwise) is
    not applicable: ``met`` None, and the row says which split is missing.
    """
    rows: list[dict[str, Any]] = []
    uniform_ci: dict[str, list[str]] = {}  # solver -> families whose eva - uniform CI is above zero

    def delta(family, key, baseline, split):
        return (family["arms"].get(key) or {}).get(f"delta_vs_{baseline}", {}).get(split)

    def needs_split(family, split, row):
        if split in family.get("splits", ()):
            return row
        return {**row, "met": None, "text": f"n/a: the test set has no {split!r} split"}

    def low(stat):
        return None if stat is None or stat.get("ci95") is None else stat["ci95"][0]

    for name, family in results["families"].items():
        for solver in ("rloo", "dpo"):
            key = f"{solver}/eva"
            if key not in family["arms"]:
                continue
            d_all, d_harder = delta(family, key, "static", "all"), delta(family, key, "static", "harder")
            d_in = delta(family, key, "static", "in_dist")
            rows.append({"target": f"{name} {solver}: eva - static on all, CI low > 0", "value": d_all,
                         "met": low(d_all) is not None and low(d_all) > 0})
            rows.append(needs_split(family, "harder", {
                "target": f"{name} {solver}: eva - static on harder > 0", "value": d_harder,
                "met": d_harder is not None and d_harder["mean"] > 0}))
            rows.append(needs_split(family, "in_dist", {
                "target": f"{name} {solver}: eva in_dist >= static - 0.02", "value": d_in,
                "met": d_in is not None and d_in["mean"] >= -0.02}))
            d_uniform = delta(family, key, "uniform", "all")
            ci_above_zero = low(d_uniform) is not None and low(d_uniform) > 0
            rows.append({"target": f"{name} {solver}: eva - uniform on all > 0",
                         "value": d_uniform, "met": d_uniform is not None and d_uniform["mean"] > 0,
                         "ci_above_zero": ci_above_zero})
            uniform_ci.setdefault(solver, [])
            if ci_above_zero:
                uniform_ci[solver].append(name)
        static = family["arms"].get("rloo/static")
        if static:
            d = static["delta_vs_theta0"].get("in_dist")
            rows.append(needs_split(family, "in_dist", {
                "target": f"{name} rloo: static - θ0 on in_dist, CI low > 0", "value": d,
                "met": low(d) is not None and low(d) > 0}))
        eva, df = family["arms"].get("rloo/eva"), family["arms"].get("rloo/dynamic_filtering")
        if eva and df:
            shared = [i for i, s in enumerate(eva["seeds"]) if s in df["seeds"]]
            diffs = [eva["per_seed"]["all"][i] - df["per_seed"]["all"][df["seeds"].index(eva["seeds"][i])]
                     for i in shared]
            stat = {"mean": float(np.mean(diffs)), "ci95": None} if diffs else None
            rows.append({"target": f"{name} rloo: eva - dynamic_filtering on all > 0", "value": stat,
                         "met": stat is not None and stat["mean"] > 0})
    # The uniform target is joint: mean above zero on every family (rows above), CI above zero on one.
    for solver, names in uniform_ci.items():
        rows.append({"target": f"{solver}: eva - uniform on all, CI low > 0 on at least one family", "value": None,
                     "text": ", ".join(names) or "none", "met": bool(names)})
    return rows


def write_markdown(results: dict, path: Path, notes: str = "") -> None:
    config = results["config"]
    rows = targets(results)
    head = [
        "# eva-bench results",
        "",
        f"Scale `{config['scale']}`, held-out set `{config['eval_set']}`: tasks {', '.join(results['families'])}; "
        f"{len(config['seeds'])} seeds; {config['num_seed_prompts']} seed prompts per seed; "
        f"this invocation took {config['minutes']:.1f} minutes{_cache_text(config)}. "
        "Every arm of a task starts from the same model with the same rollout budget; deltas are paired by seed (same seed prompts, same training seed); ** marks a "
        "CI95 above zero, ↓ one below zero; fewer than 3 seeds give no interval. Generated by "
        "`python -m openrlhf_eva.bench`; the full configuration is in results.json.",
        "",
        "## Targets",
        "",
        "| target | value | met |",
        "|---|---|---|",
    ]
    head += [f"| {r['target']} | {r.get('text') or _cell(r['value'], True)} | {'n/a' if r['met'] is None else 'yes' if r['met'] else '**no**'} |"
             for r in rows]
    path.write_text("\n".join(head) + "\n" + (notes + "\n" if notes else "") + markdown_table(results) + "\n")


def _cache_text(config: dict) -> str:
    """Where runs came from an earlier invocation's cache, what they cost when they ran."""
    if not config.get("cached_runs"):
        return ""
    return (f" ({config['cached_runs']} runs reused from an earlier invocation's cache; all runs together took "
            f"{config['run_minutes']:.1f} run-minutes, about {config['run_minutes'] / config['workers']:.1f} minutes "
            f"on {config['workers']} workers)")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(results: dict, runs: list[dict], out: Path) -> list[Path]:
    """Per task and solver: held-out curves by split; per task: the RLOO buffer's drift. Returns the paths."""
    plt = _pyplot()
    written = []
    for name, family in results["families"].items():
        arms = family["arms"]
        for solver in dict.fromkeys(key.split("/")[0] for key in arms):
            keys = [k for k in arms if k.startswith(solver + "/")]
            groups = _split_order(family["splits"])
            fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.4), squeeze=False)
            for ax, group in zip(axes.flat, groups):
                for key in keys:
                    curve = [p for p in arms[key]["curve"] if group in p]
                    arm = key.split("/")[1]
                    ax.plot([p["step"] for p in curve], [p[group] for p in curve],
                            "--" if arm in ("static", "uniform", "dynamic_filtering") else "-", marker=".", label=arm,
                            linewidth=2.4 if arm == "eva" else 1.1)
                ax.set_title(group)
                ax.set_xlabel("rollout batch" if solver == "rloo" else "DPO round")
                ax.grid(alpha=0.3)
            axes.flat[0].set_ylabel("held-out greedy reward")
            axes.flat[0].legend(fontsize=7, ncol=2)
            fig.suptitle(f"{name}, {solver.upper()}: held-out reward over training (mean over seeds)")
            fig.tight_layout()
            written.append(_save(fig, out / f"{name}_{solver}_curves.png", plt))
        drift = _buffer_drift([r for r in runs if r["task"] == name], out / name)
        if drift:
            fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.2))
            for arm, (steps, new_share, difficulty) in drift.items():
                left.plot(steps, new_share, label=arm)
                right.plot(steps, difficulty, label=arm)
            left.set_title("buffer: share of prompts of kinds no seed has")
            right.set_title("buffer: mean difficulty")
            for ax in (left, right):
                ax.set_xlabel("rollout batch")
                ax.grid(alpha=0.3)
            left.legend(fontsize=7, ncol=2)
            fig.suptitle(f"{name}, RLOO: what the creator put in the buffer (mean over seeds)")
            fig.tight_layout()
            written.append(_save(fig, out / f"{name}_rloo_buffer_drift.png", plt))
    return written


def _buffer_drift(runs: list[dict], out: Path) -> dict[str, tuple[list, list, list]]:
    """Per RLOO arm: steps, mean share of kinds absent from the seeds and mean difficulty in the buffer."""
    from openrlhf_eva.bench import read_jsonl

    per_arm: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for run in runs:
        if run["solver"] != "rloo":
            continue
        folder = out / "rloo" / run["arm"] / f"seed_{run['seed']}"
        seed_kinds = {row.get("kind") for row in read_jsonl(folder / "seeds.jsonl")}
        for row in read_jsonl(folder / "model" / "buffer_composition.jsonl"):
            total = sum(row["kinds"].values())
            if not total:
                continue
            new_share = sum(v for k, v in row["kinds"].items() if k not in seed_kinds) / total
            levels = [(int(k), v) for k, v in row["difficulty"].items() if k.isdigit()]
            difficulty = sum(k * v for k, v in levels) / max(1, sum(v for _, v in levels))
            per_arm.setdefault(run["arm"], {}).setdefault(row["step"], []).append((new_share, difficulty))
    drift: dict[str, Any] = {}
    for arm, by_step in per_arm.items():
        steps = sorted(by_step)
        drift[arm] = (steps, [float(np.mean([x[0] for x in by_step[s]])) for s in steps],
                      [float(np.mean([x[1] for x in by_step[s]])) for s in steps])
    return drift


def _save(fig, path: Path, plt) -> Path:
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
