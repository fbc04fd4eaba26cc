#!/usr/bin/env bash
# Online eva with RLOO on one node with 8 H100s (EVA.md, "Online eva"; the paper reports RLOO 52.6 ->
# RLOO-eva 57.3 Arena-Hard at 1x prompts, 60.5 at 2x, 62.4 at 3x).
#
# Needs the GPU stack on the node: `pip install -e .[gpu]` (OpenRLHF 0.11.2 with vLLM, flash-attn).
# Ray starts a local instance with all 8 GPUs; for several nodes, `ray start` them and launch the
# same command with `ray job submit`, with openrlhf-eva installed on every node.
#
#   bash examples/gpu/train_ppo_ray_eva.sh                   # 1x prompt budget
#   TOTAL_PROMPTS=122000 bash examples/gpu/train_ppo_ray_eva.sh   # ~2x UltraFeedback's 61k prompts
#   DRY_RUN=1 bash examples/gpu/train_ppo_ray_eva.sh         # print the arguments, run nothing
set -euo pipefail

POLICY=${POLICY:-google/gemma-2-9b-it}  # the paper's solver
# A pointwise (Bradley-Terry) reward model. OpenRLHF feeds the policy's token ids to a local reward
# model as they are, so it must share the policy's tokenizer: a Gemma-2 RM for a Gemma-2 policy (the
# paper also used SkyworkRM-27B). The paper's default ArmoRM-8B uses another tokenizer: serve it and
# pass its URL with --reward.remote_url instead of --reward.model_name_or_path.
REWARD=${REWARD:-Skywork/Skywork-Reward-Gemma-2-27B-v0.2}
PROMPTS=${PROMPTS:-HuggingFaceH4/ultrafeedback_binarized}  # UltraFeedback prompts, the paper's seed set
TOTAL_PROMPTS=${TOTAL_PROMPTS:-0}  # prompts the run trains on, seeds + evolved; 0 = as many as seeds
OUT=${OUT:-runs/rloo_eva}

ARGS=(
  # Models. All four roles share the 8 GPUs (hybrid engine): DeepSpeed models and vLLM take turns,
  # each sleeping (offloaded) while the others run.
  --actor.model_name_or_path "$POLICY"
  --reward.model_name_or_path "$REWARD"
  --actor.num_nodes 1 --actor.num_gpus_per_node 8
  --ref.num_nodes 1 --ref.num_gpus_per_node 8
  --reward.num_nodes 1 --reward.num_gpus_per_node 8
  --train.colocate_all --ds.enable_sleep
  --vllm.num_engines 8 --vllm.tensor_parallel_size 1 --vllm.gpu_memory_utilization 0.5 --vllm.enable_sleep
  --ds.zero_stage 3 --actor.gradient_checkpointing_enable

  # Prompts, templated with the policy's chat template; prompt <= 1024 tokens, total <= 2048 (paper).
  --data.prompt_dataset "$PROMPTS" --data.prompt_split train_prefs
  --data.input_key prompt --data.apply_chat_template
  --data.max_len 2048 --rollout.max_new_tokens 1024

  # RLOO: n responses per prompt, leave-one-out baseline (no critic). Mini-batches of 8 prompts, as
  # in the paper's online runs; one optimizer step per rollout batch (8 x 6 = 48 samples).
  --algo.advantage.estimator rloo --rollout.n_samples_per_prompt 6
  --rollout.batch_size 8 --rollout.micro_batch_size 4
  --train.batch_size 48 --train.micro_batch_size 2 --train.max_epochs 1
  # The paper gives no RLOO learning rate; 5e-7 with 10% warm-up and cosine decay is its DPO setting.
  --actor.adam.lr 5e-7 --actor.lr_warmup_ratio 0.1 --actor.lr_scheduler cosine_with_min_lr
  --rollout.temperature 1.0 --rollout.top_p 1.0
  --train.seed 42

  # eva, the paper's online defaults: A_avg informativeness; evolve the top 50% of each batch into
  # 4 children (2 once the seeds are used up); mix-up batches are half buffer, half seeds; the buffer
  # holds 3200 prompts. The creator is EvolInstruct run by the policy itself on the same vLLM
  # engines, right after each weight sync.
  --eva.enable
  --eva.metric A_avg
  --eva.top_frac 0.5 --eva.n_new 4 --eva.n_new_bootstrap 2 --eva.ratio_evol 0.5
  --eva.buffer_size 3200
  --eva.total_prompts "$TOTAL_PROMPTS"
  --eva.evolver evol_instruct --eva.evolve_max_new_tokens 512
  --eva.filters empty unchanged duplicate

  # Outputs: the final policy, checkpoints that resume the eva buffer too, tensorboard curves
  # (train/eva/*), and $OUT/eva_buffer.jsonl, the evolved prompts with their lineage.
  --ckpt.output_dir "$OUT" --ckpt.path "$OUT/ckpt" --ckpt.save_steps 500 --ckpt.save_hf
  --logger.tensorboard_dir "$OUT/tensorboard" --logger.logging_steps 1
)

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%s\n' "${ARGS[@]}"
  exit 0
fi
exec python -m openrlhf_eva.train_ppo_ray "${ARGS[@]}"
