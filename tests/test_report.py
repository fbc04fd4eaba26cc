"""openrlhf_eva.report: one self-contained HTML file from a run's logs alone.

The logs are made by the real code that writes them where that is cheap: an online run drives
OnlinePromptSource with the embedded task evolver and reward and writes the files the way
train_rloo's log()/fit() do; offline creator folders come from creator_step; prompt scores from
score_prompts with a scripted judge. The bench harness files are hand-written in their shape.
"""

import html
import json
import random
import re
import shutil
import statistics
import sys
from pathlib import Path

import pytest
import torch

import openrlhf_eva.embedded as embedded
from openrlhf_eva import score_prompts
from openrlhf_eva.creator import TaskEvolver, informativeness, write_jsonl
from openrlhf_eva.creator.filters import Filter
from openrlhf_eva.creator.online import OnlinePromptSource
from openrlhf_eva.creator.step import creator_step
from openrlhf_eva.embedded.data import make_seeds
from openrlhf_eva.embedded.reward import score
from openrlhf_eva.report import ReportError, build_report, main

EVOLVE_FILE = Path(embedded.__file__).parent / "evolve_func.py"
# A hand-written log line whose prompt is markup: the report must show it as text.
MARKUP_PROMPT = "<script>alert('evolved')</script> & sort 4321"
EXTERNAL_REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


class MaxDifficultyFilter(Filter):
    """Rejects children past difficulty 4. The embedded evolver never repeats itself, so without a
    filter that bites the logs would hold no rejected child to report."""

    name = "too_hard"

    def __call__(self, child, parent, seen):
        difficulty = child.metadata.get("difficulty", 0)
        return f"difficulty {difficulty} > 4" if difficulty > 4 else None


def task_seeds(n=32):
    """make_seeds rows in the form read_prompts gives a trainer: task fields under "metadata"."""
    return [{"prompt": r["prompt"], "label": r["label"],
             "metadata": {"kind": r["kind"], "difficulty": r["difficulty"]}} for r in make_seeds(n=n)]


def sampled_rewards(labels, step, n=4):
    """n "responses" per prompt, right, one character short or wrong, scored by the embedded reward."""
    rng = random.Random(step)
    responses = [[rng.choice([label, label[:-1], "0"]) for _ in range(n)] for label in labels]
    return responses, torch.tensor([[score(r, label) for r in rs] for rs, label in zip(responses, labels)])


def write_online_run(folder: Path, eva: bool = True) -> None:
    """eva_metrics/eva_children/eva_buffer.jsonl as train_rloo writes them, plus the bench harness's files.

    eva=False is the static arm: seed prompts only, no children and no buffer file."""
    folder.mkdir(parents=True)
    source = OnlinePromptSource(task_seeds(), 8, TaskEvolver(EVOLVE_FILE) if eva else None, capacity=24,
                                total_prompts=96, seed=3,
                                filters=("empty", "unchanged", "duplicate", MaxDifficultyFilter()))
    composition = []
    step = 0
    with open(folder / "eva_metrics.jsonl", "w") as metrics_file, open(folder / "eva_children.jsonl", "w") as children:
        while batch := source.next_batch():
            step += 1
            responses, rewards = sampled_rewards([p.label for p in batch], step)
            eva_metrics = source.observe(rewards, step, responses)
            from_buffer = torch.tensor([p.buffer_id is not None for p in batch])
            metrics = {
                "step": step, "optimizer_steps": step, "reward_mean": float(rewards.mean()),
                "reward_std": float(rewards.std()),
                "reward_mean_seed_prompts": float(rewards[~from_buffer].mean()) if (~from_buffer).any() else None,
                "reward_mean_buffer_prompts": float(rewards[from_buffer].mean()) if from_buffer.any() else None,
                "response_length_mean": statistics.fmean(len(r) for rs in responses for r in rs),
                "truncated_rate": 0.0, "kl_coef": 0.0, "policy_loss": 0.1 / step, "actor_lr": 1e-4, "kl": 0.0,
                **eva_metrics, "timing/step": 0.5,
            }
            metrics_file.write(json.dumps(metrics) + "\n")
            children.writelines(json.dumps(row, default=str) + "\n" for row in source.last_children)
            kinds = [entry.metadata["kind"] for entry in source.buffer]
            levels = [entry.metadata["difficulty"] for entry in source.buffer]
            composition.append({"step": step, "kinds": {k: kinds.count(k) for k in set(kinds)},
                                "difficulty": {str(d): levels.count(d) for d in set(levels)}})
        if not eva:
            return
        children.write(json.dumps({
            "step": step, "parent": "sort 321", "parent_id": None, "parent_info": 9.0, "parent_rewards": [1.0, 0.0],
            "prompt": MARKUP_PROMPT, "label": "1234", "method": "deepen", "depth": 1, "metadata": {"kind": "sort"},
            "accepted": True, "reason": None}) + "\n")
    source.buffer.to_jsonl(folder / "eva_buffer.jsonl")
    write_jsonl(folder / "buffer_composition.jsonl", composition)
    write_jsonl(folder / "bench_curve.jsonl", [
        {"step": s, "in_dist": {"reward": 0.4 + 0.01 * s, "exact": 0.2}, "harder": {"reward": 0.2, "exact": 0.1},
         "all": {"reward": 0.3 + 0.01 * s, "exact": 0.15}, "difficulty=2": {"reward": 0.5, "exact": 0.3},
         "difficulty=10": {"reward": 0.1, "exact": 0.0}} for s in (0, 4, 8, 12)])


