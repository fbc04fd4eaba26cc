"""The report's section for online runs (train_rloo, train_ppo_ray, the bench's per-seed runs)."""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from typing import Any, Sequence

from .common import (BENCH_FILES, MAX_EXAMPLES, MAX_LINEAGE, ONLINE_FILES, Run, Section, absent, as_text, bar_panel,
    embed, first_last, heading, key_numbers, new_figure, no_matplotlib, note, number, phase_legend, phase_segments,
    prompt, read_jsonl, rewards_text, round_robin, series, shade_phases, sort_key, spread_over_parents, stack_panel,
    steps_of, table)


def online_section(run: Run) -> Section:
    folder, section = run.path, Section()
    bench_dir = run.bench_dir or folder
    metrics, torn_metrics = read_jsonl(folder / "eva_metrics.jsonl")
    buffer, _ = read_jsonl(folder / "eva_buffer.jsonl")
    children, torn_children = read_jsonl(folder / "eva_children.jsonl")
    curve, _ = read_jsonl(bench_dir / "bench_curve.jsonl")
    composition, _ = read_jsonl(bench_dir / "buffer_composition.jsonl")
    missing = [name for name in ONLINE_FILES if not (folder / name).is_file()]
    missing += [name for name in BENCH_FILES if not (bench_dir / name).is_file()]
    if run.bench_dir:
        section.parts.append(note(f"bench files read from {run.bench_dir}"))
    section.parts.append(absent(missing))
    if buffer and not metrics:
        section.parts.append(note("train_ppo_ray writes only eva_buffer.jsonl; its per-step eva metrics go to "
                                  "wandb / tensorboard as train/eva/*"))
    if torn_metrics or torn_children:
        section.parts.append(note(f"skipped unreadable lines: {torn_metrics} in eva_metrics.jsonl, "
                                  f"{torn_children} in eva_children.jsonl (a run stopped mid-write?)"))

    segments = phase_segments(metrics)
    section.parts.append(heading("Run summary"))
    section.parts.append(online_key_numbers(section, metrics, buffer, children, curve, segments))
    section.parts.extend(online_plots(metrics, buffer, children, curve, composition, segments))
    if children or any(number(m.get("eva/children_generated")) for m in metrics):
        section.parts.extend(children_tables(metrics, children))
    else:
        section.parts.append(note("no evolved children in this run's logs (eva off, or no eva_children.jsonl)"))
    section.parts.extend(buffer_tables(buffer))
    return section


def online_key_numbers(section: Section, metrics, buffer, children, curve, segments) -> str:
    items: list[tuple[str, Any]] = []
    steps = steps_of(metrics)
    if metrics:
        items.append(("steps logged", f"{len(metrics)} (last step {steps[-1]:g})"))
    if segments and all(phase == "off" for _, _, phase in segments):
        items.append(("phases (steps)", "eva off: static prompts"))
    elif segments:
        items.append(("phases (steps)", ", ".join(f"{phase} {a:g}–{b:g}" if b > a else f"{phase} {a:g}"
                                                  for a, b, phase in segments)))
    xs, reward = series(metrics, "reward_mean")
    if reward:
        items.append(("reward mean", first_last(reward, xs)))
        section.highlights.append(f"reward {reward[0]:.3f} → {reward[-1]:.3f}")
    for key, label in (("reward_mean_seed_prompts", "reward on seed prompts (mean over steps)"),
                       ("reward_mean_buffer_prompts", "reward on buffer prompts (mean over steps)")):
        _, values = series(metrics, key)
        if values:
            items.append((label, f"{statistics.fmean(values):.3f} over {len(values)} steps"))
    xs, info = series(metrics, "eva/batch_info_mean")
    if info:
        items.append(("batch informativeness (mean)", first_last(info, xs)))

    last = metrics[-1] if metrics else {}
    size = number(last.get("eva/buffer_size"))
    size = len(buffer) if size is None and buffer else size
    if size or buffer:  # eva off logs an empty buffer every step: nothing to report
        depths = [d for d in (number(e.get("depth")) for e in buffer) if d is not None]
        depth = f", lineage depth mean {statistics.fmean(depths):.2f} max {max(depths):g}" if depths else ""
        evicted = number(last.get("eva/buffer_evicted"))
        items.append(("buffer at the end", f"{size:g} prompts" + (f", {evicted:g} evicted" if evicted else "")
                      + depth))
        section.highlights.append(f"buffer {size:g}")
    # One source for all three counts, so that they add up: the children file lists every child,
    # the per-step counters are the fallback when it is absent.
    if children:
        generated, accepted = len(children), sum(bool(c.get("accepted")) for c in children)
    else:
        generated = sum(number(m.get("eva/children_generated")) or 0 for m in metrics)
        accepted = sum(number(m.get("eva/children_accepted")) or 0 for m in metrics)
    if generated >= accepted and generated:
        items.append(("children", f"{generated:g} generated, {accepted:g} accepted ({accepted / generated:.0%}), "
                                  f"{generated - accepted:g} rejected"))
        section.highlights.append(f"children {accepted:g}/{generated:g} accepted")
    total = sum(number(m.get("timing/step")) or 0 for m in metrics)
    if total:
        evolve = [number(m.get("timing/evolve")) for m in metrics if "timing/evolve" in m]
        share = f", {sum(e or 0 for e in evolve) / total:.0%} of it evolving" if evolve else ""
        items.append(("time", f"{total:.0f} s in the steps{share}"))
    splits, _ = curve_splits(curve)
    for split in splits:
        xs, values = curve_series(curve, split)
        if values:
            items.append((f"held-out reward, {split}", first_last(values, xs)))
            if split == "all" or len(splits) == 1:
                section.highlights.append(f"held-out {split} {values[-1]:.3f}")
    if metrics and not section.highlights:
        section.highlights.append(f"{len(metrics)} steps")
    return key_numbers(items)


