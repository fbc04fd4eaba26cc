"""eva-bench: does eva make a better model than the alternatives a user would pick? Through the real trainers.

    python -m openrlhf_eva.bench [--scale full|smoke] [--out runs/bench] [--families digits letters]
                                 [--task-dir DIR ...] [--model HF_DIR] [--solvers rloo dpo] [--arms ...]
                                 [--seeds 0 1 2 3 4] [--eval-set test|dev] [--workers 2] [--set key=value]
    make bench        # both embedded families, FULL_ARMS, 5 seeds -> examples/bench/ (about an hour)

Tasks. ``--task-dir DIR`` benchmarks a user's verifiable task (the folder format is in
``openrlhf_eva.bench_tasks``); by default the two embedded families, ``digits`` (the one the settings
were tuned on, on its dev set) and ``letters`` (frozen before any tuning), written as task folders.
With no ``--model`` every task gets the ~1M-parameter Llama with a character vocabulary taken from
its data, warm-started by SFT on its sft.jsonl through OpenRLHF's train_sft (cached), one epoch over
2048 rows: below its ceiling, so that RL has something to learn (see `BenchConfig.sft_epochs`).
The length limits (answer tokens, train_rloo's --data.max_len, the warm start's SFT cut) grow where a
task's own rows would not fit in them (`fit_lengths`); results.json records each family's "lengths".

Arms. Every arm of a task starts from the same model and gets the same rollouts; the seed prompts
and the training seed change with the bench seed, the held-out rows never do.
    static             the seed prompts, epoch after epoch (plain OpenRLHF)
    dynamic_filtering  static plus upstream's --algo.dynamic_filtering_enable (RLOO only): groups
                       whose mean reward is not strictly inside (0, 1) are dropped and replaced by the
                       next prompts; same rollout budget, so fewer gradient steps
    static_ranked      static whose rounds train on their most informative pairs (DPO only; iterate
                       --static --pair_order info): eva's pair ranking without the creator
    eva                the shipped defaults of train_rloo / iterate with the task evolver (RLOO:
                       A_avg, weighted, seed replay and the frontier bar; DPO: A_min, and each round
                       trains on the most informative pairs of its estimate and next sets)
    uniform            eva with parents drawn uniformly (evolving without informativeness; DPO:
                       its pairs unranked too)
    no_evolve          eva's informative prompts trained on again, nothing new written (replay)
    <metric>           eva with another informativeness metric (A_min, A_avg, A_dis, var, avg, ...)
RLOO: train_rloo's `OnlineTrainer` (openrlhf_eva.train_rloo_trainer) in this process, budget
`rloo_budget` x the seeds, evaluated every `rloo_eval_every` steps. DPO: `openrlhf_eva.iterate` (in
this process) for `dpo_rounds` rounds, each on the previous round's model and prompt set; the
creator's estimation rollouts count, so static samples its pairs from twice the prompts, and every
arm trains on the same number of pairs per round.

Results: greedy held-out reward (and exact share) per split, and sampled mean@`eval_samples` at
temperature 1. Intervals are 95% paired bootstraps over seeds, given only for 3 or more seeds.
`results.json`: {"config", "families": {task: {"theta_0": {split: {...}}, "splits": [...], "lengths",
"arms": {"<solver>/<arm>": {"seeds", "test": {split: {"mean", "ci95", "exact", "sampled"}},
"per_seed": {split: [...]}, "delta_vs_static" | "delta_vs_uniform" | "delta_vs_theta0":
{split: {"mean", "ci95", "n"}}, "curve", "steps", "rollouts"}}}}}. Each run keeps its final HF model
under `<out>/<task>/<solver>/<arm>/seed_<k>/model` and is cached by its result.json with the key of
its settings and start model: an interrupted bench resumes, a finished one trains nothing, and a run
whose settings changed is redone.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from openrlhf_eva import compat
from openrlhf_eva.bench_stats import summarize
from openrlhf_eva.bench_tasks import EMBEDDED_FAMILIES, Task, TaskError, load_task_dir, write_embedded_task
from openrlhf_eva.creator import write_jsonl

SOLVERS = ("rloo", "dpo")
METRIC_ARMS = ("A_min", "A_avg", "A_dis", "var", "avg", "inv_avg", "inv_A_min")
ARMS = ("static", "dynamic_filtering", "static_ranked", "eva", "uniform", "no_evolve", *METRIC_ARMS)
RLOO_ONLY, DPO_ONLY = ("dynamic_filtering",), ("static_ranked",)
# `make bench`: the arms the targets compare. At the 16x budget (about 170 s per RLOO run on 2 cores)
# these four fill the bench's 75 minutes; the ablations (no_evolve, the metric grid) run with --arms.
FULL_ARMS = ("static", "dynamic_filtering", "eva", "uniform")
NO_CREATOR_ARMS = ("static", "dynamic_filtering", "static_ranked")  # no eva flag reaches them
DEFAULT_ARMS = ("static", "eva", "uniform", "dynamic_filtering")  # a user's --task-dir run
ARM_ORDER = tuple(f"{solver}/{arm}" for solver in SOLVERS for arm in ARMS)  # results.json's order
ONLINE_METRIC, OFFLINE_METRIC = "A_avg", "A_min"  # what "eva" means: train_rloo's and evolve's defaults
RESULT_FILE = "result.json"
# BenchConfig fields added after runs were cached, with the value that reproduces the behaviour before them.
ADDED_LATER = {"dpo_seed_rounds": 0, "dpo_replay": "current", "dpo_pair_order": "file", "dpo_pair_pool": "next",
               "rloo_max_len": 64}
# iterate's schedule flags for the arms that run the creator; the baselines' keys leave them out.
CREATOR_SCHEDULE = ("dpo_seed_rounds", "dpo_replay", "dpo_pair_order", "dpo_pair_pool")


@dataclass
class BenchConfig:
    """One bench scale. Everything an arm's result depends on is here (and in results.json)."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    arms: tuple[str, ...] = FULL_ARMS
    dpo_arms: tuple[str, ...] = ("static", "eva", "uniform")
    solvers: tuple[str, ...] = SOLVERS
    num_seed_prompts: int = 256
    # The warm start (no --model): SFT epochs over the task's first sft_rows rows (None: all). Not to
    # its ceiling: from a start that SFT has saturated, RL only sharpens the policy (sampled reward
    # rises, greedy does not move; measured on the digit family's dev set, RESULTS.md).
    sft_epochs: int = 1
    sft_rows: int | None = 2048
    # online RLOO
    # Prompts served = budget x seeds, for every arm. 16x is 128 steps. At 32 steps (4x) no arm moved
    # greedy held-out reward past theta_0 (digits dev, 3 seeds: static - theta_0 on in_dist +0.015 at 4x,
    # +0.059 at 8x). At 8x eva's lead was cut short by the budget: eva - static on all, digits dev from
    # three starts, 5 seeds: -0.009 / +0.010 / +0.021 at 8x, +0.007 / +0.042 / +0.045 at 16x (RESULTS.md).
    rloo_budget: float = 16.0
    rloo_batch: int = 32
    rloo_n: int = 8
    rloo_lr: float = 3e-4
    rloo_warmup: float = 0.25  # Adam's first steps at full lr shake a small SFT policy badly (measured)
    # --algo.kl.init_coef, train_rloo's (and upstream's) default. Without it the policy stops emitting
    # EOS: on a weak digits start (dev set, sft_rows 1024, 3 seeds) responses grew 3.9 -> 10-11 tokens, up
    # to 44% truncated, greedy reward on all fell 0.108 -> 0.046 by step 8, eva ended below theta_0.
    rloo_kl: float = 0.01
    rloo_buffer: int = 256
    rloo_eval_every: int = 8
    # Extra train_rloo flags for every arm that runs eva (eva, uniform, no_evolve, metric arms), e.g.
    # "--eva.seed_replay 0.75": to try a candidate default on a dev set before shipping it.
    rloo_eva_flags: str = ""
    # offline DPO (iterate)
    dpo_rounds: int = 2
    dpo_n: int = 6
    # lr and pairs per round (every arm trains on the first dpo_pairs of its pairs): at 1e-4 and 96 pairs
    # static DPO hardly moved a weak start (digits dev, sft_rows 1024, 5 seeds: all +0.011 over theta_0);
    # at 3e-4 and 192 pairs it gains +0.038, and eva - static holds (+0.013 -> +0.015; normal start
    # +0.012 -> +0.019 [+0.015, +0.022]). Chosen on the dev set only (RESULTS.md, session 27).
    dpo_lr: float = 3e-4
    dpo_epochs: int = 2
    dpo_nll: float = 1.0
    dpo_pairs: int = 192
    dpo_batch: int = 16
    # Extra openrlhf_eva.evolve flags for every DPO arm that runs the creator, as rloo_eva_flags above.
    dpo_eva_flags: str = ""
    # iterate --seed_rounds for the arms that run the creator: rounds on the seeds before its first step.
    dpo_seed_rounds: int = 0
    dpo_replay: str = "current"  # iterate --replay for the arms that run the creator
    # iterate --pair_order and --pair_pool for the arms that run the creator. Each round trains on its
    # most informative pairs, from the creator's estimate set and its next set together. Against
    # the next set's first pairs (file, next), eva - static on all went from -0.006 to +0.027 on marks
    # dev and from +0.019 to +0.043 on digits dev (5 seeds; RESULTS.md, session 29).
    dpo_pair_order: str = "info"
    dpo_pair_pool: str = "both"
    # Length limits of every run, raised per task where its own data would not fit (`fit_lengths`).
    # rloo_max_len is train_rloo's --data.max_len: prompt and answer together.
    max_new_tokens: int = 16
    rloo_max_len: int = 64
    eval_samples: int = 4  # sampled mean@k at temperature 1, besides greedy
    eval_rows: int | None = None  # None: every held-out row
    eval_set: str = "test"  # "dev" for tuning: never tune on the test set
    extra: dict = field(default_factory=dict)


