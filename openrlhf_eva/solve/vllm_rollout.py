"""Colocated vLLM rollouts for train_rloo: one offline vLLM engine inside each rank's process.

The anchors are TRL's GRPO/RLOO "colocate" mode and OpenRLHF's hybrid engine (`--train.colocate_all
--vllm.enable_sleep`): the engine shares the rank's GPU with the DeepSpeed policy, generates this
rank's shard of the batch, sleeps while the policy trains, and takes the policy's weights before it
generates again. Nothing here talks to another rank: each rank's engine sees only its own process.

The vLLM 0.29 calls, all on the offline `vllm.LLM` (vllm/entrypoints/llm.py):
- `LLM(model, dtype, seed, gpu_memory_utilization, enable_sleep_mode, enforce_eager,
  tensor_parallel_size, max_model_len, distributed_executor_backend="external_launcher")`:
  "external_launcher" is the executor TRL's colocate mode uses under torchrun/deepspeed: vLLM joins
  the launcher's process instead of spawning workers; VLLM_ENABLE_V1_MULTIPROCESSING=0 keeps the
  V1 engine core in this process, which the weight path below needs.
- `LLM.generate(prompts=[TokensPrompt(prompt_token_ids=...)], sampling_params=SamplingParams(n,
  temperature, top_p, max_tokens, seed), use_tqdm=False)` -> one RequestOutput per prompt, in
  order, whose `.outputs[i].token_ids` are the new tokens (the eos included when it stopped on it).
- `LLM.sleep(level=1)` (weights offloaded to CPU, KV cache dropped) and `LLM.wake_up()`; both need
  `enable_sleep_mode=True`.
- weights: `llm.llm_engine.model_executor.driver_worker.worker.model_runner.model.load_weights(
  [(hf_name, tensor), ...])`, the in-process path TRL's colocate mode uses; vLLM's model classes
  map HF parameter names (and fuse q/k/v, gate/up) in `load_weights`.
"""

from __future__ import annotations

import importlib
import os
from typing import Sequence

import torch
from openrlhf.trainer.ppo_utils import Experience

from openrlhf_eva.solve.online import experience_from_tokens

INSTALL = "pip install 'openrlhf-eva[gpu]' (openrlhf[vllm]==0.11.2, which pins vllm==0.29.0)"


class ColocatedVLLMEngine:
    """This rank's vLLM engine over ``model_path``, laid out like HF generate's rollouts (online.generate)."""

    def __init__(self, model_path: str, *, dtype: str, seed: int, gpu_memory_utilization: float,
                 enable_sleep: bool, enforce_eager: bool, max_model_len: int) -> None:
        try:
            vllm = importlib.import_module("vllm")
        except ImportError as error:
            raise RuntimeError(f"--vllm.num_engines needs vLLM, which is not installed ({error}): {INSTALL}") from None
        self.vllm, self.enable_sleep, self.sleeping = vllm, enable_sleep, False
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            self.llm = vllm.LLM(model=model_path, dtype=dtype, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                                enable_sleep_mode=enable_sleep, enforce_eager=enforce_eager, tensor_parallel_size=1,
                                max_model_len=max_model_len, distributed_executor_backend="external_launcher")
        except (torch.cuda.OutOfMemoryError, ValueError, RuntimeError) as error:
            # vLLM sizes its KV cache from the free memory at start-up (a ValueError when none is left):
            # say what the policy already holds on this device, the usual culprit when colocated.
            if "memory" not in str(error).lower():
                raise
            held = ""
            if torch.cuda.is_available():
                free, total = torch.cuda.mem_get_info()
                held = (f"; this process's torch tensors hold {torch.cuda.memory_allocated() / 2**30:.1f} GiB, "
                        f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free on cuda:{torch.cuda.current_device()}")
            raise RuntimeError(f"the vLLM engine found no room at --vllm.gpu_memory_utilization "
                               f"{gpu_memory_utilization}{held}: lower it, or free memory (ZeRO offload, "
                               f"--ref.offload, a smaller --rollout.micro_batch_size) ({error})") from error
        self.loaded_step = None  # the policy the engine holds, in trained batches (None: the model's files)

    def load_policy_weights(self, model: torch.nn.Module, step: int) -> None:
        """Copy the policy's weights (named as its HF checkpoint) into the engine, once per ``step``:
        the number of rollout batches the policy has trained on.

        ZeRO-2 keeps whole parameters on every rank; under ZeRO-3 each one is gathered, loaded and
        released in turn (GatheredParameters is a no-op for a parameter DeepSpeed does not partition)."""
        if self.loaded_step == step:
            return
        import deepspeed

        engine_model = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
        for name, param in model.named_parameters():
            with deepspeed.zero.GatheredParameters([param]):
                engine_model.load_weights([(name, param.data)])
        self.loaded_step = step

    def wake_up(self) -> None:
        if self.enable_sleep and self.sleeping:
            self.llm.wake_up()
            self.sleeping = False

    def sleep(self) -> None:
        """Free the KV cache and offload the weights while the policy trains (level 1 keeps them)."""
        if self.enable_sleep and not self.sleeping:
            self.llm.sleep(level=1)
            self.sleeping = True

    @torch.no_grad()
    def generate(self, tokenizer, prompts: Sequence[str], n: int, *, max_new_tokens: int, temperature: float,
                 top_p: float, seed: int, prompt_max_len: int) -> Experience:
        """online.generate's arguments and result: prompt i's samples are rows i*n .. i*n+n-1.

        Every request carries ``seed``, so a step's rollouts depend only on (seed, step, rank) and a
        resumed run samples what the uninterrupted one did."""
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False, truncation=True,
                        max_length=prompt_max_len)
        requests = [{"prompt_token_ids": ids[mask.bool()].tolist()}
                    for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]
        params = self.vllm.SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                          seed=seed)
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        rows = [list(sample.token_ids) for output in outputs for sample in output.outputs]
        response = torch.full((len(rows), max(map(len, rows))), tokenizer.pad_token_id, dtype=torch.long)
        for i, row in enumerate(rows):
            response[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        return experience_from_tokens(enc, response, tokenizer, prompts, n)
