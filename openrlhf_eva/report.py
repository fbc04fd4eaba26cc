"""One self-contained HTML report for eva runs, built from their log files alone.

    python -m openrlhf_eva.report RUN_DIR [--out FILE.html]        (default: RUN_DIR/report.html)

Every run found under RUN_DIR (recursively) gets a section, listed in a summary table on top:

  online   a folder with eva_metrics.jsonl, eva_buffer.jsonl and/or eva_children.jsonl (train_rloo
           writes all three; train_ppo_ray only the buffer): reward, informativeness and buffer size
           over the steps with the phases shaded, children accepted/rejected per step, buffer
           composition and lineage depth, evolved children beside their parents, rejected children
           with the filter's reason. bench_curve.jsonl (held-out reward during training) and
           buffer_composition.jsonl (kinds/difficulties over time) from the bench harness are read
           beside these files, or from a parent folder that holds exactly one such run.
  iterate  iterations.json and/or iter_<t>/{creator,pairs,eval}/ (openrlhf_eva.iterate): one row per
           iteration, filter counts, held-out reward per split, evolved prompts and rejects.
  creator  summary.json with next_prompts/rejects/pairs/children/estimates JSONL beside it
           (openrlhf_eva.evolve, or the demo's creator_step/): counts, informativeness, examples.
  demo     solver/results.json and/or online/results.json (openrlhf_eva.demo): held-out tables.
  scores   prompt_scores.json and/or .csv (openrlhf_eva.score_prompts): complexity/quality per set.
  bench    results.json with "families" (openrlhf_eva.bench; or an older one with "arms"): held-out
           reward per task and arm with its CI95, and
           the bench's own PNGs beside it; its per-seed runs get their own sections.

Plots are drawn with matplotlib's Agg canvas and embedded as base64 PNGs; the page loads nothing
from elsewhere. Without matplotlib the report keeps its tables. Prompt text is HTML-escaped and cut
to MAX_TEXT (600) characters; an example table has at most MAX_EXAMPLES (8) rows.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import math
import os
import re
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

ONLINE_FILES = ("eva_metrics.jsonl", "eva_buffer.jsonl", "eva_children.jsonl")
BENCH_FILES = ("bench_curve.jsonl", "buffer_composition.jsonl")
CREATOR_FILES = ("next_prompts.jsonl", "rejects.jsonl", "pairs.jsonl", "children.jsonl", "estimates.jsonl")
SCORE_FILES = ("prompt_scores.json", "prompt_scores.csv")
DEMO_RESULTS = ("solver", "online")  # <folder>/results.json, each with a "held_out" table
ITER_FOLDER = re.compile(r"^iter_(\d+)$")
# Checkpoints hold no logs and can be huge; estimate shards are read by the creator run that owns them.
SKIPPED_FOLDERS = {"ckpt", "shards", "__pycache__", ".git"}
LOOKED_FOR = (
    "eva_metrics.jsonl / eva_buffer.jsonl / eva_children.jsonl (online training), "
    "iterations.json or iter_<t>/ folders (openrlhf_eva.iterate), summary.json beside next_prompts.jsonl / "
    "rejects.jsonl / pairs.jsonl (openrlhf_eva.evolve, demo creator_step), solver/ or online/results.json "
    "(openrlhf_eva.demo), prompt_scores.json / .csv (openrlhf_eva.score_prompts), results.json with "
    '"arms" (openrlhf_eva.bench)'
)

MAX_EXAMPLES = 8
MAX_LINEAGE = 10
MAX_TEXT = 600
MAX_OVERVIEW_RUNS = 12
DPI = 80
PHASE_COLORS = {"warmup": "#dbe9f6", "mixup": "#fde7c8", "bootstrap": "#dcefd9"}
KIND_LABELS = {"bench": "bench results", "online": "online run", "iterate": "offline iterations",
               "creator": "creator step", "demo": "demo results", "scores": "prompt scores"}
MAX_BENCH_PLOTS = 6
KIND_ORDER = list(KIND_LABELS)

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1250px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 2px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h3 { margin-top: 1.4em; font-size: 1.1em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .88em; }
th, td { border: 1px solid #ccc; padding: .25em .5em; vertical-align: top; text-align: left; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.prompt { font-family: ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap; word-break: break-word;
          max-width: 34em; font-size: .95em; }
.note { color: #666; font-size: .88em; margin: .3em 0; }
figure { margin: .8em 0; } figure img { max-width: 100%; }
figcaption { color: #555; font-size: .85em; }
.back { font-size: .8em; }
"""


class ReportError(ValueError):
    """RUN_DIR holds nothing the report can read."""


class Html(str):
    """Markup already built here: cells holding it are not escaped again."""


@dataclass
class Run:
    kind: str
    path: Path
    bench_dir: Path | None = None  # online: where bench_curve/buffer_composition were found, when elsewhere


@dataclass
class Section:
    highlights: list[str] = field(default_factory=list)  # a few short facts for the summary table
    parts: list[str] = field(default_factory=list)  # HTML, in order


# --- reading logs ---------------------------------------------------------------------------------


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """(rows, lines skipped). A run killed mid-write leaves a torn last line: skipped and counted."""
    if not path.is_file():
        return [], 0
    rows, skipped = [], 0
    with open(path, encoding="utf-8", errors="replace") as file:
        for line in file:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                skipped += 1
    return rows, skipped


