"""FakeVLLM: the slice of vLLM's API that OpenRLHF 0.11.2's Ray PPO path touches, for CPU tests.

vLLM needs CUDA and cannot be installed here, yet `openrlhf.trainer.ray.vllm_engine` and
`openrlhf.trainer.ppo_utils.samples_generator` import it at module top. `fake_vllm_modules()`
returns `sys.modules` entries that a test installs (and removes) itself:

    vllm            __version__, SamplingParams, AsyncEngineArgs, AsyncLLMEngine
    vllm.inputs     TokensPrompt
    vllm.utils      random_uuid
    vllm.outputs    RequestOutput, CompletionOutput

Shapes follow vLLM's: `SamplingParams` fields and defaults (max_tokens=16, skip_special_tokens
True, logprobs None), `RequestOutput.outputs[i]` with `.text`, `.token_ids`, `.finish_reason` and
`.logprobs`, and an `AsyncLLMEngine` whose `generate(prompt, sampling_params, request_id)` is an
async generator ending in the finished output. What the engine answers is scripted: it decodes the
prompt tokens with the model's tokenizer (as vLLM does) and calls `FakeAsyncLLMEngine.respond(text,
sampling_params, request_number) -> str`, which a test replaces. Every engine call is appended to
`FakeAsyncLLMEngine.calls` as `(method, detail)`.
"""

from __future__ import annotations

import copy
import types
import uuid
from dataclasses import dataclass
from typing import Any, Optional, TypedDict

__version__ = "0.29.0+fake"


@dataclass
class FakeSamplingParams:
    """vllm.SamplingParams: the fields OpenRLHF and eva set, with vLLM's defaults."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: Optional[int] = None
    max_tokens: Optional[int] = 16
    min_tokens: int = 0
    logprobs: Optional[int] = None
    skip_special_tokens: bool = True
    stop: Optional[list] = None


@dataclass
class FakeCompletionOutput:
    """vllm.outputs.CompletionOutput."""

    index: int
    text: str
    token_ids: list
    cumulative_logprob: Optional[float] = None
    logprobs: Optional[list] = None
    finish_reason: Optional[str] = None
    stop_reason: Any = None


@dataclass
class FakeRequestOutput:
    """vllm.outputs.RequestOutput."""

    request_id: str
    prompt: Optional[str]
    prompt_token_ids: list
    prompt_logprobs: Any
    outputs: list
    finished: bool


class FakeTokensPrompt(TypedDict, total=False):
    """vllm.inputs.TokensPrompt."""

    prompt_token_ids: list
    multi_modal_data: Any


def fake_random_uuid() -> str:
    """vllm.utils.random_uuid."""
    return uuid.uuid4().hex


class FakeAsyncEngineArgs:
    """vllm.AsyncEngineArgs: keeps the keyword arguments OpenRLHF passes (model, seed, ...)."""

    def __init__(self, model: str, **kwargs: Any) -> None:
        self.model = model
        self.extra = kwargs


class FakeOutputProcessor:
    def get_num_unfinished_requests(self) -> int:
        return 0


class FakeAsyncLLMEngine:
    """vllm.AsyncLLMEngine, answering with `respond` instead of a model."""

    calls: list = []

    @staticmethod
    def respond(text: str, sampling_params: FakeSamplingParams, request_number: int) -> str:
        return "ok"

    def __init__(self, engine_args: FakeAsyncEngineArgs) -> None:
        from transformers import AutoTokenizer

        self.engine_args = engine_args
        self.tokenizer = AutoTokenizer.from_pretrained(engine_args.model)
        self.output_processor = FakeOutputProcessor()
        self.sleeping = False
        self.num_requests = 0

    @classmethod
    def from_engine_args(cls, engine_args: FakeAsyncEngineArgs) -> "FakeAsyncLLMEngine":
        return cls(engine_args)

    async def is_sleeping(self) -> bool:
        return self.sleeping

    async def sleep(self, level: int = 1) -> None:
        self.sleeping = True
        FakeAsyncLLMEngine.calls.append(("sleep", level))

    async def wake_up(self, tags: Optional[list] = None) -> None:
        self.sleeping = False
        FakeAsyncLLMEngine.calls.append(("wake_up", tags))

    async def reset_prefix_cache(self) -> None:
        FakeAsyncLLMEngine.calls.append(("reset_prefix_cache", None))

    async def generate(self, prompt: FakeTokensPrompt, sampling_params: FakeSamplingParams, request_id: str):
        if self.sleeping:
            raise RuntimeError("FakeAsyncLLMEngine.generate called while the engine sleeps")
        prompt_ids = list(prompt["prompt_token_ids"])
        text = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        params = copy.deepcopy(sampling_params)
        answer = type(self).respond(text, params, self.num_requests)
        self.num_requests += 1
        FakeAsyncLLMEngine.calls.append(("generate", text))
        token_ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        finish_reason = "stop"
        if params.max_tokens is not None and len(token_ids) > params.max_tokens:
            token_ids, finish_reason = token_ids[: params.max_tokens], "length"
        output_text = self.tokenizer.decode(token_ids, skip_special_tokens=params.skip_special_tokens)
        completion = FakeCompletionOutput(index=0, text=output_text, token_ids=token_ids, finish_reason=finish_reason)
        yield FakeRequestOutput(request_id=request_id, prompt=None, prompt_token_ids=prompt_ids,
                                prompt_logprobs=None, outputs=[completion], finished=True)


def fake_vllm_modules() -> dict[str, types.ModuleType]:
    """`sys.modules` entries for `vllm` and the submodules OpenRLHF imports from."""
    vllm = types.ModuleType("vllm")
    vllm.__version__ = __version__
    vllm.SamplingParams = FakeSamplingParams
    vllm.AsyncEngineArgs = FakeAsyncEngineArgs
    vllm.AsyncLLMEngine = FakeAsyncLLMEngine
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = FakeTokensPrompt
    utils = types.ModuleType("vllm.utils")
    utils.random_uuid = fake_random_uuid
    outputs = types.ModuleType("vllm.outputs")
    outputs.RequestOutput = FakeRequestOutput
    outputs.CompletionOutput = FakeCompletionOutput
    vllm.inputs, vllm.utils, vllm.outputs = inputs, utils, outputs
    return {"vllm": vllm, "vllm.inputs": inputs, "vllm.utils": utils, "vllm.outputs": outputs}