def write_creator_folder(folder: Path, seeds, seed: int) -> dict:
    """The files openrlhf_eva.evolve's finish() writes, from a real creator_step; returns the counts."""
    responses, rewards = sampled_rewards([row["label"] for row in seeds], seed, n=6)
    rows = [{**row["metadata"], "prompt": row["prompt"], "label": row["label"]} for row in seeds]
    step = creator_step(rows, rewards, TaskEvolver(EVOLVE_FILE), seed=seed,
                        filters=("empty", "unchanged", "duplicate", MaxDifficultyFilter()))
    info = informativeness(rewards, metric="A_min")
    pairs = [{"prompt": row["prompt"], "chosen": rs[0], "rejected": rs[-1], "index": i, "label": row["label"],
              "rewards": rewards[i].tolist(), "info": {"A_min": float(info[i])}}
             for i, (row, rs) in enumerate(zip(seeds, responses)) if info[i] > 0]
    rejects = [{"stage": "prompt", "index": i, "prompt": row["prompt"], "label": row["label"], "category": "tie",
                "reason": "every scored response has reward 1", "rewards": rewards[i].tolist()}
               for i, row in enumerate(seeds) if info[i] == 0]
    rejects += [{"stage": "child", "index": step.selected[child.parent_index], "prompt": child.prompt,
                 "parent": seeds[step.selected[child.parent_index]]["prompt"], "method": child.method,
                 "category": "filtered", "reason": reason} for child, reason in step.rejected]
    counts = {**step.counts, "prompts/in": len(seeds), "prompts/pairs": len(pairs),
              "prompts/ties": len(seeds) - len(pairs), "prompts/rejected": 0}
    write_jsonl(folder / "pairs.jsonl", pairs)
    write_jsonl(folder / "next_prompts.jsonl", step.next_set)
    write_jsonl(folder / "rejects.jsonl", rejects)
    (folder / "summary.json").write_text(json.dumps({
        "counts": counts, "info": {"A_min": {"mean": float(info.mean()), "std": float(info.std()),
                                             "min": float(info.min()), "median": float(info.median()),
                                             "max": float(info.max())}}}))
    return counts


