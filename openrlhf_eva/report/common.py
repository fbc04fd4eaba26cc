"""The report's shared pieces: what it looks for, reading logs, finding runs, HTML and plot helpers."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from collections import Counter
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
