"""Upstream flag parity for `openrlhf_eva.train_rloo`: the refused flags, and upstream's datasets.

train_rloo is one process per rank, each its own controller: rollouts with HF `generate` on the
policy being trained or with one colocated vLLM engine per rank, no Ray, no critic. An OpenRLHF config written for `train_ppo_ray`
must still parse, so every upstream flag is declared here or in `train_rloo.build_parser`. A
refused flag left at upstream's default is harmless; set to anything else, it stops the run with
its reason and the entry point that has it (`check_refused_flags`). The contract test
(tests/test_train_rloo_flags.py) reads upstream's parser source, so a flag upstream adds fails it
until it is implemented or refused here.

`read_prompt_datasets` gives `--data.prompt_dataset/_probs/_split` and `--eval.dataset/_split`
upstream's meaning.
"""

from __future__ import annotations

import argparse
import os
from typing import Optional

from openrlhf_eva.creator import read_prompts

RAY = "openrlhf_eva.train_ppo_ray"

NEEDS_CRITIC = f"needs a critic (GAE), which this trainer does not have: use {RAY}"
NEEDS_VLLM = (f"rollouts here use HF generate or one colocated vLLM engine per rank (--vllm.num_engines), "
              f"whose weights are copied in-process; Ray engines and their weight sync: use {RAY}")
RAY_PLACEMENT = (f"Ray placement: here every rank holds every model, and the launcher (deepspeed --num_gpus / "
                 f"--num_nodes, torchrun --nproc_per_node) sets the ranks; Ray placement: use {RAY}")
IS_CORRECTION = ("corrects the vLLM-vs-DeepSpeed log-prob mismatch; here the trained model samples its own "
                 f"rollouts, so there is none: use {RAY} for vLLM rollouts")
ASYNC = f"asynchronous rollouts need Ray and vLLM: use {RAY}"
PACKING = (f"sample packing (and dynamic batches, which need it) runs only with vLLM upstream and with "
           f"flash-attn: use {RAY}")
SHARDED = (f"HF generate runs rank by rank here, which a tensor- or sequence-parallel model cannot do: "
           f"use {RAY}")
AGENT = f"multi-turn agents run inside vLLM engines: use {RAY}"
VISION = f"vision-language rollouts go through vLLM: use {RAY}"

# (flag, upstream default, type, nargs) per reason. bool is a store_true flag; nargs None takes one
# value. Defaults and types are upstream's, so an unchanged config passes the check untouched.
REFUSED_GROUPS = [
    (NEEDS_CRITIC, [
        ("--critic.model_name_or_path", None, str, None), ("--critic.value_clip", 0.5, float, None),
        ("--critic.freezing_steps", -1, int, None), ("--critic.save_value_network", False, bool, None),
        ("--critic.num_nodes", 1, int, None), ("--critic.num_gpus_per_node", 8, int, None),
        ("--train.colocate_critic_reward", False, bool, None), ("--algo.advantage.lambd", 1, float, None),
        ("--critic.optim", "adam", str, None), ("--critic.muon.lr", 0.02, float, None),
        ("--critic.muon.momentum", 0.95, float, None), ("--critic.muon.ns_steps", 5, int, None),
        ("--critic.muon.nesterov", True, bool, None), ("--critic.adam.lr", 9e-6, float, None),
        ("--critic.adam.betas", (0.9, 0.95), float, 2), ("--critic.adam.eps", 1e-8, float, None),
        ("--critic.adam.weight_decay", 0.0, float, None), ("--critic.lr_scheduler", "cosine_with_min_lr", str, None),
        ("--critic.lr_warmup_ratio", 0.03, float, None), ("--critic.min_lr_ratio", 0.1, float, None),
        ("--critic.max_norm", 1.0, float, None),
    ]),
    (NEEDS_VLLM, [
        ("--vllm.sync_backend", "nccl", str, None), ("--vllm.sync_with_ray", False, bool, None),
        ("--vllm.enable_prefix_caching", False, bool, None),
        ("--rollout.vllm_generate_batch_size", None, int, None), ("--ds.enable_sleep", False, bool, None),
    ]),
    (RAY_PLACEMENT, [
        ("--actor.num_nodes", 1, int, None), ("--actor.num_gpus_per_node", 8, int, None),
        ("--ref.num_nodes", 1, int, None), ("--ref.num_gpus_per_node", 8, int, None),
        ("--reward.num_nodes", 1, int, None), ("--reward.num_gpus_per_node", 8, int, None),
    ]),
    (IS_CORRECTION, [
        ("--algo.advantage.is_correction_level", "off", str, None),
        ("--algo.advantage.is_correction_mode", "mask", str, None),
        ("--algo.advantage.is_correction_gating", "ratio", str, None),
        ("--algo.advantage.is_correction_threshold", [0.5, 5.0], float, "+"),
    ]),
    (ASYNC, [
        ("--train.async_enable", False, bool, None), ("--train.async_queue_size", 1, int, None),
        ("--train.partial_rollout_enable", False, bool, None),
    ]),
    (PACKING, [
        ("--ds.packing_samples", False, bool, None), ("--train.dynamic_batch_enable", False, bool, None),
        ("--rollout.max_tokens_per_gpu", None, int, None), ("--train.max_tokens_per_gpu", 16192, int, None),
    ]),
    (SHARDED, [
        ("--ds.tensor_parallel_size", 1, int, None), ("--ds.ring_attn_size", 1, int, None),
        ("--ds.ring_attn_head_stride", 1, int, None),
    ]),
    (AGENT, [("--train.agent_func_path", None, str, None)]),
    (VISION, [
        ("--data.image_key", "images", str, None), ("--data.max_images_per_prompt", 0, int, None),
        ("--actor.freeze_visual_encoder", False, bool, None),
    ]),
]
REFUSED = {flag: reason for reason, specs in REFUSED_GROUPS for flag, *_ in specs}
# Values other than the default that mean "this feature off", which is what train_rloo does anyway.
ALSO_ACCEPTED: dict = {}


