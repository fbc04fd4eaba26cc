"""FakeHFAsyncLLMEngine: vLLM's async engine as OpenRLHF 0.11.2's RolloutRayActor drives it, over a
transformers model on CPU, for the real Ray path on a machine without CUDA (tests/test_ray_cpu.py).

vLLM needs CUDA. Everything around the engine is real there: Ray actors and placement groups,
RolloutRayActor (trainer/ray/vllm_engine.py), its SingleTurnAgentExecutor, the weight sync from
DeepSpeed rank 0. `tests/fakes/hf_vllm/vllm/` makes this module `vllm.AsyncLLMEngine` for every
process that has that folder and `tests/fakes` on PYTHONPATH (the driver and, by inheritance, every
Ray worker), with FakeVLLM's SamplingParams and outputs (fake_vllm.py).

The surface follows vLLM 0.29's v1 AsyncLLM: `from_engine_args`, `generate(prompt, sampling_params,
request_id)` as an async generator ending in the finished RequestOutput, `sleep(level)`,
`wake_up(tags)` with the "weights" and "kv_cache" tags, `is_sleeping()`, `reset_prefix_cache()`,
`collective_rpc(method, timeout, args, kwargs)` returning one result per worker, and
`output_processor.get_num_unfinished_requests()`. Requests run one at a time with HF `generate`
(bf16 weights, the engine seed, or a request's own `seed`). Outputs hold the new token ids with the
eos token, finish_reason "stop" or "length", text decoded as `skip_special_tokens` says.

Bad input fails loudly, as it would fail (or silently corrupt) on a real engine: `generate` while
asleep, weights updated while the weights sleep, a prompt over `max_model_len`, sleep without
`enable_sleep_mode`, and the vLLM features the stand-in does not have (logprobs, sleep level 2).

The one worker (tensor parallel size 1, the "uni" executor) is `FakeHFWorker`: the
`init_process_group` and `update_weight` of OpenRLHF's WorkerWrap (trainer/ray/vllm_worker_wrap.py)
on the CPU, receiving each broadcast tensor into the HF model. With FAKE_HF_VLLM_RECORD_DIR set,
every engine call is appended to `engine-<seed>.jsonl` there, and after each complete weight sync
(the update flagged `empty_cache`, which OpenRLHF sets on the last parameter, ppo_actor.py:427) the
engine's weights are written to `engine-<seed>.safetensors`, for the test to compare.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
from fake_vllm import FakeCompletionOutput, FakeOutputProcessor, FakeRequestOutput, FakeSamplingParams

WORKER_EXTENSION = "openrlhf.trainer.ray.vllm_worker_wrap.WorkerWrap"
SLEEP_TAGS = ("weights", "kv_cache")


@dataclass
class FakeHFEngineArgs:
    """vllm.AsyncEngineArgs: exactly the fields OpenRLHF's create_vllm_engines passes (vllm_engine.py:264-295).
    An unknown keyword is a TypeError, as vLLM's dataclass raises."""

    model: str
    enforce_eager: bool = False
    worker_extension_cls: str = ""
    tensor_parallel_size: int = 1
    seed: int = 0
    distributed_executor_backend: Optional[str] = None
    max_model_len: Optional[int] = None
    enable_prefix_caching: bool = False
    dtype: str = "auto"
    trust_remote_code: bool = False
    gpu_memory_utilization: Optional[float] = None
    enable_sleep_mode: bool = False
    logprobs_mode: Optional[str] = None
    max_logprobs: int = 20
    limit_mm_per_prompt: Optional[dict] = None


class FakeHFModel:
    """`model_runner.model` of a vLLM worker: the HF model plus vLLM's `load_weights(weights)`."""

    def __init__(self, path: str, dtype: torch.dtype) -> None:
        from transformers import AutoModelForCausalLM

        self.hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
        self.parameters = dict(self.hf.named_parameters())

    def load_weights(self, weights) -> set[str]:
        loaded = set()
        with torch.no_grad():
            for name, tensor in weights:
                if name not in self.parameters:
                    raise KeyError(f"FakeHFModel.load_weights: no parameter {name!r} in the engine's model")
                self.parameters[name].copy_(tensor)
                loaded.add(name)
        return loaded