def read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def number(value: Any) -> float | None:
    """A finite float, or None for anything else (strings, NaN, bools, missing)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def as_text(value: Any) -> str:
    """Prompt text from a string, a chat message list (the contents joined) or anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return "\n\n".join(str(m.get("content", "")) for m in value)
    return "" if value is None else json.dumps(value, default=str)


def steps_of(rows: Sequence[dict]) -> list[float]:
    """Each row's "step", or its 1-based position where the row has none (step 0 is a step)."""
    steps = [number(row.get("step")) for row in rows]
    return [float(i + 1) if step is None else step for i, step in enumerate(steps)]


def series(rows: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows where `key` holds a finite number."""
    pairs = [(x, number(row.get(key))) for x, row in zip(steps_of(rows), rows)]
    pairs = [(x, y) for x, y in pairs if y is not None]
    return [x for x, _ in pairs], [y for _, y in pairs]


def phase_segments(metrics: Sequence[dict]) -> list[tuple[float, float, str]]:
    """Contiguous (first step, last step, phase) runs of "eva/phase"."""
    segments: list[list] = []
    for step, row in zip(steps_of(metrics), metrics):
        phase = row.get("eva/phase")
        if not isinstance(phase, str):
            continue
        if segments and segments[-1][2] == phase:
            segments[-1][1] = step
        else:
            segments.append([step, step, phase])
    return [tuple(segment) for segment in segments]


def sort_key(value: Any) -> tuple:
    """Numbers before text, numbers by value: difficulties 2, 10 sort as 2 < 10, not "10" < "2"."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


# --- finding runs ---------------------------------------------------------------------------------


def find_runs(root: Path) -> list[Run]:
    """Every run under `root`, parents before their subfolders."""
    runs: list[Run] = []
    for folder, subfolders, files in os.walk(root):
        here, names = Path(folder), set(files)
        subfolders[:] = sorted(d for d in subfolders if d not in SKIPPED_FOLDERS and not d.startswith("."))
        iterations = [d for d in subfolders if ITER_FOLDER.match(d)]
        if "iterations.json" in names or any((here / d / "creator").is_dir() or (here / d / "pairs").is_dir()
                                             for d in iterations):
            runs.append(Run("iterate", here))
            # Its creator and pairs stages are evolve outputs that belong to this section.
            subfolders[:] = [d for d in subfolders if d not in iterations]
        if names & set(ONLINE_FILES + BENCH_FILES):
            runs.append(Run("online", here))
        if "summary.json" in names and names & set(CREATOR_FILES):
            runs.append(Run("creator", here))
        if any((here / name / "results.json").is_file() for name in DEMO_RESULTS):
            runs.append(Run("demo", here))
        if names & set(SCORE_FILES):
            runs.append(Run("scores", here))
        bench_results = read_json(here / "results.json") if "results.json" in names else None
        if isinstance(bench_results, dict) and (isinstance(bench_results.get("arms"), dict)
                                                or isinstance(bench_results.get("families"), dict)):
            runs.append(Run("bench", here))
    return attach_bench_files(runs)


def attach_bench_files(runs: list[Run]) -> list[Run]:
    """A folder with bench files but no training logs joins the one online run below it, if one.

    The bench harness may write its curves next to an arm's folder while the trainer writes into
    <arm>/model/; with several runs below, which one they belong to is unknown, so they stay apart.
    """
    online = [r for r in runs if r.kind == "online" and any((r.path / f).is_file() for f in ONLINE_FILES)]
    kept = []
    for run in runs:
        if run.kind == "online" and run not in online:
            below = [r for r in online if run.path in r.path.parents]
            if len(below) == 1 and below[0].bench_dir is None:
                below[0].bench_dir = run.path
                continue
        kept.append(run)
    return kept


# --- HTML pieces ----------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return "–" if value is None else str(value)


def cell(value: Any) -> str:
    if isinstance(value, Html):
        return f"<td>{value}</td>"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="num">{html.escape(fmt(value))}</td>'
    return f"<td>{html.escape(fmt(value))}</td>"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def prompt(value: Any) -> Html:
    text = as_text(value)
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT] + f" … ({len(text) - MAX_TEXT} more characters)"
    return Html(f'<div class="prompt">{html.escape(text)}</div>')


def rewards_text(values: Any) -> str:
    if not isinstance(values, list):
        return "–"
    shown = " ".join("–" if number(v) is None else f"{v:.2f}" for v in values[:8])
    return shown + (f" … (+{len(values) - 8})" if len(values) > 8 else "")


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def heading(text: str) -> str:
    return f"<h3>{html.escape(text)}</h3>"


def absent(names: Sequence[str]) -> str:
    return note("not present in this run: " + ", ".join(names)) if names else ""


def key_numbers(items: Sequence[tuple[str, Any]]) -> str:
    return table(["", "value"], [(label, value) for label, value in items if value not in (None, "")])


def first_last(values: Sequence[float], steps: Sequence[float]) -> str:
    return (f"{values[0]:.3f} (step {steps[0]:g}) → {values[-1]:.3f} (step {steps[-1]:g}); "
            f"min {min(values):.3f}, max {max(values):.3f}")


