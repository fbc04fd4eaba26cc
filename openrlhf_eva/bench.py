"""eva-bench: the paper's ablations at CPU scale, through the real trainers, with paired-bootstrap CIs.

    python -m openrlhf_eva.bench [--scale smoke|full] [--out runs/bench] [--workers 2] [--solvers rloo dpo]
    make bench        # the full grid, then examples/bench/{results.json,RESULTS.md,*.png}

Every arm starts from the same SFT warm start (the embedded tiny Llama, cached) and gets the same
number of rollouts and gradient steps; the seed prompts and training seed change with the bench
seed, the held-out test set never does (in_dist, harder, new_kind; see openrlhf_eva.embedded.data).

Arms (EVA.md's ablations):
    static          the seed prompts, several passes (plain OpenRLHF RLOO / one DPO round)
    no_evolve       eva's informative subset (A_min, weighted) trained on again, no new prompts
    <metric>        evolve, parents drawn by uniform | var | avg | inv_avg | inv_A_min | A_avg | A_dis
                    | A_min, weighted (the paper's sampling)
    A_min_greedy    evolve, the most informative parents (greedy) instead of weighted draws

RLOO (online): `openrlhf_eva.train_rloo`'s OnlineTrainer, in this process, with a budget of
`rloo_budget` x the seeds; the creator estimates from the batch's own rewards (no extra rollouts).
The trainer is subclassed only to evaluate the held-out set every `eval_every` steps and to log the
buffer's composition. DPO (offline): `openrlhf_eva.iterate`'s stages (evolve -> pairs -> train_dpo)
in this process; the creator's estimation rollouts count, so the static arm samples its pairs from
twice the prompts and every arm trains on the same number of pairs.

Outputs under --out: one folder per `<solver>/<arm>/seed_<k>` (the run's own logs, `result.json`),
`results.json` (schema below), `RESULTS.md` and PNG plots. `--publish DIR` copies the aggregate
files there (`make bench` publishes to examples/bench/). Runs are cached: a rerun redoes only the
runs without a result.json, so an interrupted bench resumes.

results.json: {"config": {...}, "theta_0": {split: reward}, "arms": {"<solver>/<arm>": {"seeds": [...],
"test": {split: {"mean", "ci95"}}, "delta_vs_static": {split: {"mean", "ci95"}}, "delta_vs_uniform":
{...}, "per_seed": {split: [...]}, "curve": [...]}}} with splits in_dist, harder, new_kind, all.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing
import os
import shutil
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import openrlhf_eva.embedded as embedded
from openrlhf_eva.creator import write_jsonl
from openrlhf_eva.embedded.data import SPLITS, TEST_SEED, make_seeds, make_test_set

EMBEDDED_DIR = Path(embedded.__file__).parent
REWARD_FILE = EMBEDDED_DIR / "reward_func.py"
EVOLVE_FILE = EMBEDDED_DIR / "evolve_func.py"
EVOLVE_METRICS = ("uniform", "var", "avg", "inv_avg", "inv_A_min", "A_avg", "A_dis", "A_min")
ARMS = ("static", "no_evolve", *EVOLVE_METRICS, "A_min_greedy")
SOLVERS = ("rloo", "dpo")
RESULT_FILE = "result.json"


@dataclass
class BenchConfig:
    """One bench scale. Everything an arm's result depends on is here (and in results.json)."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    arms: tuple[str, ...] = ARMS
    solvers: tuple[str, ...] = SOLVERS
    num_seed_prompts: int = 256
    # online RLOO
    rloo_budget: float = 4.0  # prompts served = budget x seeds, for every arm
    rloo_batch: int = 32
    rloo_n: int = 8
    rloo_lr: float = 3e-4
    rloo_warmup: float = 0.25  # Adam's first steps at full lr shake a small SFT policy badly (measured)
    rloo_buffer: int = 256
    rloo_eval_every: int = 8
    # offline DPO (one iteration of iterate)
    dpo_n: int = 6
    dpo_lr: float = 1e-4
    dpo_epochs: int = 2
    dpo_nll: float = 1.0
    dpo_pairs: int = 96  # pairs every arm trains on (the first this many of its pairs)
    dpo_batch: int = 16
    max_new_tokens: int = 16
    eval_rows: int | None = None  # None: the whole held-out set
    eval_set_seed: int = TEST_SEED  # tuning runs use another seed: a dev set, never the test set
    extra: dict = field(default_factory=dict)