SCALES = {
    "full": BenchConfig(),
    "smoke": BenchConfig(seeds=(0,), arms=("static", "eva", "dynamic_filtering"), dpo_arms=("static", "eva"),
                         num_seed_prompts=16, rloo_budget=2.0, rloo_batch=8, rloo_n=4, rloo_buffer=16,
                         rloo_eval_every=2, dpo_rounds=2, dpo_n=4, dpo_epochs=1, dpo_pairs=4, dpo_batch=4,
                         eval_samples=2, eval_rows=48),
}


# --- one run ----------------------------------------------------------------------------------------


def arm_metric(arm: str, solver: str) -> str | None:
    """The informativeness metric an evolving arm uses (None: the arm does not evolve by metric)."""
    if arm == "eva":
        return ONLINE_METRIC if solver == "rloo" else OFFLINE_METRIC
    if arm == "uniform" or arm in METRIC_ARMS:
        return arm
    return None


def rloo_flags(config: BenchConfig, task: Task, arm: str, model_dir: Path, seeds_file: Path, out: Path,
               seed: int) -> list[str]:
    """train_rloo's argv for one arm: shared settings plus the arm's flags (eva's are its shipped defaults)."""
    flags = ["--actor.model_name_or_path", str(model_dir), "--data.prompt_dataset", str(seeds_file),
             "--data.input_key", "prompt", "--data.label_key", "label", "--data.apply_chat_template",
             "--data.max_len", str(config.rloo_max_len), "--reward.remote_url", str(task.reward_file),
             "--rollout.batch_size", str(config.rloo_batch), "--rollout.n_samples_per_prompt", str(config.rloo_n),
             "--rollout.max_new_tokens", str(config.max_new_tokens), "--rollout.micro_batch_size", "64",
             "--train.batch_size", str(config.rloo_batch * config.rloo_n),
             "--train.micro_batch_size", str(config.rloo_batch * config.rloo_n),
             "--actor.adam.lr", str(config.rloo_lr), "--actor.lr_warmup_ratio", str(config.rloo_warmup),
             "--algo.kl.init_coef", str(config.rloo_kl), "--ds.zero_stage", "0",
             "--train.seed", str(seed), "--ckpt.output_dir", str(out / "model"), "--ckpt.path", str(out / "ckpt"),
             "--logger.logging_steps", "1000000"]
    if arm in NO_CREATOR_ARMS:
        flags += ["--train.num_episodes", str(int(config.rloo_budget))]
        return flags + (["--algo.dynamic_filtering_enable"] if arm == "dynamic_filtering" else [])
    # The buffer is sized to this scale (the paper's 3200 is for 10K+ seeds); everything else is default.
    flags += ["--eva.total_prompts", f"{config.rloo_budget}x", "--eva.buffer_size", str(config.rloo_buffer),
              *config.rloo_eva_flags.split()]
    if arm == "no_evolve":
        # The replay evolver returns its parents unchanged, which the default filters (unchanged,
        # duplicate) reject every time: the buffer stayed empty and this arm was static, bitwise.
        return flags + ["--eva.evolver", "replay", "--eva.metric", ONLINE_METRIC, "--eva.filters", "empty"]
    flags += ["--eva.evolver", "task", "--eva.evolver_path", str(task.evolve_file)]
    return flags + ([] if arm == "eva" else ["--eva.metric", arm_metric(arm, "rloo")])


