"""The report's sections for offline work: creator steps, iterations, demo results, bench results, prompt scores."""

from __future__ import annotations

import base64
import csv
import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .common import (DEMO_RESULTS, ITER_FOLDER, MAX_BENCH_PLOTS, MAX_EXAMPLES, Run, Section, absent, as_text, embed,
    embed_png, heading, new_figure, no_matplotlib, note, number, prompt, read_json, read_jsonl, rewards_text,
    round_robin, spread_over_parents, table)


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
        trained = row.get("trained_from") if isinstance(row.get("trained_from"), dict) else {}
        rows.append({"iteration": t, "prompts in": counts.get("prompts/in"),
                     "pairs": row.get("pairs", pair_counts.get("prompts/pairs")),
                     "ties": row.get("ties", pair_counts.get("prompts/ties")), "A_min mean": info,
                     # pairs iterate trained on, and how many came from the creator's own estimates
                     "trained (from creator)": (f"{sum(trained.values())} ({trained.get('creator', 0)})"
                                                if trained else None),
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
    columns = ["iteration", "prompts in", "pairs", "ties", "trained (from creator)", "A_min mean",
               "children accepted/generated", "next evolved+original"]
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