def write_iterate_run(folder: Path) -> list[dict]:
    """iterations.json and iter_<t>/{creator,pairs,eval}/ as openrlhf_eva.iterate leaves them."""
    table, prompts = [], task_seeds(24)
    for t in (1, 2):
        counts = write_creator_folder(folder / f"iter_{t}" / "creator", prompts, seed=t)
        evaluation = {"all": {"reward": 0.3 + 0.1 * t, "exact": 0.1 * t, "n": 10},
                      "harder": {"reward": 0.1 * t, "exact": 0.0, "n": 5}}
        (folder / f"iter_{t}" / "eval").mkdir(parents=True)
        (folder / f"iter_{t}" / "eval" / "DONE.json").write_text(json.dumps(evaluation))
        table.append({"iteration": t, "pairs": counts["prompts/pairs"], "ties": counts["prompts/ties"],
                      "trained_from": {"pairs": 10 - t, "creator": t}, "info_A_min_mean": 0.2 * t,
                      "creator": counts, "eval": evaluation})
        next_rows = [json.loads(line) for line in open(folder / f"iter_{t}" / "creator" / "next_prompts.jsonl")]
        prompts = [{"prompt": r["prompt"], "label": r["label"],
                    "metadata": {"kind": r["kind"], "difficulty": r["difficulty"]}} for r in next_rows]
    (folder / "iterations.json").write_text(json.dumps(table))
    return table


def write_demo_creator_step(folder: Path) -> list[tuple]:
    """creator_step/ as openrlhf_eva.demo writes it; returns the rejected (child, reason) pairs."""
    seeds = make_seeds(n=32)
    responses, rewards = sampled_rewards([row["label"] for row in seeds], 0, n=6)
    step = creator_step(seeds, rewards, TaskEvolver(EVOLVE_FILE), seed=0,
                        filters=("empty", "unchanged", "duplicate", MaxDifficultyFilter()))
    infos = {name: informativeness(rewards, metric=name) for name in ("A_min", "A_avg")}
    write_jsonl(folder / "estimates.jsonl", [
        {**seed, "responses": responses[i], "rewards": rewards[i].tolist(),
         "info": {name: float(info[i]) for name, info in infos.items()}, "selected": i in step.selected}
        for i, seed in enumerate(seeds)])
    write_jsonl(folder / "children.jsonl", [
        {"parent": seeds[step.selected[c.parent_index]]["prompt"], "prompt": c.prompt, "label": c.label,
         "method": c.method, "depth": c.depth, **c.metadata} for c in step.children])
    write_jsonl(folder / "rejects.jsonl", [
        {"parent": seeds[step.selected[c.parent_index]]["prompt"], "prompt": c.prompt, "reason": reason}
        for c, reason in step.rejected])
    write_jsonl(folder / "next_prompts.jsonl", step.next_set)
    (folder / "summary.json").write_text(json.dumps(
        {"num_seeds": len(seeds), "n": 6, "counts": dict(step.counts), "timings": {},
         "info_mean": {name: float(info.mean()) for name, info in infos.items()},
         "held_out_greedy": {"all": {"reward": 0.31, "exact": 0.1, "n": 10}}}))
    return step.rejected


def judge(frames):
    """A scripted judge: complexity 3 and quality 4 for every prompt, topic math."""
    return ["Complexity: 3\nQuality: 4\nTopic: math" for _ in frames]


@pytest.fixture(scope="module")
def online_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("online") / "run"
    write_online_run(folder)
    return folder


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_self_contained(page: str) -> None:
    assert '<img alt="' in page and 'src="data:image/png;base64,' in page
    assert not EXTERNAL_REFERENCE.search(page), EXTERNAL_REFERENCE.search(page).group(0)
    assert "<link" not in page and "<script" not in page