def curve_splits(curve: Sequence[dict]) -> tuple[list[str], dict[str, list[str]]]:
    """(splits, groups) of bench_curve rows: keys whose values are dicts with a reward, "all" first.

    Keys like "difficulty=4" (evaluate_model's group_keys) go to groups["difficulty"], ordered by
    value, so that a plot shows the splits and each grouping apart rather than a dozen lines in one.
    """
    keys = {key for row in curve for key, value in row.items()
            if isinstance(value, dict) and number(value.get("reward")) is not None}
    groups: dict[str, list[str]] = defaultdict(list)
    for key in sorted(keys, key=lambda k: sort_key(k.partition("=")[2])):
        if "=" in key:
            groups[key.partition("=")[0]].append(key)
    return sorted((k for k in keys if "=" not in k), key=lambda k: (k != "all", k)), dict(groups)


def curve_series(curve: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, held-out reward) of one split or group of bench_curve.jsonl."""
    return series([{"step": r.get("step"), "reward": r[key].get("reward")} for r in curve
                   if isinstance(r.get(key), dict)], "reward")


def online_plots(metrics, buffer, children, curve, composition, segments) -> list[str]:
    parts = []
    has = {key for row in metrics for key, value in row.items() if number(value) is not None}
    panels = []
    if has & {"reward_mean", "reward_mean_seed_prompts", "reward_mean_buffer_prompts"}:
        panels.append("reward")
    # With eva off the source still logs an empty buffer every step: zeros, not worth a panel.
    buffer_used = any((number(m.get("eva/buffer_size")) or 0) > 0 for m in metrics)
    if has & {"eva/batch_info_mean", "eva/buffer_info_mean"}:
        panels.append("info")
    if buffer_used:
        panels.append("buffer")
    if has & {"eva/children_accepted", "eva/children_rejected"}:
        panels.append("children")
    if buffer_used and "eva/buffer_depth_mean" in has:
        panels.append("depth")
    if "response_length_mean" in has:
        panels.append("length")
    if panels:
        fig, axes = new_figure(len(panels))
        if fig is None:
            return [no_matplotlib()]
        for ax, panel in zip(axes, panels):
            shade_phases(ax, segments)
            draw_online_panel(ax, panel, metrics, buffer_used)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
        phase_legend(fig, segments)
        parts.append(heading("Training over the steps"))
        parts.append(embed(fig, "per-step metrics from eva_metrics.jsonl; background: eva phase"))

    splits, groups = curve_splits(curve)
    curve_panels = ([("split", splits)] if splits else []) + list(groups.items())
    if curve_panels:
        fig, axes = new_figure(len(curve_panels), panel_height=3.0)
        if fig is None:
            return parts + [no_matplotlib()]
        for ax, (title, keys) in zip(axes, curve_panels):
            shade_phases(ax, segments)
            for key in keys:
                ax.plot(*curve_series(curve, key), marker="o", ms=3, lw=2.2 if key == "all" else 1.2, label=key)
            ax.set_xlabel("step", fontsize=8)
            ax.set_title(f"held-out reward during training, by {title}", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=7)
        parts.append(heading("Held-out evaluation"))
        parts.append(embed(fig, "held-out reward per split at the steps it was measured"))

    composition_panels: list[tuple[str, Any]] = []
    composition_keys = sorted({k for row in composition for k, v in row.items() if isinstance(v, dict)})
    composition_panels += [("stack", key) for key in composition_keys]
    if not composition_keys and buffer:
        for key in ("kind", "difficulty"):
            counts = Counter(e["metadata"][key] for e in buffer
                             if isinstance(e.get("metadata"), dict) and e["metadata"].get(key) is not None)
            if counts:
                composition_panels.append(("bars", (counts, f"final buffer: {key}")))
        methods = Counter(e.get("method") for e in buffer if e.get("method"))
        if methods:
            composition_panels.append(("bars", (methods, "final buffer: evolving method")))
    depth_source = buffer or [c for c in children if c.get("accepted")]
    depths = Counter(int(d) for d in (number(e.get("depth")) for e in depth_source) if d is not None)
    if depths:
        title = "lineage depth, final buffer" if buffer else "lineage depth, accepted children"
        composition_panels.append(("bars", (depths, title)))
    if composition_panels:
        fig, axes = new_figure(len(composition_panels), columns=3, panel_height=2.6)
        if fig is None:
            return parts + [no_matplotlib()]
        for ax, (how, what) in zip(axes, composition_panels):
            if how == "stack":
                stack_panel(ax, composition, what)
            else:
                bar_panel(ax, *what)
            ax.tick_params(labelsize=7)
        parts.append(heading("Buffer composition and lineage"))
        sources = [name for name, used in (("buffer_composition.jsonl", composition_keys),
                                           ("eva_buffer.jsonl", buffer), ("eva_children.jsonl", not buffer)) if used]
        parts.append(embed(fig, f"from {' and '.join(sources)}; depth = evolutions from a seed prompt"))
    return parts


def draw_online_panel(ax, panel: str, metrics: Sequence[dict], buffer_used: bool) -> None:
    def line(key, label, **style):
        xs, ys = series(metrics, key)
        if ys:
            ax.plot(xs, ys, label=label, **style)
        return xs, ys

    if panel == "reward":
        xs, mean = line("reward_mean", "all prompts", color="black", lw=1.8)
        std_xs, std = series(metrics, "reward_std")
        if mean and std_xs == xs:
            ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color="gray", alpha=0.15, lw=0, label="± std")
        line("reward_mean_seed_prompts", "seed prompts", color="#4c72b0", lw=1)
        line("reward_mean_buffer_prompts", "buffer prompts", color="#dd8452", lw=1)
        ax.set_title("reward (mean over the batch's samples)", fontsize=9)
    elif panel == "info":
        line("eva/batch_info_mean", "batch mean", color="#4c72b0")
        line("eva/batch_info_max", "batch max", color="#4c72b0", ls=":")
        if buffer_used:
            line("eva/buffer_info_mean", "buffer mean", color="#dd8452")
        ax.set_title("informativeness", fontsize=9)
    elif panel == "buffer":
        line("eva/buffer_size", "prompts in buffer", color="#55a868")
        xs, ys = series(metrics, "eva/batch_from_buffer")
        if ys:
            # a second axis: a batch holds a handful of prompts, the buffer thousands
            twin = ax.twinx()
            twin.plot(xs, ys, color="#c44e52", lw=1, ls="--", label="batch prompts from buffer (right axis)")
            twin.tick_params(labelsize=7)
            # one legend for both axes, on the twin, which is drawn on top and would hide another
            handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
            twin.legend(handles=handles, fontsize=7, loc="lower right")
            ax.set_title("buffer size", fontsize=9)
            return
        ax.set_title("buffer size", fontsize=9)
    elif panel == "children":
        xs, accepted = series(metrics, "eva/children_accepted")
        rejected_xs, rejected = series(metrics, "eva/children_rejected")
        if accepted:
            ax.bar(xs, accepted, width=0.8, color="#55a868", label="accepted")
        if rejected and rejected_xs == xs:
            ax.bar(xs, rejected, width=0.8, bottom=accepted, color="#c44e52", label="rejected")
        elif rejected:
            ax.bar(rejected_xs, rejected, width=0.8, color="#c44e52", label="rejected")
        ax.set_title("evolved children per step", fontsize=9)
    elif panel == "depth":
        line("eva/buffer_depth_mean", "buffer mean depth", color="#8172b3")
        ax.set_title("lineage depth (evolutions from a seed)", fontsize=9)
    elif panel == "length":
        line("response_length_mean", "response length", color="#937860")
        ax.set_title("response length (tokens, mean)", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def children_tables(metrics: Sequence[dict], children: Sequence[dict]) -> list[str]:
    parts = [heading("Rejected children by filter")]
    reasons: Counter = Counter()
    example: dict[str, str] = {}
    for child in children:
        reason = child.get("reason")
        if not child.get("accepted") and isinstance(reason, str):
            name = reason.partition(":")[0].strip()
            reasons[name] += 1
            example.setdefault(name, reason)
    if not reasons:  # no children file: the per-step counters still tell how many each filter took
        for row in metrics:
            for key, value in row.items():
                if key.startswith("eva/rejected_") and number(value):
                    reasons[key.removeprefix("eva/rejected_")] += number(value)
    generated = len(children) or sum(number(m.get("eva/children_generated")) or 0 for m in metrics)
    if reasons:
        parts.append(table(["filter", "children rejected", "share of generated", "example reason"],
                           [(name, count, f"{count / generated:.1%}" if generated else "–", example.get(name, "–"))
                            for name, count in reasons.most_common()]))
    else:
        parts.append(note(f"no child was rejected ({generated:g} generated)"))

    accepted = [c for c in children if c.get("accepted")]
    parts.append(heading("Evolved prompts beside their parents (most informative parents first)"))
    if accepted:
        order = sorted(accepted, key=lambda c: (-(number(c.get("parent_info")) or -math.inf),
                                                number(c.get("step")) or 0))
        examples = spread_over_parents(order, MAX_EXAMPLES, "parent", "prompt")
        parts.append(table(
            ["step", "parent", "parent rewards", "parent info", "child", "label", "method", "depth"],
            [(c.get("step"), prompt(c.get("parent")), rewards_text(c.get("parent_rewards")),
              number(c.get("parent_info")), prompt(c.get("prompt")), as_text(c.get("label")), c.get("method"),
              c.get("depth")) for c in examples]))
        parts.extend(lineage_table(accepted))
    else:
        parts.append(note("not present in this run: accepted children (eva_children.jsonl)"))

    rejected = [c for c in children if not c.get("accepted")]
    parts.append(heading("Rejected children with the filter's reason"))
    if rejected:
        by_filter: dict[str, list[dict]] = defaultdict(list)
        for child in rejected:
            by_filter[str(child.get("reason") or "").partition(":")[0]].append(child)
        parts.append(table(["step", "parent", "child", "reason"],
                           [(c.get("step"), prompt(c.get("parent")), prompt(c.get("prompt")), c.get("reason"))
                            for c in round_robin(by_filter, MAX_EXAMPLES)]))
    else:
        parts.append(note("not present in this run: rejected children"))
    return parts


def lineage_table(accepted: Sequence[dict]) -> list[str]:
    """The deepest accepted child traced back through its ancestors (matched by prompt text)."""
    by_prompt: dict[str, dict] = {}
    for child in accepted:
        by_prompt.setdefault(as_text(child.get("prompt")), child)
    deepest = max(accepted, key=lambda c: number(c.get("depth")) or 0)
    if (number(deepest.get("depth")) or 0) < 2:
        return []
    chain, visited, cut = [deepest], {as_text(deepest.get("prompt"))}, False
    while True:
        parent = as_text(chain[-1].get("parent"))
        if parent not in by_prompt or parent in visited:
            break
        if len(chain) == MAX_LINEAGE:
            cut = True
            break
        visited.add(parent)
        chain.append(by_prompt[parent])
    rows = [((number(chain[-1].get("depth")) or 1) - 1, "", prompt(chain[-1].get("parent")), "", "")]
    rows += [(c.get("depth"), c.get("step"), prompt(c.get("prompt")), c.get("method"), number(c.get("parent_info")))
             for c in reversed(chain)]
    return [heading("Deepest lineage: the deepest accepted child and its ancestors"),
            note(f"the {MAX_LINEAGE + 1} latest generations; older ancestors left out") if cut else "",
            table(["depth", "step evolved", "prompt", "method", "parent info"], rows)]


def buffer_tables(buffer: Sequence[dict]) -> list[str]:
    if not buffer:
        return []
    top = sorted(buffer, key=lambda e: -(number(e.get("info")) or 0))[:5]

    def kind(entry):
        metadata = entry.get("metadata") if isinstance(entry.get("metadata"), dict) else {}
        return ", ".join(f"{k}={v}" for k, v in metadata.items() if isinstance(v, (str, int, float)))[:80]

    return [heading("Final buffer: the most informative prompts"),
            table(["info", "prompt", "label", "depth", "method", "age (step pushed)", "times trained", "metadata"],
                  [(number(e.get("info")), prompt(e.get("text")), as_text(e.get("label")), e.get("depth"),
                    e.get("method"), e.get("age"), e.get("times_trained"), kind(e)) for e in top])]
