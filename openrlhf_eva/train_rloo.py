"""`deepspeed --module openrlhf_eva.train_rloo`: online RLOO (and online DPO) with eva's evolving prompt buffer.

One process per rank, each its own controller (no Ray): every rank rolls out its shard of the batch
with HF `generate`, scores it, trains OpenRLHF's `Actor` through the DeepSpeed strategy, and keeps
an identical copy of the prompt source. One rank: `python -m openrlhf_eva.train_rloo ...`; several:
`deepspeed --num_gpus 8 --module openrlhf_eva.train_rloo ...` (`--hostfile` for several nodes) or
`torchrun --nproc_per_node N -m openrlhf_eva.train_rloo ...`.

    deepspeed --module openrlhf_eva.train_rloo \\
        --actor.model_name_or_path MODEL --data.prompt_dataset prompts.jsonl --data.input_key prompt \\
        --data.label_key label --data.apply_chat_template --reward.remote_url reward_func.py \\
        --rollout.batch_size 8 --rollout.n_samples_per_prompt 4 --train.batch_size 32 \\
        --eva.evolver task --eva.evolver_path evolve_func.py --eva.total_prompts 2x

Flags. OpenRLHF's `cli/train_ppo_ray.py` builds its parser inside `__main__` and imports Ray and
vLLM at the top, so it can be neither imported nor run here. This parser declares every one of its
flags (167 with the actor/critic optimizer families), with upstream's names and defaults, with
one deliberate exception: `--algo.advantage.estimator` defaults to `rloo` (upstream: `gae`, which
needs a critic). Each either works with upstream's meaning or is refused by name:

    implemented   models: --actor.gradient_checkpointing_enable/_reentrant, --ds.lora.{rank,alpha,
                  target_modules,dropout} (policy only, as upstream), --ds.load_in_4bit (needs
                  bitsandbytes), --ds.use_liger_kernel (needs liger-kernel), --ds.experts_implementation,
                  --ref.offload / --reward.offload, --train.enable_ema / --train.ema_beta (the EMA
                  model is what gets saved), --use_ms; DeepSpeed: --ds.zpg, --ds.grad_accum_dtype,
                  --ds.overlap_comm, --ds.deepcompile, --ds.use_universal_ckpt (read by OpenRLHF's
                  strategy), --train.full_determinism_enable; optimizer: --actor.optim muon and
                  --actor.muon.*; loss: --actor.entropy_coef, --actor.aux_loss_coef (MoE);
                  rewards: --reward.overlong_buffer_len / _penalty_factor (DAPO),
                  --reward.stop_properly_penalty_coef (ProRL), applied as upstream before
                  advantages, DPO pairs and eva see the rewards; data: --data.prompt_probs,
                  --data.prompt_split (several datasets through upstream's blending_datasets);
                  eval: --eval.dataset/_split/_steps/_temperature/_n_samples_per_prompt (upstream's
                  eval_<datasource>_pass1 / _pass<n> / _response_length_mean / _truncated_rate in
                  that step's eva_metrics.jsonl line and the trackers), --ckpt.best_metric_key
                  (best_global_step<N> checkpoints), --ckpt.save_hf (<ckpt.path>/<tag>_hf),
                  --ckpt.disable_ds; --algo.dynamic_filtering_enable/_range (one rank); vLLM
                  rollouts: --vllm.num_engines (= the world size: one colocated engine per rank),
                  --vllm.gpu_memory_utilization, --vllm.enable_sleep, --vllm.enforce_eager,
                  --vllm.tensor_parallel_size 1 (openrlhf_eva.solve.vllm_rollout).
                  Accepted as what always happens here: --train.colocate_actor_ref,
                  --train.colocate_all (every model shares each rank's device),
                  --data.dataloader_num_workers (prompts are held in memory).
    refused       openrlhf_eva.train_rloo_flags.REFUSED, each with its reason and
                  openrlhf_eva.train_ppo_ray as the entry point that has it: --critic.* and
                  --algo.advantage.lambd (no critic), --vllm.sync_*/enable_prefix_caching,
                  --rollout.vllm_generate_batch_size, --ds.enable_sleep (Ray engines), the Ray
                  placement flags (--{actor,ref,reward}.num_nodes/_num_gpus_per_node), IS correction
                  (--algo.advantage.is_correction_*), async (--train.async_*,
                  --train.partial_rollout_enable), packing and dynamic batches, tensor/ring
                  parallelism, --train.agent_func_path, the VLM flags. At upstream's default they
                  parse and do nothing; set otherwise, the run stops naming the flag.

eva's own flags are `--eva.*`:

    --eva.solver {pg,online_dpo}  pg: the policy-gradient loss with --algo.advantage.estimator;
                                  online_dpo: best vs worst of the n samples, DPO vs the reference
    --eva.beta                    online DPO's beta (default 0.1, upstream DPO's --model.beta)
    --eva.rewrite_chosen          online_dpo: the creator LLM improves each pair's chosen response
                                  before the update (openrlhf_eva.solve.rewriter); the original
                                  stays where the rewrite is unusable (eva/rewrites_kept, _rejected)
    --eva.fused_logprobs          policy and reference log-probs through the fused lm_head +
                                  gather (openrlhf_eva.solve.fused_actor), as in train_dpo
    --eva.evolver                 unset: eva off (plain OpenRLHF RLOO). task (a programmatic
                                  evolve(prompt, label, rng) file, --eva.evolver_path), an LLM
                                  evolver (evol_instruct, evol_complexity, evol_quality,
                                  self_instruct, tree_bon, distilabel), or a plugin's evolver
    --eva.evolver_model / --eva.evolver_url / --eva.evolver_api_key_env
                                  the creator LLM (LLM evolvers, --eva.rewrite_chosen): the policy
                                  itself by default, a checkpoint or .gguf file, or the model
                                  named --eva.evolver_model on an OpenAI-compatible server
    --eva.metric                  informativeness from the batch's own rewards (default A_avg)
    --eva.sample_mode             buffer draws: weighted by info (default), greedy, uniform
    --eva.buffer_size / --eva.top_frac / --eva.n_new / --eva.n_new_bootstrap / --eva.ratio_evol
                                  the paper's online defaults: 3200 / 0.5 / 4 / 2 / 0.5
    --eva.total_prompts           prompt budget: a count or "Nx" (N times the seed set; default
                                  1x with eva, else seeds x --train.num_episodes). It sizes
                                  max_steps and the LR schedule before training starts.
    --eva.filters                 filters every child must pass (default: all of
                                  openrlhf_eva.creator.DEFAULT_FILTERS; rejections per filter in
                                  eva/rejected_<filter> and on the console)
    --eva.seed_replay / --eva.frontier_quantile / --eva.frontier_window
                                  curriculum control (default 0.5 / 0.25 / 8): the seeds' share
                                  of every batch after the first seed pass, and the bar a prompt's
                                  mean reward must clear (a quantile of the recent seed prompts')
                                  to be evolved; see openrlhf_eva.creator.online
    --eva.seed_replay_order       which seeds that share replays: shuffled passes (default) or
                                  "info", drawn by --eva.sample_mode over each seed's last info
    --eva.plugin / --eva.evolve_max_new_tokens, and openrlhf_eva.creator.flags'
                                  --eva.evolver_options / --eva.filter_options /
                                  --eva.evolve_feedback / --eva.evolve_parents / --eva.eval_prompts:
                                  as in openrlhf_eva.evolve

Outputs: the HF model in --ckpt.output_dir, plus `eva_metrics.jsonl` (one line per step) and
`eva_buffer.jsonl` (the final buffer, with lineage) and `eva_children.jsonl` (every evolved child
with its parent, the parent's rewards and the filters' verdict). The console warns once when the
share of responses cut off at the token budget climbs (a policy losing its EOS token; see
`train_rloo_trainer.truncation_warning`). DeepSpeed checkpoints (model, optimizer, scheduler) go to
--ckpt.path/_actor every --ckpt.save_steps; their client state carries the prompt source (buffer,
data position, counters), the KL coefficient, every rank's RNG states and every rank's creator LLM
counters (its sampling seed follows its call count), so --ckpt.load_enable resumes exactly where
the checkpoint was taken.

The trainer itself (`OnlineTrainer`, one rank's controller) is in `openrlhf_eva.train_rloo_trainer`;
this file is the command line: the parser, its checks, and `main`.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from typing import Optional, Sequence

from openrlhf_eva import compat
from openrlhf_eva.creator import DEFAULT_FILTERS
from openrlhf_eva.creator.flags import add_creator_flags, add_curriculum_flags
from openrlhf_eva.solve import online
from openrlhf_eva.train_rloo_flags import add_refused_flags, check_refused_flags
from openrlhf_eva.upstream import cpu_friendly_defaults
from openrlhf_eva.train_rloo_trainer import OnlineTrainer


def build_parser() -> argparse.ArgumentParser:
    """Upstream train_ppo_ray names and defaults for the flags implemented here, plus --eva.*."""
    # A short usage line: with every upstream flag declared, argparse's own would run to 200 lines.
    parser = argparse.ArgumentParser(prog="openrlhf_eva.train_rloo", description=__doc__,
                                     usage="%(prog)s --actor.model_name_or_path MODEL --data.prompt_dataset DATA "
                                     "[FLAG ...] (--help lists them)",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    # models and DeepSpeed
    add("--actor.model_name_or_path", required=True, help="HF model name or path")
    add("--reward.model_name_or_path", default=None, help="an OpenRLHF reward model")
    add("--reward.remote_url", default=None, help="a reward_func .py file, or RM server URL(s), comma-separated")
    add("--reward.normalize_enable", action="store_true", default=False)
    add("--reward.offload", action="store_true", default=False, help="the reward model waits in CPU memory")
    add("--reward.clip_range", type=float, nargs=2, default=(-10, 10))
    add("--ds.value_head_prefix", default="score")
    add("--local_rank", type=int, default=-1, help="local_rank for deepspeed")
    add("--ds.zero_stage", type=int, default=2, choices=[0, 1, 2], help="ZeRO stage (3 cannot run HF generate "
        "rank by rank)")
    add("--ds.param_dtype", default="bf16", choices=["bf16", "fp16"])
    add("--ds.attn_implementation", default="flash_attention_2")
    # vLLM: one engine colocated with each rank's policy (solve/vllm_rollout.py), upstream's names/defaults
    add("--vllm.num_engines", type=int, default=None, help="one per rank (the world size), or 0/unset: HF generate")
    add("--vllm.tensor_parallel_size", type=int, default=1, help="1: each rank's engine holds the whole model")
    add("--vllm.gpu_memory_utilization", type=float, default=0.95, help="share of the GPU the engine may take")
    add("--vllm.enable_sleep", action="store_true", default=False, help="the engine sleeps while the policy trains")
    add("--vllm.enforce_eager", action="store_true", default=False, help="no CUDA graphs in the engine")
    add("--ds.experts_implementation", default=None, choices=["eager", "batched_mm", "grouped_mm", "deepgemm"],
        help="MoE expert kernels, passed to from_pretrained")
    add("--ds.use_liger_kernel", action="store_true", default=False, help="Liger kernels (needs liger-kernel)")
    add("--ds.adam_offload", action="store_true", default=False)
    # read by OpenRLHF's DeepspeedStrategy straight from these flags
    add("--ds.zpg", type=int, default=1, help="ZeRO++ max partition size")
    add("--ds.grad_accum_dtype", default=None, help="Adam grad accum data type")
    add("--ds.overlap_comm", action="store_true", default=False)
    add("--ds.deepcompile", action="store_true", default=False)
    add("--ds.use_universal_ckpt", action="store_true", default=False, help="load DeepSpeed universal checkpoints")
    add("--ds.load_in_4bit", action="store_true", default=False, help="QLoRA base weights (needs bitsandbytes)")
    add("--ds.lora.rank", type=int, default=0, help="LoRA adapters of this rank (0: full fine-tuning)")
    add("--ds.lora.alpha", type=int, default=16)
    add("--ds.lora.target_modules", nargs="*", default="all-linear")
    add("--ds.lora.dropout", type=float, default=0)
    add("--actor.gradient_checkpointing_enable", action="store_true", default=False)
    add("--actor.gradient_checkpointing_reentrant", action="store_true", default=False)
    add("--ref.offload", action="store_true", default=False, help="reference params offloaded to CPU (DeepSpeed "
        "applies this at ZeRO-3 only, as upstream)")
    add("--train.enable_ema", action="store_true", default=False, help="keep an EMA of the policy; it is what "
        "gets saved")
    add("--train.ema_beta", type=float, default=0.992)
    add("--train.full_determinism_enable", action="store_true", default=False)
    # Every model already shares every rank's device here: these ask for what always happens.
    add("--train.colocate_actor_ref", action="store_true", default=False, help="always so here")
    add("--train.colocate_all", action="store_true", default=False, help="always so here (no vLLM)")
    add("--data.disable_fast_tokenizer", action="store_true", default=False)
    add("--data.dataloader_num_workers", type=int, default=0, help="no effect: prompts are held in memory")
    add("--use_ms", action="store_true", default=False, help="download models from ModelScope")
    # optimizer and scheduler (actor)
    add("--actor.optim", default="adam", choices=["adam", "muon"])
    add("--actor.muon.lr", type=float, default=0.02)
    add("--actor.muon.momentum", type=float, default=0.95)
    add("--actor.muon.ns_steps", type=int, default=5, help="DeepSpeed ignores it (upstream's placeholder)")
    add("--actor.muon.nesterov", action="store_true", default=True)
    add("--actor.muon.no_nesterov", dest="actor.muon.nesterov", action="store_false")
    add("--actor.adam.lr", type=float, default=1e-6)
    add("--actor.adam.betas", type=float, nargs=2, default=(0.9, 0.95))
    add("--actor.adam.eps", type=float, default=1e-8)
    add("--actor.adam.weight_decay", type=float, default=0.0)
    add("--actor.lr_scheduler", default="cosine_with_min_lr")
    add("--actor.lr_warmup_ratio", type=float, default=0.03)
    add("--actor.min_lr_ratio", type=float, default=0.1)
    add("--actor.max_norm", type=float, default=1.0)
    # policy loss
    add("--actor.eps_clip", type=float, default=0.2)
    add("--actor.eps_clip_low_high", type=float, nargs=2, default=None)
    add("--actor.dual_clip", type=float, default=None)
    add("--actor.policy_loss_type", default="ppo", choices=["ppo", "gspo"])
    add("--actor.loss_agg_mode", default="token-mean", choices=["token-mean", "seq-mean-token-mean"])
    add("--actor.entropy_coef", type=float, default=None, help="entropy bonus coefficient (0: only log entropy)")
    add("--actor.aux_loss_coef", type=float, default=0, help="MoE load-balancing loss coefficient")
    # advantages and KL
    add("--algo.advantage.estimator", default="rloo", choices=list(online.ESTIMATORS),
        help="upstream's default gae needs a critic: use openrlhf_eva.train_ppo_ray for it")
    add("--algo.advantage.gamma", type=float, default=1)
    add("--algo.advantage.no_std_norm", action="store_true", default=False)
    add("--algo.kl.init_coef", type=float, default=0.01)
    add("--algo.kl.target", type=float, default=None)
    add("--algo.kl.horizon", type=int, default=10000)
    add("--algo.kl.estimator", default="k1", choices=["k1", "k2", "k3"])
    add("--algo.kl.use_loss", action="store_true", default=False)
    add("--algo.kl.unbiased_gradient", action="store_true", default=False)
    add("--algo.dynamic_filtering_enable", action="store_true", default=False,
        help="drop prompt groups whose mean reward is not strictly inside --algo.dynamic_filtering_range and "
             "refill the batch with the next prompts (upstream's semantics; one rank here)")
    add("--algo.dynamic_filtering_range", nargs=2, default=(0, 1), type=float, help="Dynamic filtering rewards range")
    # rollouts and batches
    add("--rollout.batch_size", type=int, default=1024, help="prompts per rollout batch (all ranks)")
    add("--rollout.micro_batch_size", type=int, default=1, help="sequences per log-prob forward")
    add("--rollout.n_samples_per_prompt", type=int, default=1)
    add("--rollout.max_new_tokens", type=int, default=None, help="default: --data.max_len - prompt length")
    add("--rollout.temperature", type=float, default=1.0)
    add("--rollout.top_p", type=float, default=1.0)
    add("--train.batch_size", type=int, default=128, help="samples per optimizer step (online DPO: pairs)")
    add("--train.micro_batch_size", type=int, default=1)
    add("--train.max_epochs", type=int, default=1)
    add("--train.num_episodes", type=int, default=1)
    add("--train.seed", type=int, default=42)
    # data
    add("--data.prompt_dataset", required=True, help="prompt file: JSONL or a .json list of objects")
    add("--data.input_key", default="input")
    add("--data.label_key", default=None)
    add("--data.input_template", default=None)
    add("--data.apply_chat_template", action="store_true", default=False)
    add("--data.max_len", type=int, default=2048, help="max prompt + response tokens")
    add("--data.max_samples", type=int, default=int(1e8))
    add("--data.prompt_probs", default=None, help="sampling probabilities of comma-separated --data.prompt_dataset")
    add("--data.prompt_split", default="train")
    add("--reward.overlong_buffer_len", type=float, default=None, help="DAPO overlong penalty over the last "
        "this many tokens of the response budget")
    add("--reward.overlong_penalty_factor", type=float, default=1)
    add("--reward.stop_properly_penalty_coef", type=float, default=None, help="truncated samples: reward times "
        "this (>= 0) or set to it (< 0)")
    # periodic evaluation
    add("--eval.dataset", default=None, help="prompts scored every --eval.steps (pass@1, pass@n)")
    add("--eval.split", default="train")
    add("--eval.steps", type=int, default=-1)
    add("--eval.temperature", type=float, default=0.6)
    add("--eval.n_samples_per_prompt", type=int, default=4)
    # checkpoints and logging
    add("--ckpt.output_dir", default="./ckpt")
    add("--ckpt.path", default="./ckpt/checkpoints_ppo_ray")
    add("--ckpt.save_steps", type=int, default=-1)
    add("--ckpt.max_num", type=int, default=3)
    add("--ckpt.max_mem", type=float, default=float("inf"))
    add("--ckpt.load_enable", action="store_true", default=False)
    add("--ckpt.save_hf", action="store_true", default=False, help="also save an HF model with every checkpoint")
    add("--ckpt.disable_ds", action="store_true", default=False, help="no DeepSpeed checkpoints (no resume)")
    add("--ckpt.best_metric_key", default="", help="eval metric whose best value gets a best_global_step "
        "checkpoint; empty: the first *_pass1; none: off")
    add("--logger.logging_steps", type=int, default=1)
    add("--logger.tensorboard_dir", default=None)
    add("--logger.wandb.key", default=None)
    add("--logger.wandb.org", default=None)
    add("--logger.wandb.group", default=None)
    add("--logger.wandb.project", default="openrlhf_train_ppo")
    add("--logger.wandb.run_name", default="rloo_%s" % time.strftime("%m%dT%H:%M"))
    # eva
    add("--eva.solver", default="pg", choices=["pg", "online_dpo"])
    add("--eva.beta", type=float, default=0.1, help="online DPO's beta")
    add("--eva.rewrite_chosen", action="store_true", default=False,
        help="online_dpo: let the creator LLM improve each pair's chosen response (kept only where usable)")
    add("--eva.fused_logprobs", action="store_true", default=False,
        help="compute log-probs with the fused lm_head + gather (no [B, T, V] logits)")
    add("--eva.evolver", default=None, help="task | an LLM evolver (evol_instruct, evol_complexity, evol_quality, "
        "self_instruct, tree_bon, distilabel) | a plugin's evolver; unset: eva off")
    add("--eva.evolver_path", default=None, help="the task evolver's file with evolve(prompt, label, rng)")
    add("--eva.evolve_max_new_tokens", type=int, default=512)
    add("--eva.metric", default="A_avg")
    add("--eva.sample_mode", default="weighted", help="how buffer prompts are drawn: weighted by info (the paper), "
        "greedy (the most informative), uniform, or a registered sampler")
    add("--eva.buffer_size", type=int, default=3200)
    add("--eva.top_frac", type=float, default=0.5)
    add("--eva.n_new", type=int, default=4)
    add("--eva.n_new_bootstrap", type=int, default=2)
    add("--eva.ratio_evol", type=float, default=0.5)
    add("--eva.total_prompts", default=None, help='a prompt count, or "Nx" for N times the seed set')
    add_curriculum_flags(add)
    add("--eva.filters", nargs="*", default=list(DEFAULT_FILTERS), help="filters every evolved child must pass")
    add("--eva.plugin", action="append", default=[], help="Python file registering metrics/evolvers/filters")
    add_creator_flags(add)  # evolver/filter options shared with openrlhf_eva.evolve and train_ppo_ray
    add_refused_flags(parser)
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse, apply upstream's own post-parse rules that apply here, and check what can be checked early."""
    from openrlhf.utils.config import hierarchize

    parser = build_parser()
    flat = parser.parse_args(argv)
    check_refused_flags(parser, flat)
    cpu_friendly_defaults(flat)
    args = hierarchize(flat)
    if args.actor.eps_clip_low_high is None:
        args.actor.eps_clip_low_high = (args.actor.eps_clip, args.actor.eps_clip)
    n = args.rollout.n_samples_per_prompt
    if args.eva.solver == "pg" and args.algo.advantage.estimator != "reinforce" and n < 2:
        parser.error(f"{args.algo.advantage.estimator} requires --rollout.n_samples_per_prompt > 1")
    if args.eva.solver == "online_dpo" and n < 2:
        parser.error("online_dpo picks best vs worst of the samples: --rollout.n_samples_per_prompt must be > 1")
    if not (args.reward.remote_url or args.reward.model_name_or_path):
        parser.error("give a reward: --reward.remote_url (reward_func .py file or URL) or --reward.model_name_or_path")
    per_rollout = args.rollout.batch_size * (n if args.eva.solver == "pg" else 1)
    if per_rollout % args.train.batch_size:
        parser.error(f"--train.batch_size {args.train.batch_size} must divide the {per_rollout} "
                     f"{'samples' if args.eva.solver == 'pg' else 'pairs'} of a rollout batch")
    if args.algo.dynamic_filtering_enable:
        low, high = args.algo.dynamic_filtering_range
        if not low < high:
            parser.error(f"--algo.dynamic_filtering_range {low} {high}: the low end must be below the high end")
        if n < 2:
            parser.error("--algo.dynamic_filtering_enable filters on a group's mean reward: "
                         "--rollout.n_samples_per_prompt must be > 1")
    if args.eva.evolver == "task" and not args.eva.evolver_path:
        parser.error("--eva.evolver task needs --eva.evolver_path (a file defining evolve(prompt, label, rng))")
    if args.eva.rewrite_chosen and args.eva.solver != "online_dpo":
        parser.error("--eva.rewrite_chosen improves the chosen response of online DPO pairs: "
                     "it needs --eva.solver online_dpo")
    if args.eva.evolver_url and not args.eva.evolver_model:
        parser.error("--eva.evolver_url needs --eva.evolver_model, the served model's name")
    if args.vllm.tensor_parallel_size != 1:
        parser.error(f"--vllm.tensor_parallel_size {args.vllm.tensor_parallel_size}: each rank's colocated engine "
                     "holds the whole model, and the in-process weight copy loads whole tensors; tensor-parallel "
                     f"engines: use openrlhf_eva.train_ppo_ray")
    if args.vllm.num_engines and args.ds.lora.rank > 0:
        parser.error("--vllm.num_engines copies full weights into the engine: merge-free LoRA sync is not "
                     "implemented here, drop --ds.lora.rank or the engine")
    if args.vllm.num_engines and importlib.util.find_spec("vllm") is None:
        from openrlhf_eva.solve.vllm_rollout import INSTALL

        parser.error(f"--vllm.num_engines {args.vllm.num_engines} needs vLLM, which is not installed: {INSTALL}")
    for flag, module, package in (("--ds.load_in_4bit", "bitsandbytes", "bitsandbytes"),
                                  ("--ds.use_liger_kernel", "liger_kernel", "liger-kernel"),
                                  ("--use_ms", "modelscope", "modelscope")):
        if getattr(flat, flag[2:]) and importlib.util.find_spec(module) is None:
            parser.error(f"{flag} needs the {package} package, which is not installed (pip install {package})")
    if args.ds.load_in_4bit and args.ds.param_dtype != "bf16":
        parser.error("--ds.load_in_4bit computes in bf16: it needs --ds.param_dtype bf16")
    if args.train.enable_ema and args.ds.lora.rank > 0:
        # upstream's EMA copy is a plain model: pairing its parameters with a LoRA model's mixes them up
        parser.error("--train.enable_ema averages full weights: it cannot follow a --ds.lora.rank adapter")
    if args.eva.solver != "pg" and (args.actor.entropy_coef is not None or args.actor.aux_loss_coef):
        parser.error("--actor.entropy_coef and --actor.aux_loss_coef join the policy-gradient loss: "
                     "they need --eva.solver pg")
    if args.actor.aux_loss_coef and args.eva.fused_logprobs:
        parser.error("--actor.aux_loss_coef needs the router logits of the model's own forward, "
                     "which --eva.fused_logprobs skips")
    response_budget = args.rollout.max_new_tokens or args.data.max_len  # upstream's budget for the penalty
    if args.reward.overlong_buffer_len is not None and not 0 < args.reward.overlong_buffer_len <= response_budget:
        parser.error(f"--reward.overlong_buffer_len {args.reward.overlong_buffer_len} must be in "
                     f"(0, {response_budget}], the response budget")
    if (args.reward.stop_properly_penalty_coef or 0) > 1:
        parser.error("--reward.stop_properly_penalty_coef scales truncated rewards by a value in [0, 1] "
                     "or, when negative, replaces them")
    if args.data.prompt_probs and len(args.data.prompt_probs.split(",")) != len(args.data.prompt_dataset.split(",")):
        parser.error("--data.prompt_probs needs one probability per --data.prompt_dataset entry")
    if args.ckpt.save_steps == -1:
        args.ckpt.save_steps = float("inf")
    if args.eval.steps == -1:
        args.eval.steps = float("inf")
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    compat.default_single_process_env()
    OnlineTrainer(args).fit()


if __name__ == "__main__":
    main()