def add_refused_flags(parser: argparse.ArgumentParser) -> None:
    """Declare every refused flag with upstream's default, type and arity, so that it parses."""
    group = parser.add_argument_group("upstream flags refused here (see openrlhf_eva.train_rloo_flags)")
    for reason, specs in REFUSED_GROUPS:
        for flag, default, kind, nargs in specs:
            if kind is bool:
                group.add_argument(flag, action="store_true", default=default, help=reason)
            else:
                group.add_argument(flag, type=kind, nargs=nargs, default=default, help=reason)
    # upstream's way to turn the critic's always-on nesterov off: the same destination, inverted
    group.add_argument("--critic.muon.no_nesterov", dest="critic.muon.nesterov", action="store_false",
                       help=NEEDS_CRITIC)


def check_refused_flags(parser: argparse.ArgumentParser, flat: argparse.Namespace) -> None:
    """parser.error for the first refused flag set to anything but its default (or a value meaning off)."""
    for reason, specs in REFUSED_GROUPS:
        for flag, default, _, _ in specs:
            value = getattr(flat, flag[2:])
            normalised = list(value) if isinstance(value, (list, tuple)) else value
            if normalised != (list(default) if isinstance(default, (list, tuple)) else default) \
                    and normalised not in ALSO_ACCEPTED.get(flag, ()):
                shown = "" if isinstance(value, bool) else f" {value}"
                if flag == "--critic.muon.nesterov":
                    flag = "--critic.muon.no_nesterov"  # the only way to change it
                parser.error(f"{flag}{shown} is not available in openrlhf_eva.train_rloo: {reason}")


def read_prompt_datasets(args, strategy, datasets: str, probs: Optional[str], split: str) -> list[dict]:
    """Prompts as ``read_prompts`` returns them, from anything upstream's dataset flags accept.

    One local JSONL/JSON file goes through ``read_prompts`` (its errors name the file and row).
    Anything else, several comma-separated datasets mixed by ``probs``, a saved or hub dataset, a
    ``path@data_dir``, goes through upstream's ``blending_datasets``, so it means what it means there.
    """
    if "," not in datasets and probs is None and datasets.endswith((".jsonl", ".json")) and os.path.isfile(datasets):
        if split != "train":
            raise ValueError(f"split {split!r} of {datasets}: a single JSONL/JSON file holds only the split 'train'")
        return read_prompts(datasets, args.data.input_key, args.data.label_key)[: args.data.max_samples]
    from openrlhf.datasets.utils import blending_datasets

    data = blending_datasets(datasets, probs, strategy, args.train.seed, max_count=args.data.max_samples,
                             dataset_split=split)
    prompts = []
    for row in data.select(range(min(args.data.max_samples, len(data)))):
        prompt = row[args.data.input_key]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{datasets}: prompt {args.data.input_key!r} must be a non-empty string, got {prompt!r}")
        label = row[args.data.label_key] if args.data.label_key else None
        metadata = {key: value for key, value in row.items() if key not in (args.data.input_key, args.data.label_key)}
        prompts.append({"prompt": prompt, "label": label, "metadata": metadata})
    return prompts