def run_rloo(config: BenchConfig, task: Task, arm: str, model_dir: Path, out: Path, seed: int,
             eval_rows: list[dict]) -> dict:
    """One online run in this process; returns its final held-out result and its curve."""
    from openrlhf_eva import train_rloo, train_rloo_trainer
    from openrlhf_eva.evaluate import evaluate_model

    class BenchTrainer(train_rloo_trainer.OnlineTrainer):
        """train_rloo's trainer, plus held-out evaluations and buffer composition in the logs."""

        def log(self, metrics: dict) -> None:
            super().log(metrics)
            step = metrics["step"]
            if self.evolver is not None:
                entries = [entry.metadata for entry in self.source.buffer]
                append_jsonl(out / "model" / "buffer_composition.jsonl", {
                    "step": step, "kinds": Counter(m.get("kind", "?") for m in entries),
                    "difficulty": Counter(str(m.get("difficulty", "?")) for m in entries)})
            if step % config.rloo_eval_every == 0:
                result = evaluate_model(self.actor.model.module, self.tokenizer, eval_rows, task.reward_file,
                                        max_new_tokens=config.max_new_tokens, group_keys=("split", "difficulty"))
                append_jsonl(out / "model" / "bench_curve.jsonl", {"step": step, **result})

    seeds_file = out / "seeds.jsonl"
    write_jsonl(seeds_file, draw_seeds(task, config.num_seed_prompts, seed))
    for name in ("bench_curve.jsonl", "buffer_composition.jsonl"):
        (out / "model" / name).unlink(missing_ok=True)
    (out / "model").mkdir(parents=True, exist_ok=True)
    args = train_rloo.parse_args(rloo_flags(config, task, arm, model_dir, seeds_file, out, seed))
    compat.default_single_process_env()
    trainer = BenchTrainer(args)
    trainer.fit()
    final = final_eval(trainer.actor.model.module, trainer.tokenizer, eval_rows, task, config, seed)
    metrics = read_jsonl(out / "model" / "eva_metrics.jsonl")
    shutil.rmtree(out / "ckpt", ignore_errors=True)
    curve = read_jsonl(out / "model" / "bench_curve.jsonl")
    if not curve or curve[-1]["step"] != len(metrics):
        curve.append({"step": len(metrics), **{k: v for k, v in final.items()}})
    return {"test": final, "curve": curve, "steps": len(metrics),
            "rollouts": sum(m.get("prompts_consumed", config.rloo_batch) for m in metrics) * config.rloo_n,
            "train_reward_last": metrics[-1]["reward_mean"] if metrics else None}