def test_online_run_report_has_plots_examples_and_reasons_in_one_file(online_run, tmp_path):
    run = shutil.copytree(online_run, tmp_path / "run")  # the report lands in the run folder
    path = build_report(run)
    page = path.read_text()

    assert path == run / "report.html"
    assert_self_contained(page)
    assert page.count("data:image/png;base64,") == 3  # training curves, held-out curve, composition
    assert html.escape(MARKUP_PROMPT) in page  # the most informative parent's child, first, escaped
    children = read_rows(online_run / "eva_children.jsonl")
    reasons = [c["reason"] for c in children if not c["accepted"]]
    assert reasons and html.escape(reasons[0]) in page and "too_hard" in page
    evolved = [c for c in children if c["accepted"] and c["prompt"] != MARKUP_PROMPT]
    assert any(html.escape(c["prompt"]) in page for c in evolved)
    metrics = read_rows(online_run / "eva_metrics.jsonl")
    phases = [m["eva/phase"] for m in metrics]
    assert {"warmup", "mixup", "bootstrap"} <= set(phases)
    assert f"warmup 1–{phases.count('warmup')}" in page  # phases with their step ranges
    assert "Deepest lineage" in page and "held-out reward, all" in page
    assert "held-out reward, difficulty=2" not in page  # groups are plotted, not listed with the splits
    assert "not present in this run" not in page


def test_a_folder_with_only_eva_metrics_still_gives_a_report(online_run, tmp_path, capsys):
    folder = tmp_path / "metrics_only"
    folder.mkdir()
    shutil.copy(online_run / "eva_metrics.jsonl", folder)
    with open(folder / "eva_metrics.jsonl", "a") as file:
        file.write('{"step": 13, "reward_mean": 0.')  # killed mid-write
    out = tmp_path / "elsewhere" / "metrics.html"

    assert main([str(folder), "--out", str(out)]) == out
    page = out.read_text()

    assert f"wrote {out}" in capsys.readouterr().out
    assert_self_contained(page)
    assert page.count("data:image/png;base64,") == 1
    assert "not present in this run: eva_buffer.jsonl, eva_children.jsonl, bench_curve.jsonl" in page
    assert "skipped unreadable lines: 1 in eva_metrics.jsonl" in page
    # the rejections per filter come from the per-step counters when the children file is absent
    rejected = sum(m.get("eva/rejected_too_hard", 0) for m in read_rows(online_run / "eva_metrics.jsonl"))
    assert rejected > 0 and f'<td>too_hard</td><td class="num">{rejected:g}</td>' in page


def test_many_runs_get_one_section_each_behind_a_summary_table(online_run, tmp_path):
    root = tmp_path / "bench"
    # the bench harness may write its files beside the arm's model folder rather than into it
    shutil.copytree(online_run, root / "online" / "eva_apart" / "model")
    for name in ("bench_curve.jsonl", "buffer_composition.jsonl"):
        shutil.move(root / "online" / "eva_apart" / "model" / name, root / "online" / "eva_apart" / name)
    write_online_run(root / "online" / "static" / "model", eva=False)
    table = write_iterate_run(root / "offline")
    sets = []
    for name, rows in (("seed", task_seeds(6)), ("evolved", task_seeds(6)[::-1])):
        write_jsonl(root / "sets" / f"{name}.jsonl", rows)
        sets.append(f"{name}={root / 'sets' / f'{name}.jsonl'}")
    score_prompts.main(["--sets", *sets, "--judge_model", "unused", "--output_dir", str(root / "scores")],
                       generate=judge)
    # the bench's aggregate (openrlhf_eva.bench's results.json schema)
    test = {split: {"mean": 0.4, "ci95": [0.35, 0.45], "exact": 0.2} for split in ("in_dist", "harder", "all")}
    (root / "results.json").write_text(json.dumps({
        "theta_0": {"in_dist": 0.3, "harder": 0.1, "all": 0.2},
        "arms": {"rloo/static": {"seeds": [0, 1], "test": test},
                 "rloo/A_avg": {"seeds": [0, 1], "test": {**test, "all": {"mean": 0.5, "ci95": [0.44, 0.56]}},
                                "delta_vs_static": {"all": {"mean": 0.1, "ci95": [0.02, 0.18], "n": 2}}}}}))

    page = build_report(root).read_text()

    assert_self_contained(page)
    sections = re.findall(r'<section id="(run-\d+)"><h2>\d+\. ([^:]+): ([^<]+)</h2>', page)
    assert [(kind, folder) for _, kind, folder in sections] == [
        ("bench results", "."), ("offline iterations", "offline"), ("online run", "online/eva_apart/model"),
        ("online run", "online/static/model"), ("prompt scores", "scores")]
    assert all(f'href="#{anchor}"' in page for anchor, _, _ in sections)
    assert "all online runs of this report on one axis" in page
    by_section = dict(zip([folder for _, _, folder in sections], page.split('<section id="run-')[1:]))
    apart = by_section["online/eva_apart/model"]
    assert f"bench files read from {root / 'online' / 'eva_apart'}" in apart and "held-out reward, all" in apart
    static = by_section["online/static/model"]
    assert "eva off: static prompts" in static and "no evolved children" in static
    assert "not present in this run: eva_buffer.jsonl, bench_curve.jsonl" in static
    assert "<td>rloo/A_avg</td><td class=\"num\">2</td><td>0.400 [0.350, 0.450]</td>" in page
    assert "<td>0.100 [0.020, 0.180]</td>" in page and "best all: rloo/A_avg 0.500" in page
    # iterations: pairs per row, held-out per split, filter counts, evolved prompts with their parents
    assert "Children rejected per filter" in page and "<td>too_hard</td>" in page
    assert "<td>iter 2</td><td>0.500 (0.20)</td><td>0.200 (0.00)</td>" in page
    last = read_rows(root / "offline" / "iter_2" / "creator" / "next_prompts.jsonl")
    evolved = [r for r in last if r["eva_origin"] == "evolved"]
    assert any(html.escape(r["prompt"]) in page and html.escape(r["eva_parent"]) in page for r in evolved)
    assert f'<td class="num">{table[1]["pairs"]}</td>' in page
    assert "<th>trained (from creator)</th>" in page and "<td>10 (2)</td>" in page
    # prompt scores: the per-set table and score_prompts' own figure
    assert "<td>seed</td><td class=\"num\">6</td><td>3.00 ± 0.00</td><td>4.00 ± 0.00</td>" in page
    assert "prompt_scores.png" in page


