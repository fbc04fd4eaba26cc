"""T offline eva iterations in one command: theta_{t-1} -> creator step -> pairs -> solver -> theta_t.

    python -m openrlhf_eva.iterate --pretrain SFT_CKPT --prompt_data seeds.jsonl --output_dir runs/eva \\
        --iterations 3 [--static | --seed_rounds 1] [--pair_order info|file] [--pair_pool both|next] \\
        [--eval_data heldout.jsonl --eval_reward reward_func.py] \\
        [--launcher "deepspeed --num_gpus 8"] \\
        --evolve-args <flags for openrlhf_eva.evolve ...> --dpo-args <flags for openrlhf_eva.train_dpo ...>

Iteration t lives in `<output_dir>/iter_<t>/` and runs, each stage by hand-reproducible command:
  creator/  `openrlhf_eva.evolve` on X_t with theta_{t-1}: estimate, sample, evolve -> X̄_t
            (next_prompts.jsonl); skipped with --static, where X̄_t = X_t (the baseline arm; with
            --pair_order file, upstream DPO on the prompts as they come);
  pairs/    `openrlhf_eva.evolve --eva.evolver none` on X̄_t with theta_{t-1}: best/worst pairs;
  model/    `openrlhf_eva.train_dpo` from theta_{t-1} (also the reference) on those pairs -> theta_t.
            A creator round's pool also holds the creator's own pairs on X_t (--pair_pool both; the
            same theta_{t-1} sampled them); pairs/train_pairs.jsonl orders the pool most informative
            first (--pair_order info), so --data.max_samples N trains on the N most informative pairs
            (iterations.json's trained_from counts them by the stage they came from);
            skipped when the pairs are fewer than one batch (--train.batch_size in --dpo-args; 0
            pairs if it is not given, also when --eva.paper_defaults picks the batch): theta_t =
            theta_{t-1}, said on the console and as "trained": false in iterations.json, instead
            of the run stopping half-way;
  eval.json greedy held-out reward of theta_t per split, when --eval_data is given.
Incremental: X_{t+1} = X̄_t's evolved set from the next creator step, the policy carries over.
--seed_rounds K: the first K iterations train on X_1 itself, as --static does, and the creator starts
at iteration K+1, on X_1 with theta_K. K=1 is the paper's order (EVA.md: theta_0 --DPO on X_1-->
theta_1 --creator on X_1--> X̄_1 --> theta_1bar); 0 runs the creator from theta_0 in iteration 1.
--replay seeds: every creator round draws its original share (1 - --eva.evolved_fraction) from X_1;
with the default, current, from X_t, so the seeds thin out (20% of round 2's originals are seeds).
The defaults beat both options on the bench's two dev families (examples/bench/RESULTS.md). So do
the pair defaults, against the next set's first pairs (--pair_order file --pair_pool next): eva -
static on all, 5 seeds, went from -0.006 to +0.027 on one dev family and +0.019 to +0.043 on the other.

Resumable: every stage ends by writing `<stage>/DONE.json`; a rerun skips finished stages. A stage
killed half-way restarts (evolve also keeps its finished shards; train_dpo resumes from its
DeepSpeed checkpoints under `model/ckpt` when --dpo-args set --ckpt.save_steps). Every stage is
seeded, so a crashed-and-resumed run writes the same files as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

from openrlhf_eva import compat
from openrlhf_eva import evolve
from openrlhf_eva.creator import read_prompts

DONE = "DONE.json"


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """Cut argv into (iterate's own, --evolve-args ..., --dpo-args ...) sections."""
    sections: dict[str, list[str]] = {"own": [], "--evolve-args": [], "--dpo-args": []}
    current = "own"
    for token in argv:
        if token in ("--evolve-args", "--dpo-args"):
            current = token
        else:
            sections[current].append(token)
    return sections["own"], sections["--evolve-args"], sections["--dpo-args"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m openrlhf_eva.iterate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrain", required=True, help="theta_0, the policy to start from (usually SFT)")
    parser.add_argument("--prompt_data", required=True, help="X_1, the seed prompts (JSONL)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--iterations", type=int, default=1, help="T")
    parser.add_argument("--static", action="store_true",
                        help="baseline arm: train on the prompt set itself every iteration, no creator")
    parser.add_argument("--replay", choices=["seeds", "current"], default="current",
                        help="where a creator round's original share (1 - --eva.evolved_fraction) comes from: "
                             "the seed prompts X_1, or the round's own set X_t (whose originals are mostly "
                             "evolved from round 2 on)")
    parser.add_argument("--seed_rounds", type=int, default=0,
                        help="iterations that train on the seed prompts before the creator's first step "
                             "(1: the paper's incremental order)")
    parser.add_argument("--pair_order", choices=["info", "file"], default="info",
                        help="order of a round's pairs, whose first --data.max_samples (in --dpo-args) are trained "
                             "on: most informative first (--eva.metric in --evolve-args), or as sampled")
    parser.add_argument("--pair_pool", choices=["both", "next"], default="both",
                        help="pairs a creator round trains on: those of its next set X̄_t, or also the creator's "
                             "estimate pairs on X_t (sampled from the same theta_{t-1}: on-policy, already paid for)")
    parser.add_argument("--eval_data", default=None, help="held-out prompts (prompt, label, optional split)")
    parser.add_argument("--eval_reward", default=None, help="reward_func .py scoring the held-out answers")
    parser.add_argument("--eval_max_new_tokens", type=int, default=64)
    parser.add_argument("--launcher", default=None,
                        help='command that launches train_dpo, e.g. "deepspeed --num_gpus 8" (default: one child '
                             'process; "inprocess": this process)')
    return parser


class Stage:
    """A folder whose DONE.json marks the work finished; reruns read the record instead of redoing it."""

    def __init__(self, path: Path):
        self.path = path

    @property
    def done(self) -> bool:
        return (self.path / DONE).exists()

    def record(self) -> dict:
        return json.loads((self.path / DONE).read_text())

    def finish(self, record: dict) -> dict:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{DONE}.tmp"
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
        os.replace(tmp, self.path / DONE)
        return record


def run_evolve(stage: Stage, policy: str, prompts: Path, evolve_args: list[str], extra: list[str]) -> dict:
    if stage.done:
        return stage.record()
    started = time.time()
    summary = evolve.main(["--pretrain", policy, "--prompt_data", str(prompts), "--output_dir", str(stage.path),
                           *evolve_args, *extra])
    return stage.finish({"counts": summary["counts"], "info": summary["info"], "seconds": time.time() - started})


def run_dpo(stage: Stage, policy: str, pairs: Path, dpo_args: list[str], launcher: str | None) -> dict:
    """train_dpo from `policy` on `pairs` into `stage`: by `launcher`, one child process (None), or
    "inprocess" (this process, as the bench does for many short rounds: no interpreter start-up)."""
    if stage.done:
        return stage.record()
    started = time.time()
    argv = ["--model.model_name_or_path", policy, "--ref.model_name_or_path", policy,
            "--data.dataset", str(pairs), "--data.prompt_key", "prompt", "--data.chosen_key", "chosen",
            "--data.rejected_key", "rejected", "--ckpt.output_dir", str(stage.path),
            "--ckpt.path", str(stage.path / "ckpt"), "--ckpt.load_enable", *dpo_args]
    # Appended, never truncated: a rerun after a crash keeps the crashed attempt's log above its own.
    log_path = stage.path.parent / "dpo.log"
    stage.path.mkdir(parents=True, exist_ok=True)
    if launcher == "inprocess":
        from openrlhf_eva import train_dpo

        with open(log_path, "a") as log, contextlib.redirect_stdout(log):
            print(f"[eva] train_dpo in this process, {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
            compat.default_single_process_env()
            train_dpo.main(argv)
        return stage.finish({"seconds": time.time() - started, "argv": argv})
    module = ["--module", "openrlhf_eva.train_dpo"] if launcher else ["-m", "openrlhf_eva.train_dpo"]
    cmd = [*(shlex.split(launcher) if launcher else [sys.executable]), *module, *argv]
    with open(log_path, "a") as log:
        log.write(f"[eva] {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(shlex.quote(c) for c in cmd)}\n")
        log.flush()
        print(f"[eva] {' '.join(shlex.quote(c) for c in cmd)}\n      (log: {log_path})", flush=True)
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=compat.child_process_env()).returncode
    if code != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"train_dpo failed with exit code {code}; last lines of {log_path}:\n{tail}")
    return stage.finish({"seconds": time.time() - started, "command": cmd})


def last_value(argv: Sequence[str], flag: str) -> str | None:
    """The value of the last ``flag VALUE`` in ``argv`` (argparse's rule), or None."""
    values = [argv[i + 1] for i, token in enumerate(argv[:-1]) if token == flag]
    return values[-1] if values else None


def training_pairs(sources: dict[str, Path], out: Path, metric: str | None) -> list[str]:
    """The pairs of ``sources`` (stage name -> pairs.jsonl) in one file, most informative first by
    ``metric`` (None: as they come), each tagged with its stage as "pool". Returns the pools in order.
    Upstream's --data.max_samples keeps a dataset's first rows: with fewer pairs trained than the pool
    holds, the round trains on its most informative prompts instead of the first ones in the file.
    The sort is stable, so pairs of equal informativeness keep their order."""
    rows = [{**json.loads(line), "pool": name} for name, source in sources.items()
            for line in source.read_text().splitlines() if line.strip()]
    if metric is not None:
        rows.sort(key=lambda row: -row["info"][metric])
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return [row["pool"] for row in rows]


def main(argv: Sequence[str] | None = None) -> list[dict]:
    own, evolve_args, dpo_args = split_argv(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(own)
    if args.iterations < 1:
        raise ValueError(f"--iterations must be >= 1, got {args.iterations}")
    if not args.static and not 0 <= args.seed_rounds < args.iterations:
        raise ValueError(f"--seed_rounds {args.seed_rounds} must be in [0, --iterations {args.iterations}): "
                         "the creator runs after the seed rounds (use --static for no creator at all)")
    if bool(args.eval_data) != bool(args.eval_reward):
        raise ValueError("--eval_data and --eval_reward go together")
    for flag in ("--pretrain", "--prompt_data", "--output_dir", "--eva.replay_data"):
        if flag in evolve_args:
            raise ValueError(f"{flag} is set by iterate; remove it from --evolve-args")
    if "--data.apply_chat_template" in evolve_args and "--data.apply_chat_template" not in dpo_args:
        # evolve then writes chat messages, which train_dpo templates only with the same flag
        dpo_args = [*dpo_args, "--data.apply_chat_template"]
    read_prompts(args.prompt_data)  # bad prompt files fail now, with file and row, not after a stage
    out = Path(args.output_dir)
    eval_rows = None
    if args.eval_data:  # split/kind/... sit in "metadata"; evaluate() reads `split` off the row itself
        eval_rows = [{**r["metadata"], "prompt": r["prompt"], "label": r["label"]}
                     for r in read_prompts(args.eval_data, label_key="label")]

    policy, prompts = args.pretrain, Path(args.prompt_data)
    table = []
    for t in range(1, args.iterations + 1):
        folder = out / f"iter_{t}"
        row: dict = {"iteration": t, "policy_in": policy, "prompts_in": str(prompts)}
        creator_round = not args.static and t > args.seed_rounds
        if not creator_round:
            train_prompts = prompts
        else:
            replay = ["--eva.replay_data", args.prompt_data] if args.replay == "seeds" else []
            creator = run_evolve(Stage(folder / "creator"), policy, prompts, evolve_args, replay)
            row["creator"] = creator["counts"]
            row["info_A_min_mean"] = creator["info"].get("A_min", {}).get("mean")
            train_prompts = folder / "creator" / "next_prompts.jsonl"
        # Pairs on the set the solver trains on, sampled from the same theta_{t-1}.
        pairs = run_evolve(Stage(folder / "pairs"), policy, train_prompts, evolve_args, ["--eva.evolver", "none"])
        row["pairs"] = pairs["counts"]["prompts/pairs"]
        row["ties"] = pairs["counts"]["prompts/ties"]
        sources = {"pairs": folder / "pairs" / "pairs.jsonl"}
        if creator_round and args.pair_pool == "both":
            sources["creator"] = folder / "creator" / "pairs.jsonl"
            row["pairs"] += creator["counts"]["prompts/pairs"]
        metric = None if args.pair_order == "file" else \
            last_value(evolve_args, "--eva.metric") or evolve.build_parser().get_default("eva.metric")
        if len(sources) == 1 and metric is None:
            pairs_file, pools = sources["pairs"], ["pairs"] * row["pairs"]
        else:
            pairs_file = folder / "pairs" / "train_pairs.jsonl"
            pools = training_pairs(sources, pairs_file, metric)
        limit = last_value(dpo_args, "--data.max_samples")
        row["trained_from"] = dict(Counter(pools[:int(limit) if limit else None]))  # pairs trained, by stage
        # Upstream train_dpo stops when the pairs fill no batch. A creator step whose prompts the policy
        # answers all alike can leave that few; the round then keeps its policy, and the run goes on.
        batch = int(last_value(dpo_args, "--train.batch_size") or 1)
        row["trained"] = row["pairs"] >= batch
        if row["trained"]:
            run_dpo(Stage(folder / "model"), policy, pairs_file, dpo_args, args.launcher)
            policy = str(folder / "model")
        else:
            print(f"[eva] iteration {t}: {row['pairs']} pairs, fewer than one batch of {batch} "
                  f"(--train.batch_size): no DPO step this round, the policy stays {policy}", flush=True)
        row["policy_out"] = policy
        if eval_rows is not None:
            stage = Stage(folder / "eval")
            if not stage.done:
                from openrlhf_eva.evaluate import evaluate

                stage.finish(evaluate(policy, eval_rows, args.eval_reward, max_new_tokens=args.eval_max_new_tokens))
            row["eval"] = stage.record()
        table.append(row)
        if creator_round:
            prompts = train_prompts  # incremental: the next creator step starts from X̄_t

    (out / "iterations.json").write_text(json.dumps(table, indent=2) + "\n")
    print_table(table)
    return table


def print_table(table: list[dict]) -> None:
    splits = sorted({s for row in table for s in row.get("eval", {})}, key=lambda s: (s != "all", s))
    header = ["iter", "pairs", "ties", "from creator", "A_min mean"] + [f"{s} reward" for s in splits]
    print("\n" + "  ".join(f"{h:>14}" for h in header))
    for row in table:
        info = row.get("info_A_min_mean")
        pairs = row["pairs"] if row.get("trained", True) else f"{row['pairs']} (no step)"
        trained = row.get("trained_from", {})
        from_creator = f"{trained.get('creator', 0)}/{sum(trained.values())}" if trained else "-"
        cells = [row["iteration"], pairs, row["ties"], from_creator, "-" if info is None else f"{info:.3f}"]
        cells += [f"{row['eval'][s]['reward']:.3f}" for s in splits]
        print("  ".join(f"{c:>14}" for c in cells))


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as error:
        sys.exit(f"openrlhf_eva.iterate: error: {error}")