def dpo_evolve_flags(config: BenchConfig, task: Task, arm: str, seed: int) -> list[str]:
    """openrlhf_eva.evolve's argv for one DPO arm (iterate's creator and pairs stages; eva's are its defaults)."""
    flags = ["--reward.remote_url", str(task.reward_file), "--data.label_key", "label",
             "--data.apply_chat_template", "--rollout.n_samples_per_prompt", str(config.dpo_n),
             "--rollout.max_new_tokens", str(config.max_new_tokens), "--train.seed", str(seed)]
    if arm in NO_CREATOR_ARMS:  # iterate --static runs no creator; these flags only make its pairs
        return flags
    if arm == "no_evolve":
        flags += ["--eva.evolver", "replay", "--eva.metric", OFFLINE_METRIC, "--eva.filters", "empty"]
    else:
        flags += ["--eva.evolver", "task", "--eva.evolver_path", str(task.evolve_file)]
        flags += [] if arm == "eva" else ["--eva.metric", arm_metric(arm, "dpo")]
    return flags + config.dpo_eva_flags.split()


def run_dpo(config: BenchConfig, task: Task, arm: str, model_dir: Path, out: Path, seed: int,
            eval_rows: list[dict]) -> dict:
    """``dpo_rounds`` offline rounds through `openrlhf_eva.iterate`, in this process."""
    from openrlhf_eva import iterate

    n, rounds, seed_rounds = config.num_seed_prompts, config.dpo_rounds, config.dpo_seed_rounds
    # Equal rollouts: static samples pairs from 2n prompts a round. A creator round samples twice (its
    # estimates, then the pairs of its next set, of the same size), a seed round once: m(2R - s) = 2nR.
    m = 2 * n if arm in NO_CREATOR_ARMS else round(2 * n * rounds / (2 * rounds - seed_rounds))
    seeds = draw_seeds(task, m, seed)
    prompts = out / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": r["prompt"], "label": r["label"], **meta(r)} for r in seeds])
    heldout = out / "heldout.jsonl"
    write_jsonl(heldout, eval_rows)
    own = ["--pretrain", str(model_dir), "--prompt_data", str(prompts), "--output_dir", str(out / "iterate"),
           "--iterations", str(config.dpo_rounds), "--launcher", "inprocess", "--eval_data", str(heldout),
           "--eval_reward", str(task.reward_file), "--eval_max_new_tokens", str(config.max_new_tokens)]
    if arm in NO_CREATOR_ARMS:  # static: upstream DPO on the seeds' first pairs, as sampled
        own += ["--static", "--pair_order", "info" if arm == "static_ranked" else "file"]
    else:
        own += ["--seed_rounds", str(seed_rounds), "--replay", config.dpo_replay,
                "--pair_order", config.dpo_pair_order, "--pair_pool", config.dpo_pair_pool]
    dpo_args = ["--data.max_samples", str(config.dpo_pairs), "--train.micro_batch_size", str(config.dpo_batch),
                "--train.batch_size", str(config.dpo_batch), "--train.max_epochs", str(config.dpo_epochs),
                "--adam.lr", str(config.dpo_lr), "--model.beta", "0.1", "--eva.nll_coef", str(config.dpo_nll),
                "--ds.zero_stage", "0", "--train.seed", str(seed), "--lr_warmup_ratio", "0"]
    table = iterate.main([*own, "--evolve-args", *dpo_evolve_flags(config, task, arm, seed), "--dpo-args", *dpo_args])
    final_dir = Path(table[-1]["policy_out"])  # the last round that trained (iterate skips a round without pairs)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = final_eval(AutoModelForCausalLM.from_pretrained(final_dir), AutoTokenizer.from_pretrained(final_dir),
                       eval_rows, task, config, seed)
    shutil.copytree(final_dir, out / "model", dirs_exist_ok=True, ignore=shutil.ignore_patterns("ckpt", "DONE.json"))
    for t in range(1, config.dpo_rounds + 1):
        shutil.rmtree(out / "iterate" / f"iter_{t}" / "model" / "ckpt", ignore_errors=True)
    curve = [{"step": row["iteration"], **row["eval"]} for row in table]
    curve[-1] = {"step": config.dpo_rounds, **final}
    return {"test": final, "curve": curve, "steps": sum(row["trained"] for row in table),
            "pairs_per_round": [row["pairs"] for row in table],
            "rollouts": config.dpo_n * m * (rounds if arm in NO_CREATOR_ARMS else 2 * rounds - seed_rounds)}


