"""The offline eva creator step for a prompt set and a policy checkpoint (EVA.md, Algorithm 1).

    python -m openrlhf_eva.evolve --pretrain CKPT --prompt_data prompts.jsonl --output_dir runs/round1 \\
        --reward.remote_url reward_func.py [--data.apply_chat_template] [--eva.evolver task \\
        --eva.evolver_path evolve_func.py]
    ... --eva.evolver evol_complexity --eva.evolver_backend openai --eva.evolver_url http://127.0.0.1:8000/v1 \\
        --eva.evolver_model served-name --eva.evolve_feedback --eva.rewrite_chosen
    deepspeed --module openrlhf_eva.evolve ...     (same flags; prompt shards are split over the ranks)

1. estimate (every rank): the prompts are cut into shards of --shard_size; rank r takes shards
   i % world_size == r, samples n responses per prompt (vLLM when importable on a GPU, else batched
   HF generate), scores them with the reward oracle (openrlhf_eva.rewards) and writes
   shards/estimate-{rank}-{index}.jsonl atomically. A rerun skips the shards already written.
2. rank 0, after a barrier: best/worst preference pairs, informativeness under every registered
   metric, then sample -> evolve -> filter -> mix with `creator_step`, and the outputs below.

The creator LLM (LLM evolvers, --eva.rewrite_chosen) is the policy itself unless --eva.evolver_model
names another checkpoint (or a .gguf file) or a model served at --eva.evolver_url
(--eva.evolver_backend openai, key from the variable --eva.evolver_api_key_env names); it is
loaded on first use (`openrlhf_eva.generation`). Every evolved child passes --eva.filters (on by
default; counts in summary.json as filter/<name> and in the last log line).

Outputs in --output_dir:
  pairs.jsonl         one row per prompt with a usable pair: prompt, chosen / rejected (the max- and
                      min-reward responses) in the form OpenRLHF's train_dpo reads with the same
                      --data.apply_chat_template as here (chat message lists with it, strings
                      without), then index, label, chosen_reward, rejected_reward, responses,
                      rewards (null = unscorable), truncated, info {metric: value}; with
                      --reward.pairwise_model also win_rates, chosen_win_prob, rejected_win_prob
                      (SPPO's P(y > pi)); with --eva.rewrite_chosen, chosen is the creator LLM's
                      improved answer where usable, chosen_original the sampled one, chosen_rewritten
                      whether they differ and rewrite_kept_reason why not (chosen_reward stays the
                      original's: the rewrite is not scored).
  next_prompts.jsonl  the mixed next prompt set from `creator_step`, shuffled so any prefix (train_dpo's
                      --data.max_samples) keeps the mix ("prompt", "label", the input row's other
                      fields, lineage in eva_origin/eva_parent/eva_method/eva_depth/eva_info).
  rejects.jsonl       every prompt that gave no pair, every filtered child and every evolver output
                      that gave no child: stage (prompt|child|evolver), category (too_long,
                      reward_error, unscorable, tie, filtered, unparsable, ...), reason.
  summary.json        counts (prompts/in == prompts/pairs + prompts/ties + prompts/rejected), info
                      statistics per metric, timings, the arguments.

Determinism: shard i always holds prompts [i*S, (i+1)*S) and is sampled with seeds derived from
--seed and the prompts' global indices, never from the rank, so any world size gives the same
outputs. HF generate samples a whole batch from one seed, so its samples also depend on
--shard_size and --generate_batch_size; vLLM seeds every prompt on its own. shards/manifest.json
records the settings that shaped the estimates: a rerun with different ones stops instead of
mixing stale shards in. The --eva.* creator flags are not in it, so a rerun with another metric or
evolver reuses the estimates.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import re
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from openrlhf_eva.creator import (
    DEFAULT_FILTERS,
    EVOLVERS,
    METRICS,
    SAMPLERS,
    PluginError,
    TaskEvolveError,
    TaskEvolver,
    build_evolver,
    informativeness,
    load_plugin,
    read_prompts,
    write_jsonl,
)
from openrlhf_eva.creator.flags import add_creator_flags, build_creator_filters, evolver_options
from openrlhf_eva.creator.step import creator_step
from openrlhf_eva.generation import HFGenerator, OpenAIGenerator, VLLMGenerator, build_generator
from openrlhf_eva.rewards import PairwisePreference, RewardError, build_reward, mean_win_rate
from openrlhf_eva.rollout import Rollouts, apply_chat_template, sample_responses
from openrlhf_eva.solve.rewriter import rewrite_chosen

SHARD_NAME = re.compile(r"^estimate-(\d+)-(\d+)\.jsonl$")
# Rank 0 waits at the barrier while the other ranks estimate, which on a resumed run can be the
# whole estimate phase; torch's default (30 min) would kill a healthy run.
BARRIER_TIMEOUT = timedelta(hours=24)


def build_parser() -> argparse.ArgumentParser:
    """Flags use OpenRLHF's dotted names where train_ppo_ray has one; the short names are aliases."""
    parser = argparse.ArgumentParser(prog="python -m openrlhf_eva.evolve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--actor.model_name_or_path", "--pretrain", dest="actor.model_name_or_path", required=True,
        help="policy checkpoint whose samples estimate informativeness")
    add("--data.prompt_dataset", "--prompt_data", dest="data.prompt_dataset", required=True,
        help="prompt file: JSONL or a .json list of objects")
    add("--output_dir", required=True, help="folder for pairs/next_prompts/rejects JSONL, summary.json, shards/")
    add("--data.input_key", "--data.prompt_key", dest="data.input_key", default="prompt", help="prompt field")
    add("--data.label_key", default=None, help="label field, passed to the reward as `labels`")
    add("--data.apply_chat_template", action="store_true", help="prompt the policy through its chat template")
    add("--max_prompt_len", type=int, default=1024,
        help="prompts longer than this many tokens (after templating) are skipped into rejects.jsonl")
    add("--data.max_len", type=int, default=2048, help="reward/pairwise model inputs are cut to this many tokens")

    add("--rollout.n_samples_per_prompt", "--n_samples_per_prompt", dest="rollout.n_samples_per_prompt", type=int,
        default=6, help="responses sampled per prompt (paper: 6)")
    add("--rollout.temperature", "--temperature", dest="rollout.temperature", type=float, default=1.0)
    add("--rollout.top_p", "--top_p", dest="rollout.top_p", type=float, default=1.0)
    add("--rollout.max_new_tokens", "--max_new_tokens", dest="rollout.max_new_tokens", type=int, default=1024)
    add("--train.seed", "--seed", dest="train.seed", type=int, default=42)
    add("--generate_batch_size", type=int, default=64, help="sequences per HF generate call")
    add("--generate_backend", choices=["auto", "vllm", "hf"], default="auto",
        help="auto: vLLM if importable and CUDA is present, else HF generate")
    add("--shard_size", type=int, default=256, help="prompts per estimate shard (the unit of resume and of ranks)")

    add("--reward.remote_url", default=None,
        help="a reward_func .py file, or RM server URL(s), comma-separated, as OpenRLHF takes them")
    add("--reward.model_name_or_path", default=None, help="an OpenRLHF reward model checkpoint")
    add("--reward.pairwise_model", default=None,
        help="a pairwise preference classifier; adds win probabilities to pairs.jsonl (SPPO), and is the "
             "reward when no other is given")
    add("--reward.pairwise_separator", default="\n\n### Response B:\n",
        help="text between the two responses fed to the pairwise model")
    add("--reward.normalize_enable", action="store_true", help="apply the RM's stored mean/std")
    add("--reward.batch_size", type=int, default=32, help="sequences per reward model forward / per RM request")
    add("--reward.remote_timeout", type=float, default=180.0, help="seconds per RM server request")
    add("--reward.remote_retries", type=int, default=5, help="tries per RM server request")
    add("--ds.value_head_prefix", default="score")
    add("--ds.param_dtype", choices=["bf16", "fp16"], default="bf16", help="model dtype on GPU (CPU runs fp32)")
    add("--ds.attn_implementation", default="sdpa")

    add("--eva.metric", default="A_min", help="informativeness metric for sampling (paper offline: A_min)")
    add("--eva.sample_mode", default="weighted", help="weighted | greedy | uniform | a registered sampler")
    add("--eva.sample_fraction", type=float, default=0.25, help="share of prompts drawn to evolve")
    add("--eva.evolutions_per_prompt", type=int, default=4)
    add("--eva.evolved_fraction", type=float, default=0.8, help="share of the next set taken from children")
    add("--eva.next_size", type=int, default=None, help="next set size (default: the estimated prompts)")
    add("--eva.replay_data", default=None,
        help="prompt file the next set's original share is drawn from (default: --prompt_data); iterate "
             "passes the seed prompts, so they stay in the mix after the first round")
    add("--eva.evolver", default="evol_instruct",
        help="evol_instruct | evol_complexity | evol_quality | self_instruct | tree_bon | distilabel | task | "
             "a registered evolver | none (estimate and pairs only, no next set)")
    add("--eva.evolver_path", default=None, help="the task evolver's Python file with evolve(prompt, label, rng)")
    add("--eva.evolver_backend", choices=["auto", "hf", "vllm", "openai"], default="auto",
        help="how the creator LLM generates; auto: the policy's backend, openai when --eva.evolver_url is set")
    add("--eva.evolve_max_new_tokens", type=int, default=512)
    add("--eva.filters", nargs="*", default=list(DEFAULT_FILTERS), help="filters every evolved child must pass")
    add("--eva.rewrite_chosen", action="store_true",
        help="let the creator LLM improve each pair's chosen response (kept only where usable)")
    add_creator_flags(add)
    add("--eva.plugin", action="append", default=[], help="Python file registering metrics/evolvers/rewards")
    add("--eva.reward", default=None, help="a reward oracle registered by a plugin (built with no arguments)")
    add("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    return parser


def check_args(args) -> None:
    """Everything that can be wrong before a model is loaded fails here, with the flag's name."""
    for path in args.eva.plugin:
        load_plugin(path)
    METRICS.get(args.eva.metric)
    SAMPLERS.get(args.eva.sample_mode)
    if args.eva.evolver != "none":
        EVOLVERS.get(args.eva.evolver)
        evolver_options(args.eva)
    build_creator_filters(args.eva)  # names, options and evaluation files, before any model loads
    if args.eva.evolver_backend == "openai" and not (args.eva.evolver_url and args.eva.evolver_model):
        raise ValueError("--eva.evolver_backend openai needs --eva.evolver_url and --eva.evolver_model (the "
                         "served model's name)")
    if args.rollout.n_samples_per_prompt < 2:
        raise ValueError("--n_samples_per_prompt must be >= 2: a preference pair needs two responses")
    if args.shard_size < 1:
        raise ValueError(f"--shard_size must be >= 1, got {args.shard_size}")
    if not 0 < args.eva.sample_fraction <= 1:
        raise ValueError(f"--eva.sample_fraction must be in (0, 1], got {args.eva.sample_fraction}")
    if not 0 <= args.eva.evolved_fraction <= 1:
        raise ValueError(f"--eva.evolved_fraction must be in [0, 1], got {args.eva.evolved_fraction}")
    pointwise = [flag for flag, value in (("--reward.remote_url", args.reward.remote_url),
                                          ("--reward.model_name_or_path", args.reward.model_name_or_path),
                                          ("--eva.reward", args.eva.reward)) if value]
    if len(pointwise) > 1:
        raise ValueError(f"pass one reward, got {' and '.join(pointwise)}")
    if not pointwise and not args.reward.pairwise_model:
        raise ValueError("no reward: pass --reward.remote_url (a .py reward_func or RM URL), "
                         "--reward.model_name_or_path, --reward.pairwise_model or --eva.reward")


def build_oracles(args) -> tuple[Any, PairwisePreference | None]:
    """(pointwise oracle or None, pairwise model or None); the pairwise model is the reward when alone."""
    pairwise = None
    if args.reward.pairwise_model:
        pairwise = build_reward("pairwise", path=args.reward.pairwise_model, separator=args.reward.pairwise_separator,
                                batch_size=args.reward.batch_size, max_len=args.data.max_len)
    url = args.reward.remote_url
    if args.eva.reward:
        oracle = build_reward(args.eva.reward)
    elif url and url.endswith(".py"):
        oracle = build_reward("reward_func", path=url)
    elif url:
        oracle = build_reward("remote", urls=url, batch_size=args.reward.batch_size,
                              timeout=args.reward.remote_timeout, retries=args.reward.remote_retries)
    elif args.reward.model_name_or_path:
        oracle = build_reward("reward_model", path=args.reward.model_name_or_path, batch_size=args.reward.batch_size,
                              max_len=args.data.max_len, normalize_reward=args.reward.normalize_enable,
                              value_head_prefix=args.ds.value_head_prefix, param_dtype=args.ds.param_dtype,
                              attn_implementation=args.ds.attn_implementation)
    else:
        oracle = None
    return oracle, pairwise


def generate_with_vllm(llm, tokenizer, prompts: Sequence[str], n: int, *, temperature: float, top_p: float,
                       max_new_tokens: int, seeds: Sequence[int]) -> Rollouts:
    """n samples per (templated) prompt from a `vllm.LLM`, prompt k seeded with seeds[k].

    Prompts go in as token ids tokenised without special tokens, as OpenRLHF's vLLM path sends them
    (text would get a second BOS); queries are the prompt plus the decoded response tokens, special
    tokens kept, which is what OpenRLHF hands its reward_func.
    """
    from vllm import SamplingParams

    params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed)
              for seed in seeds]
    requests = [{"prompt_token_ids": tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
    outputs = llm.generate(requests, params)
    if len(outputs) != len(prompts):
        raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
    responses, queries, truncated = [], [], []
    for prompt, request_output in zip(prompts, outputs):
        samples = request_output.outputs
        responses.append([s.text for s in samples])
        queries.append([prompt + tokenizer.decode(list(s.token_ids), skip_special_tokens=False) for s in samples])
        truncated.append([s.finish_reason == "length" for s in samples])
    return Rollouts(prompts=list(prompts), responses=responses, queries=queries, truncated=truncated)


class Policy:
    """A causal LM to sample from: vLLM or HF generate. The weights load on first use, so a resumed
    rank with every shard written, or a rank 0 with a task evolver, never loads them."""

    def __init__(self, path: str, backend: str, args) -> None:
        from transformers import AutoTokenizer

        if backend == "auto":
            backend = "vllm" if importlib.util.find_spec("vllm") and torch.cuda.is_available() else "hf"
        elif backend == "vllm" and not importlib.util.find_spec("vllm"):
            raise ValueError("--generate_backend vllm: vllm is not installed")
        self.path, self.backend, self.args = path, backend, args
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._engine = None

    def engine(self):
        if self._engine is not None:
            return self._engine
        gpu_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[self.args.ds.param_dtype]
        if self.backend == "vllm":
            import vllm

            # vLLM's engine process uses the first visible GPU: show each rank only its own.
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
            if int(os.environ.get("WORLD_SIZE", "1")) > 1 and local_rank < len(visible) and visible[0]:
                os.environ["CUDA_VISIBLE_DEVICES"] = visible[local_rank]
            self._engine = vllm.LLM(model=self.path, seed=self.args.train.seed, dtype=gpu_dtype,
                                    trust_remote_code=True)
        else:
            from transformers import AutoModelForCausalLM

            on_gpu = torch.cuda.is_available()
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if on_gpu else torch.device("cpu")
            model = AutoModelForCausalLM.from_pretrained(self.path, dtype=gpu_dtype if on_gpu else torch.float32,
                                                         trust_remote_code=True)
            self._engine = model.to(device).eval()
        return self._engine

    def template(self, prompts: Sequence[str]) -> list[str]:
        return apply_chat_template(self.tokenizer, prompts) if self.args.data.apply_chat_template else list(prompts)

    def sample(self, prompts: Sequence[str], n: int, seeds: Sequence[int], max_new_tokens: int) -> Rollouts:
        """n samples per templated prompt. HF generate seeds each batch from seeds[0] and the batch offset."""
        rollout = self.args.rollout
        if self.backend == "vllm":
            return generate_with_vllm(self.engine(), self.tokenizer, prompts, n, temperature=rollout.temperature,
                                      top_p=rollout.top_p, max_new_tokens=max_new_tokens, seeds=seeds)
        return sample_responses(self.engine(), self.tokenizer, prompts, n, temperature=rollout.temperature,
                                top_p=rollout.top_p, max_new_tokens=max_new_tokens,
                                batch_size=self.args.generate_batch_size, seed=seeds[0], chat_template=False)


def estimate_shard(rows: list[dict], first_index: int, policy: Policy, oracle, pairwise, args) -> list[dict]:
    """One record per prompt of the shard: responses, rewards (None = unscorable), or why it was skipped."""
    n = args.rollout.n_samples_per_prompt
    records, kept = [], []
    for offset, (row, text) in enumerate(zip(rows, policy.template([r["prompt"] for r in rows]))):
        record = {"index": first_index + offset, "prompt": row["prompt"], "label": row["label"],
                  "metadata": row["metadata"], "input": text, "reject": None}
        length = len(policy.tokenizer(text, add_special_tokens=False)["input_ids"])
        if length > args.max_prompt_len:
            record["reject"] = f"too_long: {length} tokens > --max_prompt_len {args.max_prompt_len}"
        else:
            kept.append(record)
        records.append(record)
    if not kept:
        return records

    rollouts = policy.sample([r["input"] for r in kept], n, seeds=[args.train.seed + r["index"] for r in kept],
                             max_new_tokens=args.rollout.max_new_tokens)
    win_probs = pairwise.win_probs(rollouts) if pairwise is not None else None
    if oracle is not None:
        rewards = oracle.score(rollouts, [r["label"] for r in kept])
        errors = oracle.errors
    else:
        rewards, errors = mean_win_rate(win_probs), {}
    if tuple(rewards.shape) != (len(kept), n):
        raise RewardError(f"reward oracle {type(oracle).__name__} returned shape {tuple(rewards.shape)}, "
                          f"expected {(len(kept), n)}")
    for k, record in enumerate(kept):
        record.update(responses=rollouts.responses[k], truncated=rollouts.truncated[k],
                      rewards=[r if math.isfinite(r) else None for r in rewards[k].tolist()])
        if win_probs is not None:
            record["win_probs"] = win_probs[k].tolist()
        if k in errors:
            record["reject"] = f"reward_error: {errors[k]}"
    return records


def shard_manifest(args, backend: str) -> dict:
    """The settings that shaped the estimates; shards written under other settings must not be reused."""
    with open(args.data.prompt_dataset, "rb") as file:
        prompt_sha256 = hashlib.sha256(file.read()).hexdigest()
    return {
        "pretrain": args.actor.model_name_or_path, "prompt_data": os.path.abspath(args.data.prompt_dataset),
        "prompt_sha256": prompt_sha256, "prompt_key": args.data.input_key, "label_key": args.data.label_key,
        "apply_chat_template": args.data.apply_chat_template, "max_prompt_len": args.max_prompt_len,
        "n": args.rollout.n_samples_per_prompt, "temperature": args.rollout.temperature, "top_p": args.rollout.top_p,
        "max_new_tokens": args.rollout.max_new_tokens, "seed": args.train.seed, "shard_size": args.shard_size,
        "generate_batch_size": args.generate_batch_size, "backend": backend,
        "reward": [args.reward.remote_url, args.reward.model_name_or_path, args.reward.pairwise_model,
                   args.reward.pairwise_separator, args.reward.normalize_enable, args.ds.value_head_prefix,
                   args.eva.reward, args.data.max_len],
    }


def check_manifest(shard_dir: Path, manifest: dict) -> None:
    """Refuse shards estimated under other settings; with no shard written yet, (re)write the manifest.

    Every rank writes it (same content, atomic replace) before its first shard, so a shard on disk
    always has the manifest of its run beside it, whichever rank got there first.
    """
    path = shard_dir / "manifest.json"
    if written_shards(shard_dir):
        old = json.loads(path.read_text()) if path.exists() else {}
        changed = [key for key in sorted(set(old) | set(manifest)) if old.get(key) != manifest.get(key)]
        if changed:
            raise ValueError(f"{shard_dir} holds estimates made with other settings ({', '.join(changed)} changed); "
                             f"delete it or use another --output_dir")
    else:
        shard_dir.mkdir(parents=True, exist_ok=True)
        tmp = shard_dir / f".manifest.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, path)


def written_shards(shard_dir: Path) -> dict[int, Path]:
    """Shard index -> file, whichever rank wrote it (a rerun may use another world size)."""
    found = {}
    for path in sorted(shard_dir.glob("estimate-*.jsonl")):
        match = SHARD_NAME.match(path.name)
        if match:
            found.setdefault(int(match.group(2)), path)
    return found


def read_records(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


def pair_or_reason(record: dict) -> tuple[int, int] | tuple[str, str]:
    """(chosen, rejected) response indices, or (category, reason) for a prompt that gives no pair."""
    if record["reject"]:
        category, _, reason = record["reject"].partition(": ")
        return category, reason
    rewards = torch.tensor([float("nan") if r is None else r for r in record["rewards"]], dtype=torch.float64)
    scored = torch.isfinite(rewards)
    if scored.sum() < 2:
        return "unscorable", f"{int(scored.sum())} of {len(rewards)} responses could be scored"
    # argmax/argmin return the first extreme index, so ties between responses resolve the same way every run.
    chosen = int(rewards.masked_fill(~scored, -math.inf).argmax())
    rejected = int(rewards.masked_fill(~scored, math.inf).argmin())
    if rewards[chosen] == rewards[rejected]:
        return "tie", f"every scored response has reward {float(rewards[chosen]):g}"
    if record["responses"][chosen] == record["responses"][rejected]:
        return "tie", "the max- and min-reward responses are the same text"
    return chosen, rejected


def info_stats(values: torch.Tensor) -> dict:
    if len(values) == 0:
        return {"mean": None, "std": None, "min": None, "median": None, "max": None}
    values = values.double()
    return {"mean": float(values.mean()), "std": float(values.std(unbiased=False)), "min": float(values.min()),
            "median": float(values.median()), "max": float(values.max())}


class CreatorLLM:
    """The creator's generator (evolvers, rewriter), built on first use, so that a run that evolves
    nothing with an LLM never loads one. Without --eva.evolver_model it samples with the policy's
    own engine (vLLM or HF), loaded once for both jobs."""

    def __init__(self, args, policy: Policy) -> None:
        self.args, self.policy, self.generator = args, policy, None

    def build(self):
        args, eva = self.args, self.args.eva
        sampling = {"max_new_tokens": eva.evolve_max_new_tokens, "temperature": args.rollout.temperature,
                    "top_p": args.rollout.top_p, "seed": args.train.seed}
        backend = eva.evolver_backend
        if backend == "openai" or (backend == "auto" and eva.evolver_url):
            return OpenAIGenerator(eva.evolver_url, eva.evolver_model, api_key_env=eva.evolver_api_key_env, **sampling)
        if backend == "auto":
            backend = self.policy.backend
        hf_options = {"batch_size": args.generate_batch_size} if backend == "hf" else {}
        if eva.evolver_model and eva.evolver_model != self.policy.path:
            return build_generator(backend, eva.evolver_model, **sampling, **hf_options)
        if backend != self.policy.backend:
            raise ValueError(f"--eva.evolver_backend {backend}: the policy runs on {self.policy.backend}; name a "
                             f"separate --eva.evolver_model to use another backend")
        engine = self.policy.engine()
        if backend == "vllm":
            return VLLMGenerator(engine, self.policy.tokenizer, **sampling)
        return HFGenerator(engine, self.policy.tokenizer, **sampling, **hf_options)

    def __call__(self, prompts: list) -> list[str]:
        if self.generator is None:
            self.generator = self.build()
        return self.generator(prompts)

    @property
    def stats(self) -> Counter:
        return self.generator.stats if self.generator is not None else Counter()


def info_scorer(args, policy: Policy, oracle, pairwise) -> Callable:
    """tree_bon's "info" scorer: each candidate's informativeness (--eva.metric) from n fresh policy
    samples scored by the run's reward, the quantity eva selects parents by."""

    def score(prompts: list[str], nodes: list) -> list[float]:
        n = args.rollout.n_samples_per_prompt
        seeds = [args.train.seed + 7919 * k for k in range(len(prompts))]
        rollouts = policy.sample(policy.template(prompts), n, seeds, args.rollout.max_new_tokens)
        if oracle is not None:
            rewards = oracle.score(rollouts, [None] * len(prompts))
        else:
            rewards = mean_win_rate(pairwise.win_probs(rollouts))
        return informativeness(rewards, metric=args.eva.metric).tolist()

    return score


def build_creator_evolver(args, policy: Policy, creator_llm: CreatorLLM | None = None, oracle=None, pairwise=None):
    if args.eva.evolver == "none":
        return None
    if args.eva.evolver == "task":
        if not args.eva.evolver_path:
            raise ValueError("--eva.evolver task needs --eva.evolver_path, a file defining evolve(prompt, label, rng)")
        return TaskEvolver(args.eva.evolver_path)
    options = evolver_options(args.eva)
    if not getattr(EVOLVERS.get(args.eva.evolver), "uses_llm", False):
        return build_evolver(args.eva.evolver, **options)
    if options.get("scorer") == "info":
        options["scorer"] = info_scorer(args, policy, oracle, pairwise)
    return build_evolver(args.eva.evolver, generate=creator_llm or CreatorLLM(args, policy), **options)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def finish(records: list[dict], args, evolver, counts: Counter, timings: dict, creator_llm=None,
           tokenizer=None, replay: list[dict] | None = None) -> dict:
    """Rank 0: pairs, rejects, informativeness, the creator step, and every output file. Returns the summary.

    ``creator_llm`` rewrites chosen responses under --eva.rewrite_chosen; ``tokenizer`` (the policy's)
    measures children for the length filter."""
    n = args.rollout.n_samples_per_prompt
    out = Path(args.output_dir)
    outcomes = [pair_or_reason(r) for r in records]
    estimated = [(r, o) for r, o in zip(records, outcomes) if isinstance(o[0], int) or o[0] == "tie"]
    rewards = torch.tensor([[float("nan") if x is None else x for x in r["rewards"]] for r, _ in estimated],
                           dtype=torch.float32).view(len(estimated), n)
    infos = {name: informativeness(rewards, metric=name) for name in METRICS.names()}

    pairs, rejects = [], []
    raw_pairs = []  # (prompt, chosen response) as text, whatever form pairs.jsonl takes
    for row_index, (record, (first, second)) in enumerate(estimated):
        if not isinstance(first, int):
            continue
        prompt, chosen, rejected = record["prompt"], record["responses"][first], record["responses"][second]
        raw_pairs.append((prompt, chosen))
        if args.data.apply_chat_template:
            # Upstream's dataset templates these back into exactly the text the policy was sampled with.
            prompt = [{"role": "user", "content": prompt}]
            chosen, rejected = [{"role": "assistant", "content": chosen}], [{"role": "assistant", "content": rejected}]
        pair = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "index": record["index"],
                "label": record["label"], "chosen_reward": record["rewards"][first],
                "rejected_reward": record["rewards"][second], "responses": record["responses"],
                "rewards": record["rewards"], "truncated": record["truncated"],
                "info": {name: float(info[row_index]) for name, info in infos.items()}}
        if "win_probs" in record:
            win_rates = mean_win_rate(torch.tensor([record["win_probs"]]))[0].tolist()
            pair.update(win_rates=win_rates, chosen_win_prob=win_rates[first], rejected_win_prob=win_rates[second])
        pairs.append(pair)
    if args.eva.rewrite_chosen and pairs:
        started = time.time()
        rewrites = rewrite_chosen(creator_llm, [raw_prompt for raw_prompt, _ in raw_pairs],
                                  [raw_chosen for _, raw_chosen in raw_pairs])
        for pair, text, used, reason in zip(pairs, rewrites.texts, rewrites.rewritten, rewrites.reasons):
            pair["chosen_original"] = pair["chosen"]
            pair["chosen"] = [{"role": "assistant", "content": text}] if args.data.apply_chat_template else text
            pair.update(chosen_rewritten=used, rewrite_kept_reason=reason)
        counts.update({f"rewrite/{key}": value for key, value in rewrites.counts.items()})
        timings["rewrite_s"] = time.time() - started
    for record, (first, second) in zip(records, outcomes):
        if not isinstance(first, int):
            counts[f"reject/{first}"] += 1
            reject = {"stage": "prompt", "index": record["index"], "prompt": record["prompt"],
                      "label": record["label"], "category": first, "reason": second}
            if record.get("rewards") is not None:
                reject["rewards"] = record["rewards"]
            rejects.append(reject)

    # prompts/in == prompts/pairs + prompts/ties + prompts/rejected; rejects.jsonl holds the last two.
    counts["prompts/in"] = len(records)
    counts["prompts/pairs"] = len(pairs)
    counts["prompts/ties"] = counts["reject/tie"]
    counts["prompts/rejected"] = len(records) - len(estimated)
    sampled = [x for r in records for x in r.get("rewards") or []]
    counts["responses/sampled"] = len(sampled)
    counts["responses/unscorable"] = sum(x is None for x in sampled)
    counts["responses/truncated"] = sum(t for r in records for t in r.get("truncated") or [])

    started = time.time()
    next_set = []
    if estimated and evolver is not None:
        creator_rows = [{**r["metadata"], "prompt": r["prompt"], "label": r["label"]} for r, _ in estimated]
        filters = build_creator_filters(args.eva, tokenizer, args.max_prompt_len)
        step = creator_step(creator_rows, rewards, evolver, metric=args.eva.metric, sample_mode=args.eva.sample_mode,
                            sample_fraction=args.eva.sample_fraction,
                            evolutions_per_prompt=args.eva.evolutions_per_prompt,
                            evolved_fraction=args.eva.evolved_fraction, next_size=args.eva.next_size,
                            filters=filters, seed=args.train.seed,
                            responses=[r["responses"] for r, _ in estimated], replay=replay)
        next_set = step.next_set
        counts.update(step.counts)
        for child, reason in step.rejected:
            parent = estimated[step.selected[child.parent_index]][0]
            rejects.append({"stage": "child", "index": parent["index"], "prompt": child.prompt,
                            "parent": parent["prompt"], "method": child.method, "category": "filtered",
                            "reason": reason})
        for dropped in step.dropped:
            parent = estimated[step.selected[dropped["parent_index"]]][0]
            category, _, reason = dropped["reason"].partition(": ")
            rejects.append({"stage": "evolver", "index": parent["index"], "prompt": dropped["output"],
                            "parent": parent["prompt"], "method": dropped["method"], "category": category,
                            "reason": reason})
    if creator_llm is not None:
        counts.update({f"creator_llm/{key}": value for key, value in creator_llm.stats.items()})
    timings["creator_s"] = time.time() - started

    write_jsonl(out / "pairs.jsonl", pairs)
    write_jsonl(out / "next_prompts.jsonl", next_set)
    write_jsonl(out / "rejects.jsonl", rejects)
    return {"counts": dict(sorted(counts.items())), "info": {name: info_stats(info) for name, info in infos.items()},
            "timings": timings}


def replay_rows(args) -> list[dict] | None:
    if args.eva.replay_data is None:
        return None
    return [{**r["metadata"], "prompt": r["prompt"], "label": r["label"]}
            for r in read_prompts(args.eva.replay_data, prompt_key=args.data.input_key, label_key=args.data.label_key)]


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Run the creator step; returns the summary on rank 0 (None on other ranks)."""
    from openrlhf.utils.config import hierarchize

    flat = build_parser().parse_args(argv)
    args = hierarchize(flat)  # args.rollout.temperature, as upstream CLIs read their dotted flags
    started = time.time()
    check_args(args)
    rows = read_prompts(args.data.prompt_dataset, prompt_key=args.data.input_key, label_key=args.data.label_key)
    if not rows:
        raise ValueError(f"{args.data.prompt_dataset}: no prompts")
    replay = replay_rows(args)  # read now: a bad replay file fails before the estimates, not after
    if replay == []:
        raise ValueError(f"--eva.replay_data {args.eva.replay_data}: no prompts")

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world_size > 1:
        # The ranks share nothing but one barrier; gloo serves it on CPU and GPU machines alike and
        # leaves the GPUs to the samplers (vLLM starts its own engine process on them).
        torch.distributed.init_process_group("gloo", timeout=BARRIER_TIMEOUT)

    policy = Policy(args.actor.model_name_or_path, args.generate_backend, args)
    oracle, pairwise = build_oracles(args)
    creator_llm = CreatorLLM(args, policy)
    evolver = build_creator_evolver(args, policy, creator_llm, oracle, pairwise)
    out = Path(args.output_dir)
    shard_dir = out / "shards"
    check_manifest(shard_dir, shard_manifest(args, policy.backend))

    num_shards = math.ceil(len(rows) / args.shard_size)
    done = written_shards(shard_dir)
    mine = [i for i in range(rank, num_shards, world_size) if i not in done]
    counts: Counter = Counter({"shards/total": num_shards, "shards/estimated_now": 0})
    for index in tqdm(mine, desc=f"estimate (rank {rank})", disable=rank != 0 and world_size > 1):
        first = index * args.shard_size
        records = estimate_shard(rows[first : first + args.shard_size], first, policy, oracle, pairwise, args)
        write_jsonl(shard_dir / f"estimate-{rank}-{index:05d}.jsonl", records)
        counts["shards/estimated_now"] += 1
    timings = {"estimate_s": time.time() - started}
    if world_size > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if rank != 0:
        return None
    timings["wait_s"] = time.time() - started - timings["estimate_s"]

    done = written_shards(shard_dir)
    missing = [i for i in range(num_shards) if i not in done]
    if missing:
        raise RuntimeError(f"estimate shards {missing} are missing from {shard_dir}: did a rank fail?")
    records = [record for i in range(num_shards) for record in read_records(done[i])]
    if [r["index"] for r in records] != list(range(len(rows))):
        raise RuntimeError(f"{shard_dir}: the shards do not cover the {len(rows)} prompts exactly; delete it")
    summary = finish(records, args, evolver, counts, timings, creator_llm, policy.tokenizer, replay)
    summary["oracle_stats"] = dict(oracle.stats) if oracle is not None else {}
    summary["world_size"] = world_size
    summary["backend"] = policy.backend
    summary["timings"]["total_s"] = time.time() - started
    summary["args"] = vars(flat)
    write_json(out / "summary.json", summary)
    c = summary["counts"]
    if not c["prompts/pairs"]:
        print(f"[eva] warning: no prompt gave a preference pair; the reasons are in {out}/rejects.jsonl")
    print(f"[eva] {c['prompts/in']} prompts: {c['prompts/pairs']} pairs, {c['prompts/ties']} ties, "
          f"{c['prompts/rejected']} rejected; next set {c.get('next/evolved', 0)} evolved + "
          f"{c.get('next/original', 0)} original -> {out}/{{pairs,next_prompts,rejects}}.jsonl, summary.json")
    if "children/generated" in c:
        rejected = ", ".join(f"{key.split('/', 1)[1]} {value}" for key, value in c.items()
                             if key.startswith("filter/") and value)
        print(f"[eva] children: {c['children/generated']} generated, {c['children/accepted']} accepted; "
              f"filters rejected: {rejected or 'none'}; evolver outputs without a child: "
              f"{c.get('evolver/unparsable', 0) + c.get('evolver/missing_items', 0)}")
    return summary


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, OSError, PluginError, RewardError, TaskEvolveError) as error:
        # Bad input (flags, prompt file, plug-ins, reward): the message names the culprit, no traceback.
        sys.exit(f"openrlhf_eva.evolve: error: {error}")
