"""`import vllm` in the processes of tests/test_ray_cpu.py: FakeVLLM with the HF-backed engine.

Not vLLM. With `tests/fakes/hf_vllm` and `tests/fakes` on PYTHONPATH, the driver and every Ray
worker it starts (they inherit the environment) import this package as `vllm`: FakeVLLM's
SamplingParams, TokensPrompt, random_uuid and outputs (tests/fakes/fake_vllm.py), and
FakeHFAsyncLLMEngine as the engine (tests/fakes/fake_hf_vllm.py); and FakeHFLLM as the offline
`vllm.LLM` of train_rloo's colocated rollouts (tests/test_train_rloo_vllm.py).
"""

import sys

from fake_hf_vllm import FakeHFAsyncLLMEngine as AsyncLLMEngine
from fake_hf_vllm import FakeHFEngineArgs as AsyncEngineArgs
from fake_hf_vllm import FakeHFLLM as LLM
from fake_vllm import FakeSamplingParams as SamplingParams
from fake_vllm import __version__, fake_vllm_modules

# vllm.inputs, vllm.utils, vllm.outputs: found in sys.modules by `from vllm.inputs import ...`.
for _name, _module in fake_vllm_modules().items():
    if _name != "vllm":
        sys.modules[_name] = _module
        setattr(sys.modules[__name__], _name.split(".")[1], _module)

__all__ = ["AsyncEngineArgs", "AsyncLLMEngine", "LLM", "SamplingParams", "__version__"]