RUNNERS = {"rloo": run_rloo, "dpo": run_dpo}


def meta(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("prompt", "label")}


def draw_seeds(task: Task, n: int, seed: int) -> list[dict]:
    """The bench seed's seed prompts: n rows of the task's pool, drawn by the bench seed."""
    pool = list(task.seeds)
    random.Random(1000 + seed).shuffle(pool)
    return pool[:n]


def final_eval(model, tokenizer, eval_rows: list[dict], task: Task, config: BenchConfig, seed: int) -> dict:
    from openrlhf_eva.evaluate import evaluate_model

    return evaluate_model(model, tokenizer, eval_rows, task.reward_file, max_new_tokens=config.max_new_tokens,
                          group_keys=("split", "difficulty"), samples=config.eval_samples, seed=seed)


def config_key(config: BenchConfig, model_dir: Path | None = None, solver: str | None = None,
               arm: str | None = None) -> str:
    """A run's cache key: every setting a `solver` run depends on (not which seeds, arms or solvers run,
    nor the other solver's `rloo_*`/`dpo_*` fields: a DPO change keeps the hour of RLOO runs). With no
    solver, the settings both share (theta_0's evaluation). An arm without a creator reads no eva flags,
    so a candidate flag keeps its runs (their key is the one with no flags given)."""
    others = tuple(f"{name}_" for name in SOLVERS if name != solver)
    settings = {k: v for k, v in dataclasses.asdict(config).items()
                if k not in ("seeds", "arms", "dpo_arms", "solvers") and not k.startswith(others)}
    if arm in NO_CREATOR_ARMS:
        settings[f"{solver}_eva_flags"] = ""
        for name in CREATOR_SCHEDULE:
            settings.pop(name, None)
    for name, former in ADDED_LATER.items():  # keyed only where they change what runs: old caches hold
        if settings.get(name) == former:
            settings.pop(name)
    text = json.dumps(settings, sort_keys=True) + (str(Path(model_dir).resolve()) if model_dir else "")
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as file:
        file.write(json.dumps(row) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as file:
        return [json.loads(line) for line in file if line.strip()]


def run_one(unit: tuple) -> dict:
    """A worker's unit: one (task, solver, arm, seed) run, cached by its result.json; errors are returned."""
    config, task, solver, arm, seed, model_dir, out, eval_rows, threads = unit
    result_path = out / RESULT_FILE
    key = config_key(config, model_dir, solver, arm)
    if result_path.exists():
        cached = json.loads(result_path.read_text())
        if cached.get("config_key") == key:
            return {**cached, "cached": True}
        shutil.rmtree(out)  # another configuration or start model: this run is redone
    import torch

    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    compat.leave_no_process_group()  # earlier in-process work may have left a group, or a stale clone of one
    try:
        with open(out / "run.log", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            result = RUNNERS[solver](config, task, arm, model_dir, out, seed, eval_rows)
    except Exception:
        return {"task": task.name, "solver": solver, "arm": arm, "seed": seed, "error": traceback.format_exc()}
    finally:
        compat.leave_no_process_group()
    result.update(task=task.name, solver=solver, arm=arm, seed=seed, seconds=time.time() - started, config_key=key)
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, result_path)
    return result


# --- the bench ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m openrlhf_eva.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--out", default="runs/bench", help="run folder (cached runs are reused)")
    parser.add_argument("--task-dir", action="append", default=[], metavar="DIR",
                        help="a task folder to benchmark (repeatable); default: the embedded families")
    parser.add_argument("--families", nargs="+", choices=EMBEDDED_FAMILIES, default=None,
                        help="embedded families to run (default: both, unless --task-dir is given)")
    parser.add_argument("--model", "--warm-start", dest="model", default=None,
                        help="an HF model folder every task starts from (default: a tiny Llama per task, "
                             "warm-started on its sft.jsonl)")
    parser.add_argument("--solvers", nargs="+", choices=SOLVERS, default=None)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=None,
                        help=f"arms (default: every arm for the embedded families, {' '.join(DEFAULT_ARMS)} for a "
                             "--task-dir); RLOO and DPO each run the ones they have")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--eval-set", choices=["test", "dev"], default=None,
                        help="held-out rows to report (dev: for tuning; never tune on test)")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (one torch thread each)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a BenchConfig field, e.g. --set rloo_lr=1e-3 (recorded in results.json)")
    parser.add_argument("--publish", default=None, help="copy results.json, RESULTS.md and plots to this folder")
    parser.add_argument("--notes", default=None, metavar="FILE",
                        help="markdown written into RESULTS.md below the targets (what was run, what fails)")
    return parser


