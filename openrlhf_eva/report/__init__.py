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

The package: this file builds the page; ``common`` reads logs, finds runs and holds the HTML and plot
helpers; ``online`` renders online runs; ``offline`` renders creator steps, iterations, demo and bench
results and prompt scores.
"""

from __future__ import annotations

import argparse
import html
import os
import time
from pathlib import Path
from typing import Sequence

from .common import (Html, KIND_LABELS, KIND_ORDER, LOOKED_FOR, MAX_OVERVIEW_RUNS, ReportError, Run, STYLE, Section,
    embed, find_runs, new_figure, no_matplotlib, note, read_jsonl, series, table)
from .online import online_section
from .offline import bench_section, creator_section, demo_section, iterate_section, scores_section


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