SCALES = {
    "full": BenchConfig(),
    "smoke": BenchConfig(seeds=(0,), arms=("static", "no_evolve", "A_min"), num_seed_prompts=16, rloo_budget=2.0,
                         rloo_batch=8, rloo_n=4, rloo_buffer=16, rloo_eval_every=2, dpo_n=4, dpo_epochs=1, dpo_pairs=4, dpo_batch=4,
                         eval_rows=48),
}


# --- one run ----------------------------------------------------------------------------------------


def rloo_flags(config: BenchConfig, arm: str, model_dir: Path, seeds_file: Path, out: Path, seed: int) -> list[str]:
    """train_rloo's argv for one arm: shared settings plus the arm's eva flags."""
    flags = ["--actor.model_name_or_path", str(model_dir), "--data.prompt_dataset", str(seeds_file),
             "--data.input_key", "prompt", "--data.label_key", "label", "--data.apply_chat_template",
             "--data.max_len", "64", "--reward.remote_url", str(REWARD_FILE),
             "--rollout.batch_size", str(config.rloo_batch), "--rollout.n_samples_per_prompt", str(config.rloo_n),
             "--rollout.max_new_tokens", str(config.max_new_tokens), "--rollout.micro_batch_size", "64",
             "--train.batch_size", str(config.rloo_batch * config.rloo_n),
             "--train.micro_batch_size", str(config.rloo_batch * config.rloo_n),
             "--actor.adam.lr", str(config.rloo_lr), "--actor.lr_warmup_ratio", str(config.rloo_warmup),
             "--algo.kl.init_coef", "0", "--ds.zero_stage", "0",
             "--train.seed", str(seed), "--ckpt.output_dir", str(out / "model"), "--ckpt.path", str(out / "ckpt"),
             "--logger.logging_steps", "1000000"]
    budget = f"{config.rloo_budget}x"
    if arm == "static":
        return flags + ["--train.num_episodes", str(int(config.rloo_budget))]
    eva = ["--eva.total_prompts", budget, "--eva.buffer_size", str(config.rloo_buffer)]
    if arm == "no_evolve":
        return flags + eva + ["--eva.evolver", "replay", "--eva.metric", "A_min", "--eva.filters", "empty"]
    metric, mode = ("A_min", "greedy") if arm == "A_min_greedy" else (arm, "weighted")
    return flags + eva + ["--eva.evolver", "task", "--eva.evolver_path", str(EVOLVE_FILE), "--eva.metric", metric,
                          "--eva.sample_mode", mode, "--eva.filters", "empty", "unchanged", "duplicate"]


def run_rloo(config: BenchConfig, arm: str, model_dir: Path, out: Path, seed: int, test_rows: list[dict]) -> dict:
    """One online run in this process; returns its final held-out result and its curve."""
    from openrlhf_eva import compat, train_rloo
    from openrlhf_eva.evaluate import evaluate_model

    class BenchTrainer(train_rloo.OnlineTrainer):
        """train_rloo's trainer, plus held-out evaluations and buffer composition in the logs."""

        def log(self, metrics: dict) -> None:
            super().log(metrics)
            step = metrics["step"]
            if self.evolver is not None:
                entries = [entry.metadata for entry in self.source.buffer]
                append_jsonl(out / "model" / "buffer_composition.jsonl", {
                    "step": step, "kinds": Counter(m.get("kind", "?") for m in entries),
                    "difficulty": Counter(str(m.get("difficulty", "?")) for m in entries)})
            if step % config.rloo_eval_every == 0 or step == self.source.num_batches:
                result = evaluate_model(self.actor.model.module, self.tokenizer, test_rows, REWARD_FILE,
                                        max_new_tokens=config.max_new_tokens, group_keys=("split", "difficulty"))
                append_jsonl(out / "model" / "bench_curve.jsonl", {"step": step, **result})

    seeds_file = out / "seeds.jsonl"
    write_jsonl(seeds_file, make_seeds(n=config.num_seed_prompts, seed=1000 + seed))
    for name in ("bench_curve.jsonl", "buffer_composition.jsonl"):
        (out / "model" / name).unlink(missing_ok=True)
    (out / "model").mkdir(parents=True, exist_ok=True)
    args = train_rloo.parse_args(rloo_flags(config, arm, model_dir, seeds_file, out, seed))
    compat.default_single_process_env()
    BenchTrainer(args).fit()
    curve = read_jsonl(out / "model" / "bench_curve.jsonl")
    metrics = read_jsonl(out / "model" / "eva_metrics.jsonl")
    shutil.rmtree(out / "ckpt", ignore_errors=True)
    return {"test": curve[-1], "curve": curve, "steps": len(metrics),
            "rollouts": sum(config.rloo_batch * config.rloo_n for _ in metrics),
            "train_reward_last": metrics[-1]["reward_mean"] if metrics else None}