def configure(args) -> BenchConfig:
    config = SCALES[args.scale]
    changes: dict[str, Any] = {}
    settable = [f.name for f in dataclasses.fields(BenchConfig)
                if f.name not in ("seeds", "arms", "dpo_arms", "solvers", "extra")]
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in settable:
            raise SystemExit(f"--set {item}: unknown or not settable field; settable: {', '.join(settable)}")
        current = getattr(config, key)
        changes[key] = type(current)(value) if current is not None else int(value)
    if args.arms:
        changes["arms"] = tuple(a for a in args.arms if a not in DPO_ONLY)
        changes["dpo_arms"] = tuple(a for a in args.arms if a not in RLOO_ONLY)
    elif args.task_dir:
        changes["arms"] = DEFAULT_ARMS
        changes["dpo_arms"] = tuple(a for a in DEFAULT_ARMS if a not in RLOO_ONLY)
    for name in ("solvers", "seeds"):
        if getattr(args, name):
            changes[name] = tuple(getattr(args, name))
    if args.eval_set:
        changes["eval_set"] = args.eval_set
    return dataclasses.replace(config, **changes)


def load_tasks(args, out: Path) -> list[Task]:
    need_sft = args.model is None
    tasks = [load_task_dir(path, need_sft=need_sft) for path in args.task_dir]
    families = args.families or ([] if args.task_dir else list(EMBEDDED_FAMILIES))
    for name in families:
        tasks.append(load_task_dir(write_embedded_task(name, out / "tasks" / name), name=name))
    names = [task.name for task in tasks]
    if len(set(names)) != len(names):
        raise SystemExit(f"two tasks share a folder name: {names}")
    return tasks