def test_demo_folders_are_recognized(online_run, tmp_path):
    root = tmp_path / "demo"
    rejected = write_demo_creator_step(root / "creator_step")
    (root / "online" / "eva" / "model").mkdir(parents=True)
    shutil.copy(online_run / "eva_metrics.jsonl", root / "online" / "eva" / "model")
    held_out = {"theta_0 (SFT)": {"all": {"reward": 0.31, "exact": 0.1}},
                "RLOO on eva prompts": {"all": {"reward": 0.42, "exact": 0.2}}}
    (root / "online" / "results.json").write_text(json.dumps({"held_out": held_out}))

    page = build_report(root).read_text()

    kinds = re.findall(r'<h2>\d+\. ([^:]+): ([^<]+)</h2>', page)
    assert kinds == [("demo results", "."), ("creator step", "creator_step"), ("online run", "online/eva/model")]
    assert "<td>RLOO on eva prompts</td><td>0.420 (0.20)</td>" in page
    assert "not present in this run: solver/results.json" in page
    assert "RLOO on eva prompts: all 0.420" in page  # in the summary table
    assert rejected and html.escape(rejected[0][1]) in page and html.escape(rejected[0][0].prompt) in page
    assert "<td>theta_0</td><td>0.310 (0.10)</td>" in page  # the starting policy, from summary.json


def test_a_folder_with_nothing_recognizable_fails_naming_what_it_looked_for(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("nothing here")
    (tmp_path / "model").mkdir()

    with pytest.raises(ReportError, match="no eva run logs under .*eva_metrics.jsonl.*iterations.json"):
        build_report(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert "looked for eva_metrics.jsonl" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing")])
    assert exit_info.value.code == 2 and "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


def test_without_matplotlib_the_report_keeps_its_tables(online_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes `import matplotlib.figure` fail
    page = build_report(online_run, tmp_path / "report.html").read_text()

    assert "data:image/png" not in page and "matplotlib is not installed: plots left out" in page
    assert html.escape(MARKUP_PROMPT) in page and "Rejected children by filter" in page
