"""train_rloo's OnlineTrainer: one rank's controller (models, reward, prompt source, the step loop),
and the pieces it builds from the parsed flags (the creator LLM, the evolver, the reward oracle).

``openrlhf_eva.train_rloo`` parses the flags and runs ``OnlineTrainer(args).fit()``; its docstring
says what every flag does and what the run writes. The bench subclasses the trainer to evaluate on
held-out prompts during training.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import types
from collections import Counter
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from openrlhf.trainer.ppo_utils import apply_length_penalties

from openrlhf_eva.creator import EVOLVERS, TaskEvolver, load_plugin
from openrlhf_eva.creator.flags import build_creator_filters, curriculum_options, evolver_options
from openrlhf_eva.creator.online import OnlinePromptSource
from openrlhf_eva.generation import Generator, HFGenerator, build_generator
from openrlhf_eva.rewards import RewardError, build_reward
from openrlhf_eva.rollout import apply_chat_template
from openrlhf_eva.solve import online
from openrlhf_eva.solve.losses import PreferenceLoss
from openrlhf_eva.train_rloo_flags import read_prompt_datasets

METRICS_FILE = "eva_metrics.jsonl"
BUFFER_FILE = "eva_buffer.jsonl"
CHILDREN_FILE = "eva_children.jsonl"


class CreatorLoadError(RuntimeError):
    """The creator model given with --eva.evolver_model cannot be loaded."""


def total_prompts(spec: Optional[str], num_seeds: int) -> Optional[int]:
    """``--eva.total_prompts``: None, a count ("6400") or a multiple of the seed set ("2x", "1.5x")."""
    if spec is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*x\s*", spec)
    try:
        return int(float(match.group(1)) * num_seeds) if match else int(spec)
    except ValueError:
        raise ValueError(f'--eva.total_prompts {spec!r}: give a prompt count or "Nx" (N times the seed set)') from None


def build_creator(args, policy_model, tokenizer) -> Optional[Generator]:
    """The creator LLM, or None when nothing asks for one (no LLM evolver, no --eva.rewrite_chosen).

    A model served at --eva.evolver_url, else the checkpoint or .gguf file --eva.evolver_model,
    else the policy itself: ``policy_model`` is the very module the DeepSpeed engine trains, so
    the creator always writes with the current weights.
    """
    evolver_class = EVOLVERS.get(args.eva.evolver) if args.eva.evolver not in (None, "task") else None
    if not (getattr(evolver_class, "uses_llm", False) or args.eva.rewrite_chosen):
        return None
    sampling = dict(max_new_tokens=args.eva.evolve_max_new_tokens, temperature=args.rollout.temperature,
                    top_p=args.rollout.top_p, seed=args.train.seed)
    if args.eva.evolver_url:
        return build_generator("openai", args.eva.evolver_model, url=args.eva.evolver_url,
                               api_key_env=args.eva.evolver_api_key_env, **sampling)
    if not args.eva.evolver_model:
        return HFGenerator(policy_model, tokenizer, **sampling)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
    try:
        return HFGenerator.from_pretrained(args.eva.evolver_model, device=device, **sampling)
    except Exception as error:
        raise CreatorLoadError(f"--eva.evolver_model {args.eva.evolver_model!r} could not be loaded: "
                               f"{type(error).__name__}: {error}") from error


def build_online_evolver(args, creator: Optional[Generator]):
    """The evolver --eva.evolver names, or None (eva off); an LLM evolver writes with ``creator``."""
    if args.eva.evolver is None:
        return None
    options = evolver_options(args.eva)
    if args.eva.evolver == "task":
        return TaskEvolver(args.eva.evolver_path, **options)
    evolver_class = EVOLVERS.get(args.eva.evolver)
    if getattr(evolver_class, "uses_llm", False):
        return evolver_class(generate=creator, **options)
    return evolver_class(**options)


def build_reward_oracle(args):
    url = args.reward.remote_url
    if url and url.endswith(".py"):
        return build_reward("reward_func", path=url)
    if url:
        return build_reward("remote", urls=url)
    return build_reward("reward_model", path=args.reward.model_name_or_path, max_len=args.data.max_len,
                        normalize_reward=args.reward.normalize_enable, value_head_prefix=args.ds.value_head_prefix,
                        param_dtype=args.ds.param_dtype, attn_implementation=args.ds.attn_implementation,
                        offload=args.reward.offload)


def format_prompts(args, tokenizer, prompts: list[str]) -> list[str]:
    """What upstream's PromptDataset feeds the policy: chat template, else input template, else the text."""
    if args.data.apply_chat_template:
        return apply_chat_template(tokenizer, prompts)
    if args.data.input_template:
        return [args.data.input_template.format(p) for p in prompts]
    return prompts


def rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def step_seed(seed: int, step: int, rank: int) -> int:
    """Every random draw of a step derives from (seed, step, rank): a resumed step repeats exactly."""
    return (seed * 1_000_003 + step) * 1009 + rank


def keep_lines_up_to(path: str, last_step: int) -> None:
    """On resume, drop JSONL lines of steps the checkpoint does not contain (they will be rerun)."""
    if not os.path.exists(path):
        return
    with open(path) as file:
        lines = [line for line in file if line.strip() and json.loads(line)["step"] <= last_step]
    with open(path, "w") as file:
        file.writelines(lines)


def use_torch_adam_on_cpu(strategy) -> None:
    """Make resumed CPU runs bit-identical to uninterrupted ones.

    DeepSpeed's CPU FusedAdam keeps beta^t by multiplying once per step and recomputes it with
    pow() after a step jump (csrc/includes/cpu_adam.h, IncrementStep), so the first update after a
    resume differs in the last bits. torch's AdamW derives it from the saved step count instead.
    """
    if torch.cuda.is_available():
        return
    build = strategy.get_ds_train_config

    def get_ds_train_config(optim_dict=None, **kwargs):
        config = build(optim_dict, **kwargs)
        if config.get("optimizer", {}).get("type") == "AdamW":  # not Muon (--actor.optim muon)
            config["optimizer"]["params"]["torch_adam"] = True
        return config

    strategy.get_ds_train_config = get_ds_train_config