def fit_lengths(config: BenchConfig, task: Task, model: str | None) -> tuple[BenchConfig, dict]:
    """The bench's length limits for `task`, raised where its own data would not fit in them.

    An answer longer than max_new_tokens can never be written whole, and train_rloo cuts a prompt
    to what rloo_max_len leaves after it: either would cap every arm, silently. Such a limit grows
    to the longest row plus a quarter (evolved prompts and their answers grow). Limits the data fit
    in stay as they are, so the embedded families' runs, and their cache keys, do not change."""
    from transformers import AutoConfig, AutoTokenizer

    from openrlhf_eva.embedded.model import MAX_POSITIONS, build_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(model) if model else build_tokenizer(task.alphabet())
    positions = AutoConfig.from_pretrained(model).max_position_embeddings if model else MAX_POSITIONS
    need = task.lengths(tokenizer)
    raised = {}
    if need["answer"] > config.max_new_tokens:
        raised["max_new_tokens"] = need["answer"] + need["answer"] // 4
    answers = raised.get("max_new_tokens", config.max_new_tokens)
    if need["prompt"] + answers > config.rloo_max_len:
        raised["rloo_max_len"] = need["prompt"] + need["prompt"] // 4 + answers
    fitted = dataclasses.replace(config, **raised)
    if fitted.rloo_max_len > positions or need["sft"] > positions:
        raise TaskError(f"{task.folder}: prompts of up to {need['prompt']} tokens, answers of up to {need['answer']} "
                        f"and SFT rows of up to {need['sft']} need {max(fitted.rloo_max_len, need['sft'])} "
                        f"positions; the model has {positions}" + ("" if model else " (the tiny Llama; pass --model)"))
    if raised:
        print(f"{task.name}: its data need " + ", ".join(f"{k} {v}" for k, v in raised.items())
              + f" (longest prompt {need['prompt']} tokens, answer {need['answer']} with EOS)", flush=True)
    return fitted, {**need, "raised": raised}