def run_dpo(config: BenchConfig, arm: str, model_dir: Path, out: Path, seed: int, test_rows: list[dict]) -> dict:
    """One offline round (creator -> pairs -> DPO) through iterate's stages, in this process."""
    from openrlhf_eva import iterate
    from openrlhf_eva.evaluate import evaluate

    n = config.num_seed_prompts
    evolve_args = ["--reward.remote_url", str(REWARD_FILE), "--data.label_key", "label", "--data.apply_chat_template",
                   "--rollout.n_samples_per_prompt", str(config.dpo_n), "--rollout.max_new_tokens",
                   str(config.max_new_tokens), "--train.seed", str(seed), "--eva.filters", "empty", "unchanged",
                   "duplicate"]
    if arm == "static":
        # The creator's estimation rollouts count: static samples its pairs from 2n prompts.
        prompts = out / "prompts.jsonl"
        write_jsonl(prompts, make_seeds(n=2 * n, seed=1000 + seed))
        train_prompts = prompts
    else:
        prompts = out / "seeds.jsonl"
        write_jsonl(prompts, make_seeds(n=n, seed=1000 + seed))
        if arm == "no_evolve":
            creator = ["--eva.evolver", "replay", "--eva.metric", "A_min", "--eva.filters", "empty"]
        else:
            metric, mode = ("A_min", "greedy") if arm == "A_min_greedy" else (arm, "weighted")
            creator = ["--eva.evolver", "task", "--eva.evolver_path", str(EVOLVE_FILE), "--eva.metric", metric,
                       "--eva.sample_mode", mode]
        iterate.run_evolve(iterate.Stage(out / "creator"), str(model_dir), prompts, evolve_args, creator)
        train_prompts = out / "creator" / "next_prompts.jsonl"
    pairs = iterate.run_evolve(iterate.Stage(out / "pairs"), str(model_dir), train_prompts, evolve_args,
                               ["--eva.evolver", "none"])
    # Same gradient steps everywhere: every arm trains on the same number of pairs.
    dpo_args = ["--data.apply_chat_template", "--data.max_samples", str(config.dpo_pairs),
                "--train.micro_batch_size", str(config.dpo_batch), "--train.batch_size", str(config.dpo_batch),
                "--train.max_epochs", str(config.dpo_epochs), "--adam.lr",
                str(config.dpo_lr), "--model.beta", "0.1", "--eva.nll_coef", str(config.dpo_nll),
                "--ds.zero_stage", "0", "--train.seed", str(seed), "--lr_warmup_ratio", "0"]
    iterate.run_dpo(iterate.Stage(out / "model"), str(model_dir), out / "pairs" / "pairs.jsonl", dpo_args,
                    "inprocess")
    result = evaluate(out / "model", test_rows, REWARD_FILE, max_new_tokens=config.max_new_tokens)
    shutil.rmtree(out / "model" / "ckpt", ignore_errors=True)
    return {"test": result, "curve": [{"step": 1, **result}], "pairs": pairs["counts"]["prompts/pairs"],
            "trained_pairs": min(config.dpo_pairs, pairs["counts"]["prompts/pairs"])}