class FakeHFWorker:
    """The engine's one worker, with WorkerWrap's weight-sync methods on the CPU."""

    def __init__(self, engine: "FakeHFAsyncLLMEngine", model: FakeHFModel, dtype: torch.dtype) -> None:
        self.engine = engine
        self.device = torch.device("cpu")
        self.model_config = type("ModelConfig", (), {"dtype": dtype})()
        self.model_runner = type("ModelRunner", (), {"model": model})()
        self._model_update_group = None
        self.updated_since_sync = 0

    def init_process_group(self, master_address, master_port, rank_offset, world_size, group_name, backend="nccl",
                           use_ray=False):
        # vllm_worker_wrap.py:2-30 for tensor-parallel rank 0: the group OpenRLHF's utils builds
        # (compat.ray_cpu's gloo group on CPU), joined at rank_offset.
        from openrlhf.utils import distributed_util

        if use_ray:
            raise NotImplementedError("FakeHFWorker: --vllm.sync_with_ray (ray.util.collective) is not faked")
        self._model_update_group = distributed_util.stateless_init_process_group(
            master_address, master_port, rank_offset, world_size, self.device)

    def update_weight(self, name, dtype, shape, empty_cache=False):
        # vllm_worker_wrap.py:32-50 on self.device instead of "cuda".
        if self._model_update_group is None:
            raise RuntimeError("FakeHFWorker.update_weight before init_process_group")
        if dtype != self.model_config.dtype:
            raise AssertionError(f"mismatch dtype: src {dtype}, dst {self.model_config.dtype}")
        weight = torch.empty(shape, dtype=dtype, device=self.device)
        self._model_update_group.broadcast(weight, src=0, stream=None)
        self.model_runner.model.load_weights(weights=[(name, weight)])
        self.updated_since_sync += 1
        if empty_cache:  # the last parameter of a sync (ppo_actor.py:427)
            self.engine.record("synced", parameters=self.updated_since_sync)
            self.engine.save_weights()
            self.updated_since_sync = 0