class OnlineTrainer:
    """One rank's controller: models, reward, prompt source, and the step loop."""

    def __init__(self, args) -> None:
        from openrlhf.models import Actor
        from openrlhf.trainer.ppo_utils import AdaptiveKLController, FixedKLController
        from openrlhf.utils import get_strategy, get_tokenizer

        self.args = args
        self.strategy = strategy = get_strategy(args)
        use_torch_adam_on_cpu(strategy)
        strategy.setup_distributed()
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if args.algo.dynamic_filtering_enable and self.world_size > 1:
            raise ValueError("--algo.dynamic_filtering_enable runs on one rank in train_rloo (refills would give "
                             f"the {self.world_size} ranks different batch sizes); use openrlhf_eva.train_ppo_ray")
        if args.rollout.batch_size % self.world_size:
            raise ValueError(f"--rollout.batch_size {args.rollout.batch_size} must be a multiple of the "
                             f"{self.world_size} ranks")
        self.n, self.solver = args.rollout.n_samples_per_prompt, args.eva.solver

        if args.use_ms:
            from modelscope.utils.hf_util import patch_hub

            patch_hub()  # as upstream: model names resolve on ModelScope's hub
        pretrain = args.actor.model_name_or_path
        # The Actor arguments of upstream's policy, reference and EMA models (trainer/ray/ppo_actor.py,
        # launcher.py): LoRA only on the policy, the EMA copy without Liger or temperature.
        model_kwargs = dict(attn_implementation=args.ds.attn_implementation, param_dtype=args.ds.param_dtype,
                            experts_implementation=args.ds.experts_implementation, load_in_4bit=args.ds.load_in_4bit)
        sampling_kwargs = dict(temperature=args.rollout.temperature, use_liger_kernel=args.ds.use_liger_kernel)
        lora = args.ds.lora
        actor = Actor(pretrain, ds_config=strategy.get_ds_train_config(), lora_rank=lora.rank, lora_alpha=lora.alpha,
                      target_modules=lora.target_modules, lora_dropout=lora.dropout, **model_kwargs, **sampling_kwargs)
        if args.actor.gradient_checkpointing_enable:
            actor.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": args.actor.gradient_checkpointing_reentrant})
        self.tokenizer = get_tokenizer(pretrain, actor.model, "left", strategy,
                                       use_fast=not args.data.disable_fast_tokenizer)
        needs_reference = self.solver == "online_dpo" or args.algo.kl.init_coef > 0
        reference = ema = None
        if needs_reference:
            reference = Actor(pretrain, ds_config=strategy.get_ds_eval_config(offload=args.ref.offload),
                              **model_kwargs, **sampling_kwargs)
            reference._offload = args.ref.offload  # strategy.prepare builds its DeepSpeed config from this
        if args.train.enable_ema:
            ema = Actor(pretrain, ds_config=strategy.get_ds_eval_config(offload=True), **model_kwargs)
            ema._offload = True
        if args.eva.fused_logprobs:
            from openrlhf_eva.solve.fused_actor import fused_forward

            # Bound to these two instances rather than patched on the class (train_dpo's way): other
            # Actors in the process keep upstream's forward. DeepSpeed's engines call it through
            # nn.Module.__call__, which finds the instance attribute first.
            for model in (actor, reference):
                if model is not None:
                    model.forward = types.MethodType(fused_forward, model)
        self.oracle = build_reward_oracle(args)

        seeds = read_prompt_datasets(args, strategy, args.data.prompt_dataset, args.data.prompt_probs,
                                     args.data.prompt_split)
        self.eval_prompts = (read_prompt_datasets(args, strategy, args.eval.dataset, None, args.eval.split)
                             if args.eval.dataset else [])
        for path in args.eva.plugin:
            load_plugin(path)
        # The policy as creator generates with actor.model: the DeepSpeed engine below wraps that
        # very object (moved and cast in place), so it always writes with the weights being trained.
        self.creator = build_creator(args, actor.model, self.tokenizer)
        self.evolver = build_online_evolver(args, self.creator)
        self.source = OnlinePromptSource(
            seeds, args.rollout.batch_size, self.evolver,
            total_prompts=total_prompts(args.eva.total_prompts, len(seeds)),
            num_episodes=args.train.num_episodes, capacity=args.eva.buffer_size, top_frac=args.eva.top_frac,
            n_new=args.eva.n_new, n_new_bootstrap=args.eva.n_new_bootstrap, ratio_evol=args.eva.ratio_evol,
            metric=args.eva.metric, sample_mode=args.eva.sample_mode,
            filters=build_creator_filters(args.eva, self.tokenizer, args.data.max_len), seed=args.train.seed,
            **curriculum_options(args.eva),
            rank=self.rank, world_size=self.world_size, all_gather_object=self.all_gather_object)
        # Optimizer steps per rollout batch are fixed, so the prompt budget sizes the schedule exactly.
        self.steps_per_batch = (args.rollout.batch_size * (self.n if self.solver == "pg" else 1)
                                // args.train.batch_size * args.train.max_epochs)
        self.max_steps = self.source.num_batches * self.steps_per_batch

        actor_cfg = dict(optim=args.actor.optim, muon=vars(args.actor.muon), adam=vars(args.actor.adam),
                         lr_scheduler=args.actor.lr_scheduler, lr_warmup_ratio=args.actor.lr_warmup_ratio,
                         min_lr_ratio=args.actor.min_lr_ratio, max_norm=args.actor.max_norm,
                         scheduler_steps=self.max_steps)
        self.actor, self.optimizer, self.scheduler = strategy.prepare((actor, actor_cfg))
        self.reference = strategy.prepare(reference) if reference is not None else None
        self.ema = strategy.prepare(ema) if ema is not None else None
        # upstream's best-checkpoint bookkeeping (ppo_trainer.py): carried by every checkpoint
        self.best_eval = {"key": args.ckpt.best_metric_key, "value": float("-inf"), "latest": None}
        self.kl_ctl = (AdaptiveKLController(args.algo.kl.init_coef, args.algo.kl.target, args.algo.kl.horizon)
                       if args.algo.kl.target else FixedKLController(args.algo.kl.init_coef))
        self.dpo_loss = PreferenceLoss("dpo", beta=args.eva.beta) if self.solver == "online_dpo" else None
        self.ckpt_dir = os.path.join(args.ckpt.path, "_actor")
        self.metrics_path = os.path.join(args.ckpt.output_dir, METRICS_FILE)
        self.first_truncated_rate: Optional[float] = None  # this process's first step, for truncation_warning
        self.truncation_warned = False
        self.children_path = os.path.join(args.ckpt.output_dir, CHILDREN_FILE)
        self.trackers = []
        self.engine = None
        if args.vllm.num_engines:
            if args.vllm.num_engines != self.world_size:
                raise ValueError(f"--vllm.num_engines {args.vllm.num_engines}: train_rloo colocates one engine with "
                                 f"each of the {self.world_size} ranks, so it must be {self.world_size} (or 0: "
                                 "HF generate); more engines than ranks: use openrlhf_eva.train_ppo_ray")
            from openrlhf_eva.solve.vllm_rollout import ColocatedVLLMEngine

            # Built after the policy, so vLLM sizes its KV cache from what DeepSpeed left free; the
            # engine's own seed only matters for requests without one (every rollout carries one).
            self.engine = ColocatedVLLMEngine(
                pretrain, dtype={"bf16": "bfloat16", "fp16": "float16"}[args.ds.param_dtype],
                seed=step_seed(args.train.seed, 0, self.rank), enable_sleep=args.vllm.enable_sleep,
                gpu_memory_utilization=args.vllm.gpu_memory_utilization,
                enforce_eager=args.vllm.enforce_eager, max_model_len=args.data.max_len)
            self.engine.sleep()

    def all_gather_object(self, obj: Any) -> list[Any]:
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def resume(self) -> int:
        """Load the latest checkpoint when --ckpt.load_enable; returns the step it was taken at (0: none)."""
        if not (self.args.ckpt.load_enable and os.path.exists(self.ckpt_dir)):
            return 0
        _, states = self.strategy.load_ckpt(self.actor.model, self.ckpt_dir)
        if not states:
            return 0
        try:
            self.source.load_state_dict(states["eva_source"])
        except (KeyError, ValueError) as error:
            raise ValueError(f"checkpoint {self.ckpt_dir}: cannot resume its prompt source: {error}") from error
        self.kl_ctl.value = states["kl_coef"]
        self.best_eval = states.get("best_eval", self.best_eval)
        if len(states["rng_states"]) == self.world_size:
            set_rng_states(states["rng_states"][self.rank])
            if self.creator is not None and states.get("creator_stats"):
                self.creator.stats = Counter(states["creator_stats"][self.rank])
        else:
            self.strategy.print(f"checkpoint saved by {len(states['rng_states'])} ranks, now {self.world_size}: "
                                "RNG states and creator counters are not restored")
        self.strategy.print(f"resumed from {self.ckpt_dir} at step {states['global_step']} "
                            f"({self.source.prompts_served} prompts served)")
        return states["global_step"]

    def save_checkpoint(self, step: int, tag: Optional[str] = None) -> None:
        """Model, optimizer and scheduler (DeepSpeed), plus the prompt source, KL and every rank's RNGs.

        Every rank's creator counters too: a generator seeds each call from its call count, so a
        resumed creator must count on from where it stopped to write what it would have written.
        As upstream's actor: no DeepSpeed files with --ckpt.disable_ds, and with --ckpt.save_hf an
        HF model (the EMA one with --train.enable_ema) in --ckpt.path/<tag>_hf.
        """
        args, tag = self.args, tag or f"global_step{step}"
        if not args.ckpt.disable_ds:
            client_states = {"global_step": step, "eva_source": self.source.state_dict(),
                             "kl_coef": self.kl_ctl.value, "best_eval": self.best_eval,
                             "rng_states": self.all_gather_object(rng_states())}
            if self.creator is not None:
                client_states["creator_stats"] = self.all_gather_object(dict(self.creator.stats))
            # Rotation (--ckpt.max_num) evicts the checkpoints with the worst eval metric first.
            self.strategy.save_ckpt(self.actor.model, self.ckpt_dir, tag, args.ckpt.max_num, args.ckpt.max_mem,
                                    client_states, metric_value=self.best_eval["latest"],
                                    metric_key=self.best_eval["key"] or None)
        if args.ckpt.save_hf:
            self.strategy.save_model(self.ema or self.actor, self.tokenizer, os.path.join(args.ckpt.path, f"{tag}_hf"))

    def roll_out(self, step: int, batch, attempt: int = 0) -> types.SimpleNamespace:
        """Roll out this rank's shard of ``batch`` and score it (``attempt`` > 0: a dynamic-filtering
        refill, with its own sampling seed); rewards and responses are gathered from every rank."""
        args, tokenizer, n = self.args, self.tokenizer, self.n
        started = time.perf_counter()
        per_rank = len(batch) // self.world_size
        shard = batch[self.rank * per_rank:(self.rank + 1) * per_rank]
        prompts = format_prompts(args, tokenizer, [p.prompt for p in shard])
        max_new_tokens = args.rollout.max_new_tokens or args.data.max_len - max(
            len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
        seed = step_seed(args.train.seed + 7_777_777 * attempt, step, self.rank)
        sampling = dict(max_new_tokens=max_new_tokens, temperature=args.rollout.temperature, top_p=args.rollout.top_p,
                        seed=seed, prompt_max_len=max(1, args.data.max_len - max_new_tokens))
        if self.engine is None:
            experience = online.generate(self.actor.model.module, tokenizer, prompts, n, **sampling)
        else:
            # The engine must hold the policy trained on step - 1 batches: after an optimizer step or a
            # resume it is copied in first; a dynamic-filtering refill reuses that load.
            self.engine.wake_up()
            self.engine.load_policy_weights(self.actor.model.module, step - 1)
            experience = self.engine.generate(tokenizer, prompts, n, **sampling)
            self.engine.sleep()
        rollout_seconds = time.perf_counter() - started

        rollouts = online.to_rollouts(experience, tokenizer, prompts, n)
        rewards = self.oracle.score(rollouts, [p.label for p in shard])
        if args.reward.overlong_buffer_len is not None or args.reward.stop_properly_penalty_coef is not None:
            # Upstream's DAPO overlong / ProRL stop-properly penalties, before anything reads the rewards
            # (advantages, DPO pairs, eva's informativeness), so that all of them see the same ones.
            experience.rewards = rewards.reshape(-1).float()
            apply_length_penalties([experience], args)
            rewards = experience.rewards.view_as(rewards)
        parts = self.all_gather_object({
            "rewards": rewards.tolist(), "responses": rollouts.responses,
            "response_length": experience.response_length.tolist(), "truncated": experience.truncated.tolist()})
        all_rewards = torch.tensor([row for part in parts for row in part["rewards"]], dtype=torch.float32)
        if not torch.isfinite(all_rewards).any():
            raise RewardError(f"step {step}: every reward of the batch is NaN or inf; the reward is broken "
                              f"({args.reward.remote_url or args.reward.model_name_or_path})")
        return types.SimpleNamespace(
            experience=experience, shard=shard, rollouts=rollouts, rewards=rewards, parts=parts,
            all_rewards=all_rewards, max_new_tokens=max_new_tokens, seed=seed, rollout_seconds=rollout_seconds,
            reward_seconds=time.perf_counter() - started - rollout_seconds)

    def dynamically_filtered(self, step: int, batch, out) -> tuple:
        """Upstream's --algo.dynamic_filtering_enable: keep a prompt's group only if its mean reward lies
        strictly inside --algo.dynamic_filtering_range, and refill the batch with the next prompts
        (samples_generator.py: one replacement per dropped prompt) until it is full again or the prompt
        budget is spent (then None: the run ends). Every drawn batch is observed by the prompt source
        as it is scored, so eva's buffer sees the dropped groups too. One rank (checked at start-up)."""
        low, high = self.args.algo.dynamic_filtering_range
        kept_parts, consumed, passed, attempt = [], 0, 0, 0
        while True:
            finite = torch.isfinite(out.all_rewards)
            means = torch.where(finite, out.all_rewards, 0.0).sum(1) / finite.sum(1).clamp(min=1)
            keep = [i for i in range(len(batch)) if finite[i].any() and low < float(means[i]) < high]
            consumed += len(batch)
            passed += len(keep)
            eva = self.source.observe(out.all_rewards, step, [row for part in out.parts for row in part["responses"]])
            kept_parts.append((out, batch, keep))
            missing = self.args.rollout.batch_size - sum(len(k) for _, _, k in kept_parts)
            if missing <= 0:
                break
            attempt += 1
            batch = self.source.next_batch(size=missing)
            if not batch:
                self.strategy.print(f"step {step}: the prompt budget ran out while refilling a dynamically "
                                    f"filtered batch ({self.args.rollout.batch_size - missing} groups kept)")
                return None, None, None
            out = self.roll_out(step, batch, attempt)
        n = self.n
        merged = online.merge_groups([(o.experience, k) for o, _, k in kept_parts], n, self.tokenizer.pad_token_id)
        rewards = torch.cat([o.rewards[k] for o, _, k in kept_parts])
        responses = [o.rollouts.responses[i] for o, _, k in kept_parts for i in k]
        queries = [o.rollouts.queries[i] for o, _, k in kept_parts for i in k]
        first = kept_parts[0][0]
        result = types.SimpleNamespace(
            experience=merged, shard=[b[i] for _, b, k in kept_parts for i in k],
            rollouts=types.SimpleNamespace(responses=responses, queries=queries), rewards=rewards,
            parts=[{"rewards": rewards.tolist(), "responses": responses,
                    "response_length": merged.response_length.tolist(), "truncated": merged.truncated.tolist()}],
            all_rewards=rewards.float(), max_new_tokens=first.max_new_tokens, seed=first.seed,
            rollout_seconds=sum(o.rollout_seconds for o, _, _ in kept_parts),
            reward_seconds=sum(o.reward_seconds for o, _, _ in kept_parts))
        metrics = {"prompts_consumed": consumed, "dynamic_filtering_pass_rate": 100.0 * passed / consumed,
                   "eva": eva}
        return result, result.shard, metrics

    def train_step(self, step: int, batch) -> Optional[dict]:
        """Roll out this rank's shard, score it, update the policy, then let the source evolve."""
        args, tokenizer, n = self.args, self.tokenizer, self.n
        started = time.perf_counter()
        out = self.roll_out(step, batch)
        filter_metrics = {"prompts_consumed": len(batch)}
        if args.algo.dynamic_filtering_enable:
            out, batch, filter_metrics = self.dynamically_filtered(step, batch, out)
            if out is None:
                return None
        experience, shard, rollouts, rewards, parts = out.experience, out.shard, out.rollouts, out.rewards, out.parts
        all_rewards, max_new_tokens, seed = out.all_rewards, out.max_new_tokens, out.seed
        rollout_seconds, reward_seconds = out.rollout_seconds, out.reward_seconds

        generator = torch.Generator().manual_seed(seed + 1)
        if self.solver == "pg":
            online.attach_log_probs(experience, self.actor, self.reference, args)
            online.compute_advantages(experience, rewards, args, self.kl_ctl.value)
            train_metrics = online.policy_update(self.actor, self.optimizer, self.scheduler, self.strategy, experience,
                                                 args, self.kl_ctl.value, generator, self.ema)
            train_metrics["kl"] = self.strategy.all_reduce(float(experience.info["kl"].mean()))
            self.kl_ctl.update(train_metrics["kl"], args.rollout.batch_size * n)
        else:
            rewrite_metrics = {}
            if args.eva.rewrite_chosen:
                # Before any log-prob forward, so that policy and reference both score the rewrite.
                rewrite_started = time.perf_counter()
                counts = online.rewrite_chosen_responses(experience, rewards, [p.prompt for p in shard],
                                                         rollouts.responses, tokenizer, self.creator, max_new_tokens)
                totals = Counter()
                for part in self.all_gather_object(dict(counts)):  # reasons differ by rank: no all_reduce
                    totals.update(part)
                rejected = {key[len("kept_"):]: count for key, count in totals.items() if key.startswith("kept_")}
                rewrite_metrics = {"eva/rewrites_kept": totals["rewritten"],
                                   "eva/rewrites_rejected": sum(rejected.values()),
                                   **{f"eva/rewrites_rejected_{reason}": count for reason, count in rejected.items()},
                                   "timing/rewrite": time.perf_counter() - rewrite_started}
            train_metrics = online.online_dpo_update(self.actor, self.reference, self.optimizer, self.scheduler,
                                                     self.strategy, experience, rewards, args, self.dpo_loss,
                                                     generator, self.ema)
            train_metrics.update(rewrite_metrics)
        update_seconds = time.perf_counter() - started - rollout_seconds - reward_seconds

        if args.algo.dynamic_filtering_enable:
            eva_metrics = filter_metrics.pop("eva")  # observed batch by batch while filtering
        else:
            eva_metrics = self.source.observe(all_rewards, step, [row for part in parts for row in part["responses"]])
        hashes = self.all_gather_object(self.source.fingerprint())
        if len(set(hashes)) > 1:
            raise RuntimeError(f"step {step}: the ranks' prompt buffers diverged: {hashes}")

        finite = torch.isfinite(all_rewards)
        from_buffer = torch.tensor([p.buffer_id is not None for p in batch])
        lengths = torch.tensor([x for part in parts for x in part["response_length"]])
        metrics = {
            "step": step,
            "optimizer_steps": step * self.steps_per_batch,
            "reward_mean": float(all_rewards[finite].mean()),
            "reward_std": float(all_rewards[finite].std()) if int(finite.sum()) > 1 else 0.0,
            "reward_mean_seed_prompts": _mean_finite(all_rewards[~from_buffer]),
            "reward_mean_buffer_prompts": _mean_finite(all_rewards[from_buffer]),
            "response_length_mean": float(lengths.float().mean()),
            "truncated_rate": float(np.mean([x for part in parts for x in part["truncated"]])),
            "kl_coef": self.kl_ctl.value,
            **train_metrics,
            **filter_metrics,
            **eva_metrics,
            "eva/buffer_hashes": hashes,
            "timing/rollout": rollout_seconds,
            "timing/reward": reward_seconds,
            "timing/update": update_seconds,
        }
        metrics["timing/step"] = time.perf_counter() - started
        if "timing/evolve" in metrics:
            metrics["timing/evolve_share"] = metrics["timing/evolve"] / metrics["timing/step"]
        return metrics

    @torch.no_grad()
    def evaluate(self, step: int) -> dict:
        """Upstream's periodic eval: each --eval.dataset prompt sampled --eval.n_samples_per_prompt
        times at --eval.temperature and scored by the training reward (no length penalties, as
        upstream), --rollout.batch_size prompts at a time. The ranks split the prompts. Sampling
        forks the RNG, so evaluating changes nothing in training."""
        args, tokenizer, n = self.args, self.tokenizer, self.args.eval.n_samples_per_prompt
        mine = self.eval_prompts[self.rank::self.world_size]
        chunk = max(1, args.rollout.batch_size // self.world_size)
        rows = []
        for start in range(0, len(mine), chunk):
            part = mine[start:start + chunk]
            prompts = format_prompts(args, tokenizer, [p["prompt"] for p in part])
            max_new_tokens = args.rollout.max_new_tokens or args.data.max_len - max(
                len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
            sampling = dict(max_new_tokens=max_new_tokens, temperature=args.eval.temperature, top_p=args.rollout.top_p,
                            seed=step_seed(args.train.seed, step, self.rank) + 2 + start,
                            prompt_max_len=max(1, args.data.max_len - max_new_tokens))
            if self.engine is None:
                experience = online.generate(self.actor.model.module, tokenizer, prompts, n, **sampling)
            else:  # after this step's update: the policy has trained on `step` batches
                self.engine.wake_up()
                self.engine.load_policy_weights(self.actor.model.module, step)
                experience = self.engine.generate(tokenizer, prompts, n, **sampling)
                self.engine.sleep()
            rewards = self.oracle.score(online.to_rollouts(experience, tokenizer, prompts, n), [p["label"] for p in part])
            lengths, truncated = experience.response_length.view(-1, n), experience.truncated.view(-1, n)
            rows += [(p["metadata"].get("datasource", "default"), rewards[i].tolist(), lengths[i].tolist(),
                      truncated[i].float().tolist()) for i, p in enumerate(part)]
        logs = online.eval_metrics([row for part in self.all_gather_object(rows) for row in part], n)
        for tracker in self.trackers if self.strategy.is_rank_0() else ():
            tracker.log_eval(step, logs)
        return logs

    def eval_metric_key(self, logs: dict) -> Optional[str]:
        """upstream's choice of the best-checkpoint metric: the named one, none, or the first *_pass1."""
        key = self.best_eval["key"]
        if key == "none":
            return None
        if key:
            return key if key in logs else None
        return next((name for name in sorted(logs) if name.endswith("_pass1")), None)

    def log(self, metrics: dict) -> None:
        """Rank 0: every step to the JSONL file; every --logger.logging_steps to console and trackers."""
        if not self.strategy.is_rank_0():
            return
        with open(self.metrics_path, "a") as file:
            file.write(json.dumps(metrics) + "\n")
        if self.source.last_children:  # every evolved child, kept or rejected (with the filter's reason)
            with open(self.children_path, "a") as file:
                file.writelines(json.dumps(row, default=str) + "\n" for row in self.source.last_children)
        if self.first_truncated_rate is None:
            self.first_truncated_rate = metrics["truncated_rate"]
        elif not self.truncation_warned and (warning := truncation_warning(self.first_truncated_rate, metrics)):
            self.truncation_warned = True
            print(warning, flush=True)
        if metrics["step"] % self.args.logger.logging_steps == 0:
            print(_console_line(metrics, self.source.num_batches), flush=True)
            numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}
            for tracker in self.trackers:
                tracker.log_train(metrics["step"], numeric)

    def fit(self) -> None:
        from openrlhf.utils.logging_utils import TensorboardLogger, WandbLogger

        args, strategy = self.args, self.strategy
        step = self.resume()
        if strategy.is_rank_0():
            os.makedirs(args.ckpt.output_dir, exist_ok=True)
            for path in (self.metrics_path, self.children_path):
                keep_lines_up_to(path, step)  # a fresh run (step 0) starts empty files
            self.trackers += [WandbLogger(args)] if args.logger.wandb.key else []
            self.trackers += [TensorboardLogger(args)] if args.logger.tensorboard_dir else []
        strategy.print(f"train_rloo: {self.source.num_batches} rollout batches of {args.rollout.batch_size} prompts "
                       f"x {self.n}, {self.max_steps} optimizer steps, {self.world_size} rank(s), "
                       f"solver {self.solver}, eva {'off' if self.evolver is None else args.eva.evolver}")
        while batch := self.source.next_batch():
            step += 1
            metrics = self.train_step(step, batch)
            if metrics is None:  # dynamic filtering ran out of prompts before the batch was full
                step -= 1
                break
            eval_logs = self.evaluate(step) if step % args.eval.steps == 0 and self.eval_prompts else {}
            key = self.eval_metric_key(eval_logs)
            if key is not None:
                self.best_eval.update(key=key, latest=eval_logs[key])
            self.log({**metrics, **eval_logs})
            if step % args.ckpt.save_steps == 0:
                self.save_checkpoint(step)
            if key is not None and eval_logs[key] > self.best_eval["value"]:
                self.best_eval["value"] = eval_logs[key]
                self.save_checkpoint(step, tag=f"best_global_step{step}")  # replaces the previous best
        if self.source.batches_served < self.source.num_batches:
            strategy.print(f"stopped early after {step} of {self.source.num_batches} rollout batches: "
                           f"{self.source.exhausted}")
        strategy.save_model(self.ema or self.actor, self.tokenizer, args.ckpt.output_dir)
        if strategy.is_rank_0() and self.evolver is not None:
            self.source.buffer.to_jsonl(os.path.join(args.ckpt.output_dir, BUFFER_FILE))
        for tracker in self.trackers:
            tracker.close()


TRUNCATION_WARN_RATE = 0.2


def truncation_warning(first_rate: float, metrics: dict) -> Optional[str]:
    """A warning when the share of responses cut off at the token budget has climbed since the first
    step (to TRUNCATION_WARN_RATE and at least twice the first rate), else None. A policy that stops
    emitting EOS looks like this: on the bench's digits dev set with --algo.kl.init_coef 0, 44% of
    responses were truncated by step 8 and held-out reward fell by half (examples/bench/RESULTS.md)."""
    rate = metrics["truncated_rate"]
    if rate < TRUNCATION_WARN_RATE or rate < 2 * first_rate:
        return None
    hint = ("with --algo.kl.init_coef 0 nothing keeps it close to the reference, which does stop; try "
            "--algo.kl.init_coef 0.01 (the default) or --reward.stop_properly_penalty_coef"
            if metrics["kl_coef"] == 0 else "consider --reward.stop_properly_penalty_coef, or a larger "
            "--rollout.max_new_tokens if long answers are wanted")
    return (f"[eva] warning: step {metrics['step']}: {rate:.0%} of responses reached the token budget "
            f"(first step: {first_rate:.0%}; mean length {metrics['response_length_mean']:.1f}). The policy may "
            f"have stopped emitting its end-of-sequence token: {hint}.")


def _mean_finite(values: torch.Tensor) -> Optional[float]:
    values = values[torch.isfinite(values)]
    return float(values.mean()) if len(values) else None


def _console_line(metrics: dict, num_batches: int) -> str:
    line = (f"step {metrics['step']}/{num_batches}  reward {metrics['reward_mean']:.3f}  "
            f"len {metrics['response_length_mean']:.1f}  lr {metrics['actor_lr']:.2e}")
    if "eva/phase" in metrics and metrics["eva/phase"] != "off":
        line += (f"  | {metrics['eva/phase']}  buffer {metrics['eva/buffer_size']}  "
                 f"info batch {metrics['eva/batch_info_mean']:.3f} buffer {metrics['eva/buffer_info_mean']:.3f}  "
                 f"children +{metrics['eva/children_accepted']} -{metrics['eva/children_rejected']}  "
                 f"depth {metrics['eva/buffer_depth_mean']:.2f}")
        # Which filters reject, and how often: the first sign of a creator that writes badly.
        rejected = [f"{key[len('eva/rejected_'):]} {count}" for key, count in metrics.items()
                    if key.startswith("eva/rejected_") and count]
        line += f" ({', '.join(rejected)})" if rejected else ""
    if "eva/rewrites_kept" in metrics:
        line += f"  | rewrites +{metrics['eva/rewrites_kept']} -{metrics['eva/rewrites_rejected']}"
    return line + f"  ({metrics['timing/step']:.2f}s)"