def task_model(args, config: BenchConfig, task: Task, out: Path, sft_len: int) -> Path:
    """The model a task's arms start from: --model, or the tiny Llama warm-started on its SFT rows.
    Upstream's SFT dataset drops a row whose prompt reaches its max_len - 2 and cuts the others at
    max_len, EOS first (sft_dataset.py:154, :183), so the cut is the longest row (`sft_len`) where
    the default 48 is short of it."""
    if args.model:
        return Path(args.model)
    from openrlhf_eva.embedded.warm_start import WarmStartConfig, warm_start

    rows = task.sft[: config.sft_rows] if config.sft_rows else task.sft
    name = f"warm_start_e{config.sft_epochs}_r{config.sft_rows}"
    warm = WarmStartConfig(epochs=config.sft_epochs, max_len=max(WarmStartConfig.max_len, sft_len))
    return warm_start(out / task.name / name, warm, verbose=True, sft_rows=rows, alphabet=task.alphabet(),
                      eval_rows=task.test, reward_file=task.reward_file)


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    config = configure(args)
    notes = Path(args.notes).read_text() if args.notes else ""  # read now: a bad path fails before training
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    tasks = load_tasks(args, out)
    units, theta, lengths = [], {}, {}
    for task in tasks:
        task_config, lengths[task.name] = fit_lengths(config, task, args.model)
        model_dir = task_model(args, task_config, task, out, lengths[task.name]["sft"])
        eval_rows = task.eval_rows(task_config.eval_set)
        if task_config.eval_rows:  # smoke scale: an even slice of the held-out rows
            eval_rows = eval_rows[:: max(1, len(eval_rows) // task_config.eval_rows)]
        model_key = hashlib.sha256(str(Path(model_dir).resolve()).encode()).hexdigest()[:8]
        theta_name = f"theta_0_{task_config.eval_set}_{model_key}_{config_key(task_config)}.json"
        theta_path = out / task.name / theta_name
        theta_path.parent.mkdir(parents=True, exist_ok=True)
        if not theta_path.exists():
            from transformers import AutoModelForCausalLM, AutoTokenizer

            result = final_eval(AutoModelForCausalLM.from_pretrained(model_dir),
                                AutoTokenizer.from_pretrained(model_dir), eval_rows, task, task_config, seed=0)
            theta_path.write_text(json.dumps(result) + "\n")
        theta[task.name] = json.loads(theta_path.read_text())
        for seed in task_config.seeds:
            for solver in task_config.solvers:
                for arm in (task_config.arms if solver == "rloo" else task_config.dpo_arms):
                    if arm in METRIC_ARMS and arm == arm_metric("eva", solver):
                        continue  # that is the eva arm itself
                    units.append((task_config, task, solver, arm, seed, model_dir,
                                  out / task.name / solver / arm / f"seed_{seed}", eval_rows,
                                  1 if args.workers > 1 else 2))
    print(f"eva-bench ({args.scale}, {config.eval_set} set): {len(units)} runs over {len(tasks)} task(s) "
          f"({', '.join(t.name for t in tasks)}), {len(config.seeds)} seeds, {args.workers} workers; logs under {out}",
          flush=True)
    runs, failures = execute(units, args.workers, started)
    if failures:
        raise SystemExit(f"{len(failures)} of {len(units)} runs failed; their logs: " + ", ".join(
            str(out / f["task"] / f["solver"] / f["arm"] / f"seed_{f['seed']}" / "run.log") for f in failures))
    families = {}
    for task in tasks:
        task_runs = [r for r in runs if r["task"] == task.name]
        for run in task_runs:  # every curve starts at the shared theta_0
            if run["curve"][0]["step"] != 0:
                run["curve"] = [{"step": 0, **theta[task.name]}] + run["curve"]
        families[task.name] = {"splits": task.splits, "theta_0": theta[task.name], "lengths": lengths[task.name],
                               "arms": summarize(task_runs, task.splits, theta[task.name], ARM_ORDER)}
    results = {"config": {**dataclasses.asdict(config), "scale": args.scale, "model": args.model,
                          "tasks": {t.name: str(t.folder) for t in tasks}, "minutes": (time.time() - started) / 60,
                          # a republish from cache keeps what the runs cost: their own time, summed
                          "workers": args.workers, "cached_runs": sum(bool(r.get("cached")) for r in runs),
                          "run_minutes": sum(r["seconds"] for r in runs) / 60},
               "families": families}
    publish(results, runs, out, args.publish, notes)
    print(f"eva-bench done in {(time.time() - started) / 60:.1f} min: {out / 'results.json'}")
    return results


def execute(units: list[tuple], workers: int, started: float) -> tuple[list[dict], list[dict]]:
    runs, failures = [], []
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    results = pool.imap_unordered(run_one, units) if pool else map(run_one, units)
    for done, result in enumerate(results, start=1):
        label = f"[{done}/{len(units)}] {result['task']}/{result['solver']}/{result['arm']} seed {result['seed']}"
        if "error" in result:
            failures.append(result)
            print(f"{label} FAILED:\n{result['error']}", flush=True)
            continue
        runs.append(result)
        test = result["test"]
        print(f"{label}: all {test['all']['reward']:.3f}" + "".join(
            f"  {s} {test[s]['reward']:.3f}" for s in test if s != "all" and "=" not in s)
            + f"  ({result['seconds']:.0f}s, {(time.time() - started) / 60:.1f} min elapsed)", flush=True)
    if pool:
        pool.close()
        pool.join()
    return runs, failures


def publish(results: dict, runs: list[dict], out: Path, folder: str | None, notes: str = "") -> None:
    from openrlhf_eva import bench_report

    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    bench_report.write_markdown(results, out / "RESULTS.md", notes)
    plots = bench_report.write_plots(results, runs, out)
    print(bench_report.markdown_table(results))
    if folder:
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        for path in [out / "results.json", out / "RESULTS.md", *plots]:
            shutil.copy(path, target / path.name)
        print(f"published results.json, RESULTS.md and {len(plots)} plots to {target}")


if __name__ == "__main__":
    try:
        main()
    except TaskError as error:  # a task folder at fault: its file and row, not a traceback
        raise SystemExit(f"eva-bench: {error}") from None