class FakeHFAsyncLLMEngine:
    """vllm.AsyncLLMEngine (v1 AsyncLLM) over a transformers model on CPU; see the module docstring."""

    def __init__(self, engine_args: FakeHFEngineArgs) -> None:
        from transformers import AutoTokenizer

        if engine_args.worker_extension_cls != WORKER_EXTENSION:
            raise ValueError(f"FakeHFAsyncLLMEngine fakes {WORKER_EXTENSION}'s methods, not "
                             f"{engine_args.worker_extension_cls!r}")
        if engine_args.tensor_parallel_size != 1:
            raise ValueError("FakeHFAsyncLLMEngine has one worker: --vllm.tensor_parallel_size 1")
        self.engine_args = engine_args
        dtype = torch.float32 if engine_args.dtype == "auto" else getattr(torch, engine_args.dtype)
        torch.manual_seed(engine_args.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(engine_args.model)
        self.model = FakeHFModel(engine_args.model, dtype)
        self.worker = FakeHFWorker(self, self.model, dtype)
        self.output_processor = FakeOutputProcessor()
        self.sleeping_tags: set[str] = set()
        self.record_dir = os.environ.get("FAKE_HF_VLLM_RECORD_DIR")

    @classmethod
    def from_engine_args(cls, engine_args: FakeHFEngineArgs) -> "FakeHFAsyncLLMEngine":
        return cls(engine_args)

    # --- what the test reads back -----------------------------------------------------------------

    def _record_path(self, suffix: str) -> Optional[str]:
        if not self.record_dir:
            return None
        return os.path.join(self.record_dir, f"engine-{self.engine_args.seed}{suffix}")

    def record(self, call: str, **detail: Any) -> None:
        path = self._record_path(".jsonl")
        if path:
            with open(path, "a") as log:
                log.write(json.dumps({"call": call, **detail}) + "\n")

    def save_weights(self) -> None:
        from safetensors.torch import save_file

        path = self._record_path(".safetensors")
        if path:
            save_file({name: p.detach().contiguous() for name, p in self.model.parameters.items()}, path)

    # --- vLLM's AsyncLLM surface ------------------------------------------------------------------

    async def is_sleeping(self) -> bool:
        return bool(self.sleeping_tags)

    async def sleep(self, level: int = 1, mode: str = "abort") -> None:
        if not self.engine_args.enable_sleep_mode:
            raise ValueError("Sleep mode is not enabled: create the engine with enable_sleep_mode=True")
        if level != 1:
            raise NotImplementedError(f"FakeHFAsyncLLMEngine sleeps at level 1 (weights kept), not level {level}")
        self.sleeping_tags = set(SLEEP_TAGS)
        self.record("sleep", level=level)

    async def wake_up(self, tags: Optional[list] = None) -> None:
        tags = list(SLEEP_TAGS) if tags is None else list(tags)
        unknown = set(tags) - set(SLEEP_TAGS)
        if unknown:
            raise ValueError(f"unknown wake-up tags {sorted(unknown)}; vLLM knows {list(SLEEP_TAGS)}")
        self.sleeping_tags -= set(tags)
        self.record("wake_up", tags=tags)

    async def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        self.record("reset_prefix_cache")
        return True

    async def collective_rpc(self, method: str, timeout: Optional[float] = None, args: tuple = (),
                             kwargs: Optional[dict] = None) -> list:
        if method.startswith("update_weight") and "weights" in self.sleeping_tags:
            raise RuntimeError(f"FakeHFAsyncLLMEngine.collective_rpc({method!r}) while the weights sleep: "
                               "wake_up(tags=['weights']) first")
        return [getattr(self.worker, method)(*args, **(kwargs or {}))]

    async def generate(self, prompt: dict, sampling_params: FakeSamplingParams, request_id: str, **kwargs):
        if self.sleeping_tags:
            raise RuntimeError(f"FakeHFAsyncLLMEngine.generate (request {request_id}) while the engine sleeps "
                               f"({sorted(self.sleeping_tags)} not woken): call wake_up() first")
        if sampling_params.logprobs is not None:
            raise NotImplementedError("FakeHFAsyncLLMEngine returns no logprobs")
        prompt_ids = list(prompt["prompt_token_ids"])
        limit = self.engine_args.max_model_len
        if limit is not None and len(prompt_ids) >= limit:
            raise ValueError(f"The decoder prompt (length {len(prompt_ids)}) is longer than the maximum model "
                             f"length of {limit}")
        room = limit - len(prompt_ids) if limit is not None else None
        max_tokens = sampling_params.max_tokens if sampling_params.max_tokens is not None else room
        max_tokens = min(max_tokens, room) if room is not None else max_tokens
        token_ids = self._sample(prompt_ids, sampling_params, max_tokens)
        eos = self.tokenizer.eos_token_id
        finish_reason = "stop" if token_ids and token_ids[-1] == eos else "length"
        text = self.tokenizer.decode(token_ids, skip_special_tokens=sampling_params.skip_special_tokens)
        self.record("generate", prompt=self.tokenizer.decode(prompt_ids, skip_special_tokens=False),
                    new_tokens=len(token_ids))
        completion = FakeCompletionOutput(index=0, text=text, token_ids=token_ids, finish_reason=finish_reason)
        yield FakeRequestOutput(request_id=request_id, prompt=None, prompt_token_ids=prompt_ids,
                                prompt_logprobs=None, outputs=[completion], finished=True)

    def _sample(self, prompt_ids: list[int], params: FakeSamplingParams, max_tokens: int) -> list[int]:
        sampling = {"do_sample": params.temperature > 0}
        if params.temperature > 0:
            sampling.update(temperature=params.temperature, top_p=params.top_p,
                            top_k=params.top_k if params.top_k and params.top_k > 0 else None)
        with torch.random.fork_rng(enabled=params.seed is not None), torch.no_grad():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            output = self.model.hf.generate(
                torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                max_new_tokens=max_tokens, min_new_tokens=min(params.min_tokens, max_tokens),
                eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id, **sampling)
        return output[0, len(prompt_ids):].tolist()


class FakeHFLLM:
    """vllm.LLM (vLLM 0.29's offline engine) over a transformers model on CPU, for train_rloo's
    colocated rollouts (openrlhf_eva/solve/vllm_rollout.py, tests/test_train_rloo_vllm.py).

    The surface that module uses: the constructor's keywords (an unknown one is a TypeError),
    `generate(prompts, sampling_params, use_tqdm)` with token-id prompts and one SamplingParams,
    `sleep(level)`, `wake_up(tags)`, and the in-process weight path
    `llm_engine.model_executor.driver_worker.worker.model_runner.model.load_weights(weights)`.
    Generating or loading weights while asleep raises, as both would fail or corrupt on a real engine.

    Not vLLM's sampler: all prompts go through one left-padded HF `generate` with
    num_return_sequences=n under `torch.manual_seed(seed)`, the exact call openrlhf_eva.solve.online
    makes, so that with equal weights the two paths sample equal tokens. `calls` lists every
    sleep/wake_up/load_weights/generate in order, for the test to check the engine's life cycle.
    """

    def __init__(self, model: str, *, dtype: str = "auto", seed: int = 0, gpu_memory_utilization: float = 0.9,
                 enable_sleep_mode: bool = False, enforce_eager: bool = False, tensor_parallel_size: int = 1,
                 max_model_len: Optional[int] = None, distributed_executor_backend: Optional[str] = None) -> None:
        from transformers import AutoTokenizer

        if tensor_parallel_size != 1:
            raise ValueError("FakeHFLLM has one worker: tensor_parallel_size 1")
        self.init_kwargs = dict(dtype=dtype, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                                enable_sleep_mode=enable_sleep_mode, enforce_eager=enforce_eager,
                                max_model_len=max_model_len, distributed_executor_backend=distributed_executor_backend)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = FakeHFModel(model, torch.float32 if dtype == "auto" else getattr(torch, dtype))
        self.sleeping, self.calls = False, []
        loader = self

        class WeightGuard:  # the engine's model, refusing weights while they sleep
            def load_weights(self, weights):
                if loader.sleeping:
                    raise RuntimeError("FakeHFLLM: load_weights while the engine sleeps: wake_up() first")
                loader.calls.append("load_weights")
                return loader.model.load_weights(weights)

        worker = type("Worker", (), {"model_runner": type("ModelRunner", (), {"model": WeightGuard()})()})()
        executor = type("Executor", (), {"driver_worker": type("WorkerWrapper", (), {"worker": worker})()})()
        self.llm_engine = type("LLMEngine", (), {"model_executor": executor})()

    def sleep(self, level: int = 1) -> None:
        if not self.init_kwargs["enable_sleep_mode"]:
            raise ValueError("Sleep mode is not enabled: create the LLM with enable_sleep_mode=True")
        if level != 1:
            raise NotImplementedError(f"FakeHFLLM sleeps at level 1 (weights kept), not level {level}")
        self.sleeping = True
        self.calls.append("sleep")

    def wake_up(self, tags: Optional[list] = None) -> None:
        self.sleeping = False
        self.calls.append("wake_up")

    def generate(self, prompts: list, sampling_params: FakeSamplingParams, use_tqdm: bool = True) -> list:
        if self.sleeping:
            raise RuntimeError("FakeHFLLM.generate while the engine sleeps: call wake_up() first")
        if isinstance(sampling_params, list) or sampling_params.seed is None:
            raise NotImplementedError("FakeHFLLM samples one batch under one seed: a single seeded SamplingParams")
        self.calls.append("generate")
        ids = [list(prompt["prompt_token_ids"]) for prompt in prompts]
        width, pad, eos = max(map(len, ids)), self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in ids])
        attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids])
        params = sampling_params
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(params.seed)
            out = self.model.hf.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=True,
                                         temperature=params.temperature, top_p=params.top_p,
                                         max_new_tokens=params.max_tokens, num_return_sequences=params.n,
                                         use_cache=True, pad_token_id=pad, eos_token_id=eos)
        outputs = []
        for i, prompt_ids in enumerate(ids):
            completions = []
            for j in range(params.n):
                row = out[i * params.n + j, width:].tolist()
                stop = row.index(eos) + 1 if eos in row else len(row)  # vLLM keeps the eos, nothing after it
                completions.append(FakeCompletionOutput(
                    index=j, text=self.tokenizer.decode(row[:stop], skip_special_tokens=params.skip_special_tokens),
                    token_ids=row[:stop], finish_reason="stop" if eos in row else "length"))
            outputs.append(FakeRequestOutput(request_id=str(i), prompt=None, prompt_token_ids=prompt_ids,
                                             prompt_logprobs=None, outputs=completions, finished=True))
        return outputs
