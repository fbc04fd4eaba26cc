#!/usr/bin/env bash
# The eva paper's offline recipe (EVA.md): gemma-2-9b-it, UltraFeedback prompts, 10K prompts per
# iteration, 6 samples per prompt, A_min + weighted sampling of 25%, 4 EvolInstruct rewrites each,
# 80% evolved / 20% original, then one solver round with the paper's hyper-parameters for LOSS.
# One node of 8 H100s. Every stage can be rerun by hand; a crashed run resumes where it stopped.
#
#   LOSS=dpo|orpo|simpo|sppo ITERATIONS=3 bash examples/gpu/offline_eva.sh
#   STATIC=1 bash examples/gpu/offline_eva.sh      # the baseline arm: same budget, no creator
#   DRY_RUN=1 bash examples/gpu/offline_eva.sh     # print the arguments, one a line; run nothing
set -euo pipefail

LOSS=${LOSS:-dpo}
ITERATIONS=${ITERATIONS:-1}
POLICY=${POLICY:-google/gemma-2-9b-it}
# ArmoRM-Llama3-8B (the paper's RM) is a custom architecture OpenRLHF cannot load as a local RM:
# serve it (any server speaking OpenRLHF's remote RM JSON) and pass REWARD_URL instead.
REWARD_MODEL=${REWARD_MODEL:-Skywork/Skywork-Reward-Gemma-2-27B-v0.2}
REWARD_URL=${REWARD_URL:-}
PROMPTS=${PROMPTS:-data/ultrafeedback_prompts_10k.jsonl}   # {"prompt": ...} per line
EVAL_PROMPTS=${EVAL_PROMPTS:-}                               # optional {"prompt", "label"} held-out file
OUT=${OUT:-runs/offline_eva_${LOSS}}

if [[ -n "$REWARD_URL" ]]; then reward=(--reward.remote_url "$REWARD_URL"); else
  reward=(--reward.model_name_or_path "$REWARD_MODEL"); fi
# SPPO trains on win probabilities: score pairs with a pairwise preference model as well.
if [[ "$LOSS" == sppo ]]; then reward+=(--reward.pairwise_model "${PAIRWISE_MODEL:?SPPO needs PAIRWISE_MODEL}"); fi

static=(); [[ -n "${STATIC:-}" ]] && static=(--static)
eval=(); [[ -n "$EVAL_PROMPTS" ]] && eval=(--eval_data "$EVAL_PROMPTS" --eval_reward "${EVAL_REWARD:?}")

ARGS=(
  --pretrain "$POLICY" --prompt_data "$PROMPTS" --output_dir "$OUT" --iterations "$ITERATIONS"
  --launcher "deepspeed --num_gpus 8" "${static[@]}" "${eval[@]}"
  # The paper trains a round on all of X̄_t's pairs (iterate's default adds the creator's pairs on
  # X_t, and ranks the pool for a --data.max_samples cut: measured better at the bench's scale only).
  --pair_pool next
  --evolve-args
    "${reward[@]}" --data.apply_chat_template
    --rollout.n_samples_per_prompt 6 --rollout.temperature 1.0 --rollout.max_new_tokens 1024
    --max_prompt_len 1024 --data.max_len 2048 --train.seed 42
    --eva.metric A_min --eva.sample_mode weighted --eva.sample_fraction 0.25
    --eva.evolver evol_instruct --eva.evolutions_per_prompt 4 --eva.evolved_fraction 0.8
  --dpo-args
    --eva.loss "$LOSS" --eva.paper_defaults
    --train.micro_batch_size 1 --ds.zero_stage 3 --ds.param_dtype bf16
    --ds.attn_implementation flash_attention_2 --model.gradient_checkpointing_enable
    --ckpt.save_steps 200 --logger.logging_steps 1
)
if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%s\n' "${ARGS[@]}"; exit 0; fi
exec python -m openrlhf_eva.iterate "${ARGS[@]}"