def spread_over_parents(rows: Iterable[dict], limit: int, parent_key: str, child_key: str) -> list[dict]:
    """The first `limit` rows with distinct children and at most two children per parent: the top
    parent's four children would otherwise fill the table with one lineage."""
    picked, seen, per_parent = [], set(), Counter()
    for row in rows:
        child, parent = as_text(row.get(child_key)), as_text(row.get(parent_key))
        if child in seen or per_parent[parent] >= 2:
            continue
        seen.add(child)
        per_parent[parent] += 1
        picked.append(row)
        if len(picked) == limit:
            break
    return picked


def round_robin(groups: dict[Any, list[dict]], limit: int) -> list[dict]:
    """Up to `limit` rows taken from each group in turn, so that every group shows an example."""
    queues = [list(rows) for rows in groups.values() if rows]
    picked: list[dict] = []
    while queues and len(picked) < limit:
        for queue in list(queues):
            if len(picked) == limit:
                break
            picked.append(queue.pop(0))
            if not queue:
                queues.remove(queue)
    return picked


# --- plots ----------------------------------------------------------------------------------------


def new_figure(panels: int, columns: int = 2, panel_height: float = 2.7):
    """(figure, axes) for `panels` panels on matplotlib's Agg canvas, or (None, []) without matplotlib.

    A bare Figure with its own canvas (no pyplot) keeps the report from touching the caller's global
    matplotlib state: it renders the same inside a notebook or on a headless training node.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None, []
    columns = min(columns, panels)
    rows = math.ceil(panels / columns)
    fig = Figure(figsize=(5.6 * columns, panel_height * rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(rows, columns, squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


def embed(fig, caption: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return embed_png(data, caption)


def embed_png(data: str, caption: str) -> str:
    alt = html.escape(caption, quote=True)
    return (f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def no_matplotlib() -> str:
    return note("matplotlib is not installed: plots left out (pip install matplotlib)")


def shade_phases(ax, segments: Sequence[tuple[float, float, str]]) -> None:
    for first, last, phase in segments:
        if phase in PHASE_COLORS:
            ax.axvspan(first - 0.5, last + 0.5, color=PHASE_COLORS[phase], zorder=0, lw=0)


def phase_legend(fig, segments: Sequence[tuple[float, float, str]]) -> None:
    from matplotlib.patches import Patch

    shown = [p for p in PHASE_COLORS if any(phase == p for _, _, phase in segments)]
    if shown:
        fig.legend(handles=[Patch(color=PHASE_COLORS[p], label=p) for p in shown], loc="outside upper center",
                   ncols=len(shown), fontsize=8, title="eva phase", title_fontsize=8)


def bar_panel(ax, counts: Counter, title: str) -> None:
    labels = sorted(counts, key=sort_key)
    ax.bar([str(label) for label in labels], [counts[label] for label in labels], color="#4c72b0")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelsize=7, rotation=30 if len(labels) > 6 else 0)


def stack_panel(ax, rows: Sequence[dict], key: str) -> None:
    """Stacked counts per category over the steps, from rows {step, key: {category: count}}."""
    rows = [row for row in rows if isinstance(row.get(key), dict)]
    categories = sorted({c for row in rows for c in row[key]}, key=sort_key)
    steps = steps_of(rows)
    stacks = [[number(row[key].get(c)) or 0.0 for row in rows] for c in categories]
    ax.stackplot(steps, stacks, labels=[str(c) for c in categories], alpha=0.85)
    ax.set_title(f"buffer composition over time: {key}", fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), ncols=1 + len(categories) // 12)


# --- online runs ----------------------------------------------------------------------------------


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


# --- offline creator outputs (evolve, demo creator_step, iterate's creator stage) -----------------


@dataclass
class CreatorOutput:
    folder: Path
    summary: dict
    evolved: list[dict]  # {parent, child, label, method, depth, info}
    rejects: list[dict]  # {stage, category, reason, prompt, parent}
    rewards: dict[str, list]  # prompt text -> its sampled rewards
    info: list[float]  # informativeness of every estimated prompt (A_min where computed here)
    mean_rewards: list[float]
    info_label: str


def a_min(rewards: Sequence[Any]) -> float | None:
    """|max - min| of the finite rewards (EVA.md, the offline default metric); None below two."""
    finite = [r for r in (number(x) for x in rewards) if r is not None]
    return max(finite) - min(finite) if len(finite) >= 2 else None


def load_creator_output(folder: Path) -> CreatorOutput:
    summary = read_json(folder / "summary.json") or read_json(folder / "DONE.json") or {}
    summary = summary if isinstance(summary, dict) else {}
    estimates, _ = read_jsonl(folder / "estimates.jsonl")  # the demo's: rewards and info per metric
    info_label = "A_min"
    if not estimates:
        for shard in sorted((folder / "shards").glob("estimate-*.jsonl")):
            estimates += read_jsonl(shard)[0]
    if not estimates:  # pairs.jsonl lacks the tied prompts, but has every prompt that gave a pair
        estimates = read_jsonl(folder / "pairs.jsonl")[0]
        info_label = "A_min, prompts with a pair"
    rewards, infos, means = {}, [], []
    for row in estimates:
        values = row.get("rewards")
        if not isinstance(values, list):
            continue
        rewards.setdefault(as_text(row.get("prompt")), values)
        stored = row.get("info") if isinstance(row.get("info"), dict) else {}
        info = number(stored.get("A_min"))
        info = a_min(values) if info is None else info
        finite = [r for r in (number(x) for x in values) if r is not None]
        if info is not None:
            infos.append(info)
        if finite:
            means.append(statistics.fmean(finite))

    evolved = []
    next_rows, _ = read_jsonl(folder / "next_prompts.jsonl")
    for row in next_rows:
        if row.get("eva_origin") == "evolved":
            evolved.append({"parent": row.get("eva_parent"), "child": row.get("prompt"), "label": row.get("label"),
                            "method": row.get("eva_method"), "depth": row.get("eva_depth"),
                            "info": number(row.get("eva_info"))})
    if not evolved:  # the demo also writes every accepted child, without the parent's info
        for row in read_jsonl(folder / "children.jsonl")[0]:
            evolved.append({"parent": row.get("parent"), "child": row.get("prompt"), "label": row.get("label"),
                            "method": row.get("method"), "depth": row.get("depth"), "info": None})

    rejects = []
    for row in read_jsonl(folder / "rejects.jsonl")[0]:
        reason = str(row.get("reason") or "")
        # evolve writes stage/category; the demo's rows are filtered children with "<filter>: <why>"
        stage = row.get("stage") or ("child" if row.get("parent") else "prompt")
        category = row.get("category") or reason.partition(":")[0]
        rejects.append({"stage": stage, "category": category, "reason": reason, "prompt": row.get("prompt"),
                        "parent": row.get("parent")})
    return CreatorOutput(folder, summary, evolved, rejects, rewards, infos, means, info_label)


def creator_counts(output: CreatorOutput) -> dict:
    counts = output.summary.get("counts")
    return counts if isinstance(counts, dict) else {}


def evolved_table(outputs: Sequence[tuple[str, CreatorOutput]]) -> str:
    """Evolved prompts, most informative parents first, spread over the outputs (iterations)."""
    groups = {}
    for name, output in outputs:
        ranked = sorted(output.evolved, key=lambda r: -(r["info"] if r["info"] is not None else -math.inf))
        groups[name] = [{**row, "where": name} for row in spread_over_parents(ranked, MAX_EXAMPLES, "parent", "child")]
    rows = round_robin(groups, MAX_EXAMPLES)
    if not rows:
        return note("not present in this run: evolved prompts (next_prompts.jsonl / children.jsonl)")
    lookup = {name: output.rewards for name, output in outputs}
    header = ["iteration"] if len(outputs) > 1 else []
    header += ["parent", "parent rewards", "parent info", "child", "label", "method", "depth"]
    return table(header, [
        ([r["where"]] if len(outputs) > 1 else [])
        + [prompt(r["parent"]), rewards_text(lookup[r["where"]].get(as_text(r["parent"]))), r["info"],
           prompt(r["child"]), as_text(r["label"]), r["method"], r["depth"]] for r in rows])


def rejects_tables(outputs: Sequence[tuple[str, CreatorOutput]]) -> list[str]:
    counts: Counter = Counter()
    example: dict[tuple, str] = {}
    for _, output in outputs:
        for row in output.rejects:
            key = (row["stage"], row["category"])
            counts[key] += 1
            example.setdefault(key, row["reason"])
    if not counts:
        return [note("not present in this run: rejects (rejects.jsonl)")]
    parts = [table(["stage", "category", "count", "example reason"],
                   [(stage, category, count, example[(stage, category)])
                    for (stage, category), count in counts.most_common()])]
    # Rejected children are what the filters did; prompt-stage rejects (ties, too long) come after.
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for name, output in outputs:
        for row in output.rejects:
            groups[(row["stage"] == "prompt", row["category"], name)].append({**row, "where": name})
    groups = dict(sorted(groups.items(), key=lambda item: item[0]))
    children_first = {key: rows for key, rows in groups.items() if not key[0]} or groups
    rows = round_robin(children_first, MAX_EXAMPLES)
    header = ["iteration"] if len(outputs) > 1 else []
    header += ["stage", "reason", "prompt", "parent"]
    parts.append(table(header, [([r["where"]] if len(outputs) > 1 else [])
                                + [r["stage"], r["reason"], prompt(r["prompt"]),
                                   prompt(r["parent"]) if r["parent"] else "–"] for r in rows]))
    return parts


def histogram_figure(outputs: Sequence[tuple[str, CreatorOutput]]) -> str:
    with_data = [(name, o) for name, o in outputs if o.info or o.mean_rewards]
    if not with_data:
        return ""
    fig, (info_ax, reward_ax) = new_figure(2, panel_height=2.6)
    if fig is None:
        return no_matplotlib()
    def shared_bins(values):
        # one set of bins for every iteration, so that their outlines compare bar by bar
        low, high = min(values, default=0.0), max(values, default=1.0)
        return [low + (high - low) * k / 20 for k in range(21)] if high > low else 20

    info_bins = shared_bins([v for _, o in with_data for v in o.info])
    reward_bins = shared_bins([v for _, o in with_data for v in o.mean_rewards])
    for name, output in with_data:
        label = name or None
        if output.info:
            info_ax.hist(output.info, bins=info_bins, histtype="step", lw=1.5, label=label)
        if output.mean_rewards:
            reward_ax.hist(output.mean_rewards, bins=reward_bins, histtype="step", lw=1.5, label=label)
    info_ax.set_title(f"informativeness per prompt ({with_data[-1][1].info_label})", fontsize=9)
    reward_ax.set_title("mean reward per prompt", fontsize=9)
    for ax in (info_ax, reward_ax):
        ax.set_ylabel("prompts", fontsize=8)
        ax.tick_params(labelsize=7)
        if len(with_data) > 1:
            ax.legend(fontsize=7)
    return embed(fig, "the creator's estimate: n sampled responses per prompt, scored by the reward")


def creator_section(run: Run) -> Section:
    section = Section()
    output = load_creator_output(run.path)
    counts = creator_counts(output)
    missing = [name for name in ("next_prompts.jsonl", "rejects.jsonl", "pairs.jsonl")
               if not (run.path / name).is_file()]
    if not (run.path / "children.jsonl").is_file():  # the demo writes children.jsonl, evolve does not
        section.parts.append(absent(missing))
    if counts.get("prompts/in") is not None:
        section.highlights.append(f"{counts['prompts/in']} prompts, {counts.get('prompts/pairs', '–')} pairs")
    if counts.get("children/generated"):
        section.highlights.append(f"children {counts.get('children/accepted', 0)}/{counts['children/generated']} "
                                  f"accepted")
    section.parts.append(heading("Counts"))
    if counts:
        groups: dict[str, list] = defaultdict(list)
        for key, value in counts.items():
            groups[key.partition("/")[0]].append(f"{key.partition('/')[2] or key} {value}")
        section.parts.append(table(["group", "counts"], [(g, ", ".join(v)) for g, v in groups.items()]))
    else:
        section.parts.append(note("summary.json has no counts"))
    info = output.summary.get("info")
    if isinstance(info, dict) and info:
        stats = ("mean", "std", "min", "median", "max")
        section.parts.append(heading("Informativeness of the estimated prompts, per metric"))
        section.parts.append(table(["metric", *stats], [
            (metric, *(number(v.get(s)) for s in stats)) for metric, v in info.items() if isinstance(v, dict)]))
    info_mean = output.summary.get("info_mean")  # the demo's summary
    if isinstance(info_mean, dict) and info_mean:
        section.parts.append(heading("Mean informativeness of the seed prompts, per metric"))
        section.parts.append(table(["metric", "mean"], [(m, number(v)) for m, v in info_mean.items()]))
    greedy = output.summary.get("held_out_greedy")
    if isinstance(greedy, dict) and greedy:
        section.parts.append(heading("Held-out greedy reward of the starting policy"))
        section.parts.append(held_out_table({"theta_0": greedy}))
    section.parts.append(histogram_figure([("", output)]))
    arguments = output.summary.get("args") if isinstance(output.summary.get("args"), dict) else {}
    if arguments.get("eva.evolver") == "none":
        section.parts.append(note("estimate and pairs only (--eva.evolver none): no evolved prompts"))
    else:
        section.parts.append(heading("Evolved prompts beside their parents"))
        section.parts.append(evolved_table([("", output)]))
    section.parts.append(heading("Rejects"))
    section.parts.extend(rejects_tables([("", output)]))
    return section


# --- offline iterations ---------------------------------------------------------------------------


def held_out_table(results: dict) -> str:
    """Policies (rows) x splits (columns): "reward (exact)" from {policy: {split: {reward, exact}}}."""
    splits = sorted({s for r in results.values() if isinstance(r, dict) for s, v in r.items() if isinstance(v, dict)},
                    key=lambda s: (s != "all", s))

    def entry(value):
        if not isinstance(value, dict) or number(value.get("reward")) is None:
            return "–"
        exact = number(value.get("exact"))
        return f"{value['reward']:.3f}" + (f" ({exact:.2f})" if exact is not None else "")

    return table(["policy", *(f"{s}: reward (exact)" for s in splits)],
                 [(name, *(entry(r.get(s)) for s in splits)) for name, r in results.items() if isinstance(r, dict)])


def iterate_section(run: Run) -> Section:
    section = Section()
    table_rows = read_json(run.path / "iterations.json")
    recorded = {row["iteration"]: row for row in table_rows or [] if isinstance(row, dict) and "iteration" in row}
    folders = {int(m.group(1)): run.path / d.name for d in run.path.iterdir()
               if d.is_dir() and (m := ITER_FOLDER.match(d.name))}
    if table_rows is None:
        section.parts.append(note("not present in this run: iterations.json (unfinished?); rows read from the "
                                  "iter_<t>/ folders"))
    rows, outputs, evals = [], [], {}
    for t in sorted(set(recorded) | set(folders)):
        row, folder = recorded.get(t, {}), folders.get(t)
        creator = None
        if folder is not None and (folder / "creator").is_dir():
            creator = load_creator_output(folder / "creator")
            outputs.append((f"iter {t}", creator))
        counts = row.get("creator") if isinstance(row.get("creator"), dict) else {}
        counts = counts or (creator_counts(creator) if creator else {})
        pairs_summary = {}
        if folder is not None:
            pairs_summary = read_json(folder / "pairs" / "summary.json") or read_json(folder / "pairs" / "DONE.json")
        pair_counts = pairs_summary.get("counts", {}) if isinstance(pairs_summary, dict) else {}
        info = number(row.get("info_A_min_mean"))
        if info is None and creator:
            info = number((creator.summary.get("info") or {}).get("A_min", {}).get("mean"))
        evaluation = row.get("eval") or (read_json(folder / "eval" / "DONE.json") if folder else None)
        if isinstance(evaluation, dict):
            evals[t] = evaluation
        rows.append({"iteration": t, "prompts in": counts.get("prompts/in"),
                     "pairs": row.get("pairs", pair_counts.get("prompts/pairs")),
                     "ties": row.get("ties", pair_counts.get("prompts/ties")), "A_min mean": info,
                     "children accepted/generated": (f"{counts['children/accepted']}/{counts['children/generated']}"
                                                     if "children/generated" in counts else None),
                     "next evolved+original": (f"{counts['next/evolved']}+{counts.get('next/original', 0)}"
                                               if "next/evolved" in counts else None),
                     "filters": {k.removeprefix("filter/"): v for k, v in counts.items() if k.startswith("filter/")}})
    section.highlights.append(f"{len(rows)} iteration(s)")
    if evals:
        last = evals[max(evals)]
        split = "all" if "all" in last else next(iter(last))
        if isinstance(last.get(split), dict) and number(last[split].get("reward")) is not None:
            section.highlights.append(f"held-out {split} {last[split]['reward']:.3f} after iter {max(evals)}")

    section.parts.append(heading("Iterations"))
    columns = ["iteration", "prompts in", "pairs", "ties", "A_min mean", "children accepted/generated",
               "next evolved+original"]
    section.parts.append(table(columns, [[row[c] for c in columns] for row in rows]))
    if evals:
        section.parts.append(heading("Held-out reward after each iteration"))
        section.parts.append(held_out_table({f"iter {t}": e for t, e in sorted(evals.items())}))
    filters = sorted({name for row in rows for name in row["filters"]})
    if filters:
        section.parts.append(heading("Children rejected per filter"))
        section.parts.append(table(["filter", *(f"iter {row['iteration']}" for row in rows)],
                                   [(name, *(row["filters"].get(name) for row in rows)) for name in filters]))
    section.parts.append(iterate_plot(rows, evals))
    section.parts.append(histogram_figure(outputs))
    if outputs:
        section.parts.append(heading("Evolved prompts beside their parents"))
        section.parts.append(evolved_table(outputs))
        section.parts.append(heading("Rejects"))
        section.parts.extend(rejects_tables(outputs))
    else:
        section.parts.append(note("not present in this run: iter_<t>/creator/ (a --static arm has no creator)"))
    return section


def iterate_plot(rows: Sequence[dict], evals: dict) -> str:
    splits = sorted({s for e in evals.values() for s, v in e.items() if isinstance(v, dict)},
                    key=lambda s: (s != "all", s))
    infos = [(row["iteration"], row["A_min mean"]) for row in rows if row["A_min mean"] is not None]
    panels = int(bool(splits)) + int(bool(infos))
    if not panels or len(rows) < 2:  # one iteration is a table row, not a curve
        return ""
    fig, axes = new_figure(panels, panel_height=2.6)
    if fig is None:
        return no_matplotlib()
    axes = list(axes)
    if splits:
        ax = axes.pop(0)
        for split in splits:
            points = [(t, number(e.get(split, {}).get("reward"))) for t, e in sorted(evals.items())]
            points = [(t, v) for t, v in points if v is not None]
            ax.plot([t for t, _ in points], [v for _, v in points], marker="o", lw=2.2 if split == "all" else 1.2,
                    label=split)
        ax.set_title("held-out greedy reward after each iteration", fontsize=9)
        ax.legend(fontsize=7)
    if infos:
        ax = axes.pop(0)
        ax.plot([t for t, _ in infos], [v for _, v in infos], marker="o", color="#4c72b0")
        ax.set_title("mean A_min of the creator's input prompts", fontsize=9)
    for ax in fig.axes:
        ax.set_xlabel("iteration", fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.tick_params(labelsize=7)
    return embed(fig, "per iteration, from iterations.json or the iter_<t>/ folders")


# --- demo results and prompt scores ---------------------------------------------------------------


def demo_section(run: Run) -> Section:
    section = Section()
    titles = {"solver": "One offline DPO round: static vs eva prompts", "online": "Online RLOO: static vs eva prompts"}
    for name in DEMO_RESULTS:
        results = read_json(run.path / name / "results.json")
        held_out = results.get("held_out") if isinstance(results, dict) else None
        section.parts.append(heading(titles[name]))
        if not isinstance(held_out, dict):
            section.parts.append(note(f"not present in this run: {name}/results.json"))
            continue
        if number(results.get("num_pairs")) is not None:
            section.parts.append(note(f"{results.get('num_prompts')} prompts, {results['num_pairs']} pairs per arm"))
        section.parts.append(held_out_table(held_out))
        for policy, splits in held_out.items():
            reward = number((splits.get("all") or {}).get("reward")) if isinstance(splits, dict) else None
            if reward is not None and not policy.startswith("theta_0"):
                section.highlights.append(f"{policy}: all {reward:.3f}")
    section.parts.append(note("held-out greedy reward per split, exact-match share in parentheses"))
    return section


def bench_section(run: Run) -> Section:
    """results.json of openrlhf_eva.bench: one table per task ("families"), or the older single table."""
    section = Section()
    results = read_json(run.path / "results.json")
    if isinstance(results.get("families"), dict):
        tasks = [(name, {s: (v or {}).get("reward") for s, v in (family.get("theta_0") or {}).items()
                         if isinstance(v, dict)}, family.get("arms") or {})
                 for name, family in results["families"].items() if isinstance(family, dict)]
    else:
        tasks = [("", results.get("theta_0") if isinstance(results.get("theta_0"), dict) else {}, results["arms"])]

    def interval(stat):
        if not isinstance(stat, dict) or number(stat.get("mean")) is None:
            return "–"
        low, high = (stat.get("ci95") or [None, None])[:2]
        bounds = f" [{low:.3f}, {high:.3f}]" if number(low) is not None and number(high) is not None else " (no CI)"
        return f"{stat['mean']:.3f}{bounds}"

    for task, theta, arms in tasks:
        splits = list(next((a["test"] for a in arms.values() if isinstance(a.get("test"), dict)), {}))
        start = [f"{theta[s]:.3f}" if number(theta.get(s)) is not None else "–" for s in splits]
        rows = [("θ0 (start)", "", *start, "")] if theta else []
        best_name, best_all = None, -math.inf
        for name, arm in arms.items():
            if not isinstance(arm, dict):
                continue
            test = arm.get("test") if isinstance(arm.get("test"), dict) else {}
            rows.append((name, len(arm.get("seeds") or []), *(interval(test.get(s)) for s in splits),
                         interval((arm.get("delta_vs_static") or {}).get("all"))))
            mean_all = number((test.get("all") or {}).get("mean"))
            if mean_all is not None and mean_all > best_all:
                best_name, best_all = name, mean_all
        title = f"{task}: held-out reward per arm" if task else "Held-out reward per arm"
        section.parts.append(heading(f"{title}: mean over seeds [95% bootstrap CI; none below 3 seeds]"))
        section.parts.append(table(["arm", "seeds", *splits, "Δ vs static, all"], rows))
        section.highlights.append(f"{task + ': ' if task else ''}{len(arms)} arms")
        if best_name is not None:
            section.highlights.append(f"{task + ' ' if task else ''}best all: {best_name} {best_all:.3f}")
    for png in sorted(run.path.glob("*.png"))[:MAX_BENCH_PLOTS]:  # the bench's own plots, as it drew them
        section.parts.append(embed_png(base64.b64encode(png.read_bytes()).decode("ascii"), png.name))
    return section


def scores_section(run: Run) -> Section:
    section = Section()
    summary = read_json(run.path / "prompt_scores.json")
    sets = summary.get("sets") if isinstance(summary, dict) else None
    if not isinstance(sets, dict):
        sets = sets_from_csv(run.path / "prompt_scores.csv")
        section.parts.append(note("not present in this run: prompt_scores.json; means computed from the CSV"))
    else:
        judge = summary.get("judge") if isinstance(summary.get("judge"), dict) else {}
        section.parts.append(note(f"judge: {judge.get('model', '?')} ({judge.get('backend', '?')})"))

    def mean_std(s, key):
        mean, std = number(s.get(f"{key}_mean")), number(s.get(f"{key}_std"))
        return "–" if mean is None else f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")

    def topics(s):
        shares = s.get("topics") if isinstance(s.get("topics"), dict) else {}
        top = sorted(shares.items(), key=lambda item: -(number(item[1]) or 0))[:3]
        return ", ".join(f"{t} {v:.0%}" for t, v in top if number(v) is not None) or "–"

    section.parts.append(heading("Judge scores per prompt set (1-5)"))
    section.parts.append(table(
        ["set", "prompts", "complexity", "quality", "unparsed complexity/quality", "top topics"],
        [(name, s.get("prompts"), mean_std(s, "complexity"), mean_std(s, "quality"),
          f"{s.get('complexity_unparsed', '–')}/{s.get('quality_unparsed', '–')}", topics(s))
         for name, s in sets.items() if isinstance(s, dict)]))
    for name, s in sets.items():
        if isinstance(s, dict) and number(s.get("complexity_mean")) is not None:
            section.highlights.append(f"{name}: complexity {s['complexity_mean']:.2f}")
    png = run.path / "prompt_scores.png"
    if png.is_file():  # score_prompts drew it already: embed its bytes rather than redraw
        section.parts.append(embed_png(base64.b64encode(png.read_bytes()).decode("ascii"),
                                       "prompt_scores.png: mean complexity and quality, topic mix per set"))
    return section


def sets_from_csv(path: Path) -> dict:
    """prompt_scores.json's per-set summary, recomputed from prompt_scores.csv's rows."""
    columns: dict[str, dict[str, list]] = defaultdict(lambda: {"complexity": [], "quality": [], "topic": []})
    counts: Counter = Counter()
    try:
        with open(path, newline="", encoding="utf-8") as file:
            for row in csv.DictReader(file):
                name = row.get("set") or "?"
                counts[name] += 1
                for key in ("complexity", "quality"):
                    try:
                        columns[name][key].append(float(row.get(key) or ""))
                    except ValueError:
                        pass
                if row.get("topic"):
                    columns[name]["topic"].append(row["topic"])
    except OSError:
        return {}
    sets = {}
    for name, total in counts.items():
        values = columns[name]
        entry: dict[str, Any] = {"prompts": total}
        for key in ("complexity", "quality"):
            entry[f"{key}_mean"] = statistics.fmean(values[key]) if values[key] else None
            entry[f"{key}_std"] = statistics.pstdev(values[key]) if values[key] else None
            entry[f"{key}_unparsed"] = total - len(values[key])
        topics = Counter(values["topic"])
        entry["topics"] = {t: c / len(values["topic"]) for t, c in topics.items()}
        sets[name] = entry
    return sets


# --- the page -------------------------------------------------------------------------------------


def overview_plot(runs: Sequence[Run], root: Path) -> str:
    """Every online run's reward (and held-out reward) on one axis, for runs side by side (bench arms)."""
    curves = []
    for run in runs:
        if run.kind != "online":
            continue
        metrics, _ = read_jsonl(run.path / "eva_metrics.jsonl")
        curve, _ = read_jsonl((run.bench_dir or run.path) / "bench_curve.jsonl")
        held_out = [{"step": r.get("step"), "reward": (r.get("all") or {}).get("reward")} for r in curve
                    if isinstance(r.get("all"), dict)]
        if series(metrics, "reward_mean")[1] or series(held_out, "reward")[1]:
            curves.append((short_name(run.path, root), metrics, held_out))
    if len(curves) < 2:
        return ""
    caption = "all online runs of this report on one axis"
    if len(curves) > MAX_OVERVIEW_RUNS:
        caption = f"the first {MAX_OVERVIEW_RUNS} of the {len(curves)} online runs of this report on one axis"
        curves = curves[:MAX_OVERVIEW_RUNS]
    with_held_out = any(series(h, "reward")[1] for _, _, h in curves)
    fig, axes = new_figure(2 if with_held_out else 1, panel_height=3.2)
    if fig is None:
        return no_matplotlib()
    for name, metrics, held_out in curves:
        axes[0].plot(*series(metrics, "reward_mean"), lw=1.2, label=name)
        if with_held_out:
            axes[1].plot(*series(held_out, "reward"), marker="o", ms=3, lw=1.2, label=name)
    axes[0].set_title("training reward (mean over the batch)", fontsize=9)
    if with_held_out:
        axes[1].set_title("held-out reward, split all (bench_curve.jsonl)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    # one legend beside the panels: inside, a dozen run names would cover the curves
    fig.legend(handles=axes[0].get_legend_handles_labels()[0], loc="outside right upper", fontsize=7)
    return embed(fig, caption)


def short_name(path: Path, root: Path) -> str:
    name = str(path.relative_to(root)) if path != root else path.name
    return name if len(name) <= 48 else "…" + name[-47:]


def render_section(run: Run) -> Section:
    renderers = {"bench": bench_section, "online": online_section, "iterate": iterate_section,
                 "creator": creator_section, "demo": demo_section, "scores": scores_section}
    return renderers[run.kind](run)


def build_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the HTML report of every run under `run_dir` to `out` (default run_dir/report.html)."""
    root = Path(run_dir).resolve()
    if not root.is_dir():
        raise ReportError(f"{run_dir} is not a folder")
    runs = sorted(find_runs(root), key=lambda r: (r.path.parts, KIND_ORDER.index(r.kind)))
    if not runs:
        raise ReportError(f"no eva run logs under {root}; looked for {LOOKED_FOR}")
    sections = [render_section(run) for run in runs]

    summary_rows = []
    body = []
    for number_, (run, section) in enumerate(zip(runs, sections), start=1):
        anchor = f"run-{number_}"
        name = short_name(run.path, root) if run.path != root else "."
        summary_rows.append((Html(f'<a href="#{anchor}">{number_}</a>'), KIND_LABELS[run.kind], name,
                             "; ".join(section.highlights) or "–"))
        body.append(f'<section id="{anchor}"><h2>{number_}. {html.escape(KIND_LABELS[run.kind])}: '
                    f"{html.escape(name)}</h2>" + "".join(section.parts)
                    + '<p class="back"><a href="#top">back to the summary</a></p></section>')
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    page = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>eva report: {html.escape(root.name)}</title><style>{STYLE}</style></head><body>",
        '<h1 id="top">eva run report</h1>',
        note(f"{root} — {len(runs)} section(s), generated {generated} by python -m openrlhf_eva.report"),
        "<h2>Summary</h2>",
        table(["#", "kind", "folder", "highlights"], summary_rows),
        overview_plot(runs, root),
        *body,
        "</body></html>",
    ]
    out_path = Path(out) if out is not None else root / "report.html"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(page) + "\n", encoding="utf-8")
    os.replace(tmp, out_path)
    return out_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m openrlhf_eva.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run's folder, or a folder holding several runs")
    parser.add_argument("--out", default=None, help="the HTML file to write (default: RUN_DIR/report.html)")
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    """Build the report; returns its path. Bad input exits with status 2 and the reason, like argparse."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        path = build_report(args.run_dir, args.out)
    except (ReportError, OSError) as error:
        parser.error(str(error))
    print(f"[eva] wrote {path}")
    return path


if __name__ == "__main__":
    main()
