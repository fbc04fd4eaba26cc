#!/usr/bin/env bash
# Online eva with RLOO on one node, without Ray: `deepspeed --module openrlhf_eva.train_rloo`, one
# process per GPU, each rolling out with its own colocated vLLM engine (the TRL-colocate /
# OpenRLHF-hybrid layout). The eva settings are the paper's online defaults, as in
# examples/gpu/train_ppo_ray_eva.sh (EVA.md, "Online eva").
#
# Needs the GPU stack: `pip install -e .[gpu]` (OpenRLHF 0.11.2 with vLLM 0.29, flash-attn).
# Memory per GPU (80 GB): the policy's bf16 weights stay whole under ZeRO-2 (18 GB for 9B) next to
# its optimizer shard; the engine sleeps (weights offloaded, KV cache freed) while the policy
# trains and the reward model waits in CPU memory while the engine generates. Out of memory at
# start-up: lower GPU_MEMORY_UTILIZATION (the error says what else holds the GPU).
#
#   bash examples/gpu/train_rloo_vllm.sh
#   GPUS=1 POLICY=Qwen/Qwen2.5-0.5B-Instruct REWARD=... bash examples/gpu/train_rloo_vllm.sh
#   DRY_RUN=1 bash examples/gpu/train_rloo_vllm.sh     # print the arguments, one a line; run nothing
set -euo pipefail

GPUS=${GPUS:-8}
POLICY=${POLICY:-google/gemma-2-9b-it}  # the paper's solver
# A pointwise reward model sharing the policy's tokenizer (OpenRLHF feeds it the policy's ids); for
# another tokenizer serve it and set REWARD_URL (--reward.remote_url) instead.
REWARD=${REWARD:-Skywork/Skywork-Reward-Gemma-2-27B-v0.2}
REWARD_URL=${REWARD_URL:-}
PROMPTS=${PROMPTS:-HuggingFaceH4/ultrafeedback_binarized}
TOTAL_PROMPTS=${TOTAL_PROMPTS:-1x}  # seeds + evolved prompts trained on; "2x", "3x": the paper's larger budgets
GPU_MEMORY_UTILIZATION=${GPU_MEMORY_UTILIZATION:-0.4}
OUT=${OUT:-runs/rloo_vllm_eva}

if [[ -n "$REWARD_URL" ]]; then reward=(--reward.remote_url "$REWARD_URL"); else
  reward=(--reward.model_name_or_path "$REWARD" --reward.offload); fi

ARGS=(
  # Models: every rank holds the policy (ZeRO-2), a vLLM engine and the reward model.
  --actor.model_name_or_path "$POLICY" "${reward[@]}"
  --ds.zero_stage 2 --ds.param_dtype bf16 --actor.gradient_checkpointing_enable
  --vllm.num_engines "$GPUS" --vllm.tensor_parallel_size 1 --vllm.enable_sleep
  --vllm.gpu_memory_utilization "$GPU_MEMORY_UTILIZATION"

  # Prompts, templated with the policy's chat template; prompt <= 1024 tokens, total <= 2048 (paper).
  --data.prompt_dataset "$PROMPTS" --data.prompt_split train_prefs
  --data.input_key prompt --data.apply_chat_template
  --data.max_len 2048 --rollout.max_new_tokens 1024

  # RLOO: 6 responses per prompt, leave-one-out baseline; 8 prompts per rank per rollout batch, one
  # optimizer step per batch (as train_ppo_ray_eva.sh, whose batch is the whole node's).
  --algo.advantage.estimator rloo --rollout.n_samples_per_prompt 6
  --rollout.batch_size $((8 * GPUS)) --rollout.micro_batch_size 4
  --train.batch_size $((48 * GPUS)) --train.micro_batch_size 2 --train.max_epochs 1
  --actor.adam.lr 5e-7 --actor.lr_warmup_ratio 0.1 --actor.lr_scheduler cosine_with_min_lr
  --rollout.temperature 1.0 --rollout.top_p 1.0 --algo.kl.init_coef 0
  --train.seed 42

  # eva, the paper's online defaults: A_avg informativeness; evolve the top 50% of each batch into
  # 4 children (2 once the seeds are used up); mix-up batches half buffer, half seeds; 3200 prompts
  # in the buffer. The creator is EvolInstruct run by the policy (HF generate on the trained weights).
  --eva.metric A_avg
  --eva.top_frac 0.5 --eva.n_new 4 --eva.n_new_bootstrap 2 --eva.ratio_evol 0.5
  --eva.buffer_size 3200 --eva.total_prompts "$TOTAL_PROMPTS"
  --eva.evolver evol_instruct --eva.evolve_max_new_tokens 512
  --eva.filters empty unchanged duplicate

  --ckpt.output_dir "$OUT" --ckpt.path "$OUT/ckpt" --ckpt.save_steps 500 --ckpt.save_hf
  --logger.tensorboard_dir "$OUT/tensorboard" --logger.logging_steps 1
)

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%s\n' "${ARGS[@]}"
  exit 0
fi
exec deepspeed --num_gpus "$GPUS" --module openrlhf_eva.train_rloo "${ARGS[@]}"