RUNNERS = {"rloo": run_rloo, "dpo": run_dpo}


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as file:
        file.write(json.dumps(row) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as file:
        return [json.loads(line) for line in file if line.strip()]


def leave_no_process_group() -> None:
    """Runs share their process: destroy any process group, and drop DeepSpeed's cached clone of
    the world group, which would otherwise point the next engine at a destroyed group."""
    import torch
    from deepspeed.utils import groups as deepspeed_groups

    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    deepspeed_groups._WORLD_GROUP = None


def run_one(task: tuple) -> dict:
    """A worker's unit: one (solver, arm, seed) run, cached by its result.json; errors are returned."""
    config, solver, arm, seed, model_dir, out, test_rows, threads = task
    result_path = out / RESULT_FILE
    if result_path.exists():
        return json.loads(result_path.read_text())
    import torch

    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    leave_no_process_group()  # earlier in-process work may have left a group, or a stale clone of one
    try:
        with open(out / "run.log", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            result = RUNNERS[solver](config, arm, model_dir, out, seed, test_rows)
    except Exception:
        return {"solver": solver, "arm": arm, "seed": seed, "error": traceback.format_exc()}
    finally:
        leave_no_process_group()
    result.update(solver=solver, arm=arm, seed=seed, seconds=time.time() - started)
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, result_path)
    return result


# --- statistics ---------------------------------------------------------------------------------------


def bootstrap_ci(values: Sequence[float], draws: int = 10_000, seed: int = 0) -> tuple[float, list[float]]:
    """Mean and 95% percentile-bootstrap interval over `values` (one per seed; for a paired
    difference, pass the per-seed differences). One value: the interval is that value."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), [float(values.mean())] * 2
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(draws, len(values)))].mean(axis=1)
    return float(values.mean()), [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def summarize(runs: list[dict], config: BenchConfig) -> dict:
    """results.json's "arms": per solver/arm, test means with CIs and paired deltas vs static and uniform."""
    by_arm: dict[str, dict[int, dict]] = {}
    for run in runs:
        by_arm.setdefault(f"{run['solver']}/{run['arm']}", {})[run["seed"]] = run
    arms = {}
    for key, seeds in sorted(by_arm.items(), key=lambda item: (SOLVERS.index(item[0].split("/")[0]),
                                                                ARMS.index(item[0].split("/")[1]))):
        solver = key.split("/")[0]
        order = sorted(seeds)
        entry: dict[str, Any] = {"seeds": order, "test": {}, "per_seed": {}}
        for split in SPLITS:
            values = [seeds[s]["test"][split]["reward"] for s in order]
            mean, ci = bootstrap_ci(values)
            entry["test"][split] = {"mean": mean, "ci95": ci,
                                    "exact": float(np.mean([seeds[s]["test"][split]["exact"] for s in order]))}
            entry["per_seed"][split] = values
        for baseline in ("static", "uniform"):
            other = by_arm.get(f"{solver}/{baseline}", {})
            shared = [s for s in order if s in other]
            if not shared or key == f"{solver}/{baseline}":
                continue
            entry[f"delta_vs_{baseline}"] = {}
            for split in SPLITS:
                diffs = [seeds[s]["test"][split]["reward"] - other[s]["test"][split]["reward"] for s in shared]
                mean, ci = bootstrap_ci(diffs)
                entry[f"delta_vs_{baseline}"][split] = {"mean": mean, "ci95": ci, "n": len(shared)}
        entry["curve"] = mean_curve([seeds[s]["curve"] for s in order])
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


# --- the bench ----------------------------------------------------------------------------------------


def theta_0_info(model_dir: Path, config: BenchConfig) -> dict[str, list[float]]:
    """Informativeness of the first seed set under every paper metric, from theta_0's own samples."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openrlhf_eva.creator import PAPER_METRICS, informativeness, load_plugin
    from openrlhf_eva.rollout import sample_responses

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    seeds = make_seeds(n=config.num_seed_prompts, seed=1000 + config.seeds[0])
    n = config.dpo_n
    rollouts = sample_responses(model, tokenizer, [r["prompt"] for r in seeds], n=n, max_new_tokens=config.max_new_tokens,
                                seed=config.seeds[0], progress=False)
    reward_func = load_plugin(REWARD_FILE).reward_func
    rewards = reward_func([q for qs in rollouts.queries for q in qs], [p for p in rollouts.prompts for _ in range(n)],
                          [r["label"] for r in seeds for _ in range(n)])["rewards"].view(len(seeds), n)
    return {metric: informativeness(rewards, metric=metric).tolist() for metric in PAPER_METRICS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m openrlhf_eva.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--out", default="runs/bench", help="run folder (cached runs are reused)")
    parser.add_argument("--warm-start", default=None, help="an HF model folder to start every arm from, or a "
                        "warm-start cache folder (default: <out>/warm_start; the demo's is <demo out>/model) where the "
                        "embedded SFT model is built once and reused")
    parser.add_argument("--solvers", nargs="+", choices=SOLVERS, default=None)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (one torch thread each)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a BenchConfig field, e.g. --set rloo_lr=1e-3 (recorded in results.json)")
    parser.add_argument("--publish", default=None, help="copy results.json, RESULTS.md and plots to this folder")
    return parser


def configure(args) -> BenchConfig:
    config = SCALES[args.scale]
    changes: dict[str, Any] = {}
    settable = [f.name for f in dataclasses.fields(BenchConfig) if f.name not in ("seeds", "arms", "solvers", "extra")]
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in settable:
            raise SystemExit(f"--set {item}: unknown or not settable field; settable: {', '.join(settable)}")
        changes[key] = type(getattr(config, key))(value) if getattr(config, key) is not None else int(value)
    for name in ("solvers", "arms", "seeds"):
        if getattr(args, name):
            changes[name] = tuple(getattr(args, name))
    return dataclasses.replace(config, **changes)


def main(argv: Sequence[str] | None = None) -> dict:
    from openrlhf_eva.embedded.warm_start import WarmStartConfig, warm_start
    from openrlhf_eva.evaluate import evaluate

    args = build_parser().parse_args(argv)
    config = configure(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    given = Path(args.warm_start or out / "warm_start")
    model_dir = given if (given / "config.json").exists() else warm_start(given, WarmStartConfig())
    test_rows = make_test_set(config.eval_set_seed)
    if config.eval_rows:  # smoke scale: an even slice of every split
        test_rows = test_rows[:: max(1, len(test_rows) // config.eval_rows)]
    theta_path = out / "theta_0.json"
    if not theta_path.exists():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from openrlhf_eva.evaluate import evaluate_model

        model = AutoModelForCausalLM.from_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        theta_path.write_text(json.dumps({
            "test": evaluate_model(model, tokenizer, test_rows, REWARD_FILE, max_new_tokens=config.max_new_tokens,
                                   group_keys=("split", "difficulty")),
            "info": theta_0_info(model_dir, config)}) + "\n")
    theta_0 = json.loads(theta_path.read_text())

    tasks = [(config, solver, arm, seed, model_dir, out / solver / arm / f"seed_{seed}", test_rows,
              1 if args.workers > 1 else 2)
             for seed in config.seeds for solver in config.solvers for arm in config.arms]
    runs, failures = [], []
    print(f"eva-bench ({args.scale}): {len(tasks)} runs = {len(config.solvers)} solvers x {len(config.arms)} arms x "
          f"{len(config.seeds)} seeds, {args.workers} workers; logs under {out}", flush=True)
    pool = multiprocessing.get_context("spawn").Pool(args.workers) if args.workers > 1 else None
    results = pool.imap_unordered(run_one, tasks) if pool else map(run_one, tasks)
    for done, result in enumerate(results, start=1):
        if "error" in result:
            failures.append(result)
            print(f"[{done}/{len(tasks)}] {result['solver']}/{result['arm']} seed {result['seed']} FAILED:\n"
                  f"{result['error']}", flush=True)
            continue
        runs.append(result)
        print(f"[{done}/{len(tasks)}] {result['solver']}/{result['arm']} seed {result['seed']}: all "
              f"{result['test']['all']['reward']:.3f}  harder {result['test']['harder']['reward']:.3f}  new_kind "
              f"{result['test']['new_kind']['reward']:.3f}  ({result['seconds']:.0f}s, "
              f"{(time.time() - started) / 60:.1f} min elapsed)", flush=True)
    if pool:
        pool.close()
        pool.join()
    if failures:
        raise SystemExit(f"{len(failures)} of {len(tasks)} runs failed; their logs: "
                         + ", ".join(str(out / f['solver'] / f['arm'] / f"seed_{f['seed']}" / "run.log")
                                     for f in failures))
    for run in runs:  # every curve starts at the shared theta_0
        run["curve"] = [{"step": 0, **theta_0["test"]}] + run["curve"]
    results = {
        "config": {**dataclasses.asdict(config), "scale": args.scale, "warm_start": str(model_dir),
                   "test_rows": len(test_rows), "minutes": (time.time() - started) / 60},
        "theta_0": {split: theta_0["test"][split]["reward"] for split in SPLITS},
        "theta_0_info": theta_0["info"],
        "arms": summarize(runs, config),
    }
    from openrlhf_eva import bench_report

    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    bench_report.write_markdown(results, out / "RESULTS.md")
    plots = bench_report.write_plots(results, runs, out)
    print(bench_report.markdown_table(results))
    if args.publish:
        publish = Path(args.publish)
        publish.mkdir(parents=True, exist_ok=True)
        for path in [out / "results.json", out / "RESULTS.md", *plots]:
            shutil.copy(path, publish / path.name)
        print(f"published results.json, RESULTS.md and {len(plots)} plots to {publish}")
    print(f"eva-bench done in {(time.time() - started) / 60:.1f} min: {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
