"""Generation backends: the OpenAI-compatible client against a real HTTP server on loopback (replies,
auth, retries, timeouts, malformed replies, concurrency), HF generate on the tiny Llama, and the
vLLM glue on a FakeLLM shaped like vllm.LLM."""

import importlib.machinery
import importlib.util
import json
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from openrlhf_eva.embedded.model import build_tiny
from openrlhf_eva.generation import HFGenerator, OpenAIGenerator, VLLMGenerator, build_generator, load_causal_lm


def load_test_helper(name: str):
    """A helper module beside this file, by path: tests/ is not a package (see CONTRIBUTING.md)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


scripted_server = load_test_helper("scripted_server")
ScriptedServer, chat_reply = scripted_server.ScriptedServer, scripted_server.chat_reply


def echo_script(body, number):
    if "messages" in body:
        return 200, chat_reply("re: " + body["messages"][-1]["content"]), 0.0
    return 200, json.dumps({"choices": [{"text": "re: " + body["prompt"]}]}).encode(), 0.0


def test_chat_and_completions_requests_and_the_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("EVA_TEST_KEY", "sk-local-123")
    with ScriptedServer(echo_script) as server:
        generator = OpenAIGenerator(server.url, "creator", api_key_env="EVA_TEST_KEY", max_new_tokens=40,
                                    temperature=0.3, top_p=0.9, seed=5)
        replies = generator(["first", [{"role": "system", "content": "be kind"}, {"role": "user", "content": "two"}]])
        assert replies == ["re: first", "re: two"]
        path, headers, body = sorted(server.requests, key=lambda r: r[2]["seed"])[0]
        assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sk-local-123"
        assert body == {"model": "creator", "max_tokens": 40, "temperature": 0.3, "top_p": 0.9, "seed": 5,
                        "messages": [{"role": "user", "content": "first"}]}
        second = sorted(server.requests, key=lambda r: r[2]["seed"])[1][2]
        assert second["seed"] == 6 and second["messages"][0] == {"role": "system", "content": "be kind"}
        assert generator(["again"], temperature=0.0) == ["re: again"]
        assert server.requests[-1][2]["temperature"] == 0.0 and server.requests[-1][2]["seed"] == 5 + 100_003

        monkeypatch.delenv("EVA_TEST_KEY")
        plain = OpenAIGenerator(server.url, "creator", api_key_env="EVA_TEST_KEY", chat=False)
        assert plain(["third"]) == ["re: third"]
        path, headers, body = server.requests[-1]
        assert path == "/v1/completions" and "Authorization" not in headers and body["prompt"] == "third"
    assert generator.stats["succeeded"] == 3 and generator.stats["failed"] == 0


def test_server_errors_are_retried_with_backoff_client_errors_are_not():
    def script(body, number):
        text = body["messages"][0]["content"]
        if text == "flaky" and number < 2:
            return 503, b'{"error": "overloaded"}', 0.0
        if text == "bad request":
            return 400, b'{"error": "no such model"}', 0.0
        return 200, chat_reply("ok " + text), 0.0

    with ScriptedServer(script) as server:
        generator = OpenAIGenerator(server.url, "m", retries=3, backoff=0.05, concurrency=1)
        started = time.monotonic()
        assert generator(["flaky"]) == ["ok flaky"]
        assert time.monotonic() - started >= 0.05 * 0.5 + 0.1 * 0.5  # two backoffs, with jitter in [0.5, 1]
        assert generator.stats["retries"] == 2 and generator.stats["errors"] == 2
        assert generator(["bad request"]) == [""]
        assert generator.stats["failed"] == 1 and generator.stats["retries"] == 2  # a 400 is not retried
        assert "HTTP 400" in generator.last_error and "no such model" in generator.last_error
        assert len(server.requests) == 4


@pytest.mark.parametrize("payload, message", [
    (b"not json at all", "malformed reply (JSONDecodeError"),
    (b'{"choices": []}', "malformed reply (IndexError"),
    (b'{"result": "text"}', "malformed reply (KeyError"),
    (json.dumps({"choices": [{"message": {"content": None}}]}).encode(), "content is NoneType"),
])
def test_malformed_replies_are_retried_then_counted(payload, message):
    with ScriptedServer(lambda body, number: (200, payload, 0.0)) as server:
        generator = OpenAIGenerator(server.url, "m", retries=1, backoff=0.01)
        assert generator(["a", "b"]) == ["", ""]
        assert generator.stats["failed"] == 2 and generator.stats["retries"] == 2
        assert message in generator.last_error and len(server.requests) == 4


def test_a_slow_server_times_out_instead_of_hanging():
    with ScriptedServer(lambda body, number: (200, chat_reply("late"), 1.5)) as server:
        generator = OpenAIGenerator(server.url, "m", timeout=0.3, retries=1, backoff=0.01)
        started = time.monotonic()
        assert generator(["a", "b", "c"]) == ["", "", ""]
        elapsed = time.monotonic() - started
        assert elapsed < 1.5  # 2 tries x 0.3 s, in parallel; never the server's 1.5 s
        assert generator.stats["failed"] == 3 and "timed out" in generator.last_error.lower()


def test_an_unreachable_server_fails_fast():
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    generator = OpenAIGenerator(f"http://127.0.0.1:{port}/v1", "m", retries=2, backoff=0.01, timeout=2)
    assert generator(["a"]) == [""]
    assert generator.stats["errors"] == 3 and "refused" in generator.last_error.lower()


def test_concurrency_is_bounded():
    with ScriptedServer(lambda body, number: (200, chat_reply("x"), 0.1)) as server:
        generator = OpenAIGenerator(server.url, "m", concurrency=3)
        assert generator([str(k) for k in range(12)]) == ["x"] * 12
        assert server.max_in_flight == 3


def test_settings_are_checked():
    generator = OpenAIGenerator("http://127.0.0.1:9/v1", "m")
    with pytest.raises(TypeError, match=r"unknown sampling settings \['top_k'\]"):
        generator(["a"], top_k=5)
    assert generator([]) == [] and generator.stats["calls"] == 0
    with pytest.raises(ValueError, match="concurrency >= 1"):
        OpenAIGenerator("http://127.0.0.1:9/v1", "m", concurrency=0)
    with pytest.raises(ValueError, match="needs the server's URL"):
        build_generator("openai", "m")
    with pytest.raises(ValueError, match="unknown generation backend 'tgi'"):
        build_generator("tgi", "m")


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny_generator"), seed=42)


def test_hf_generator_on_the_tiny_llama(tiny_path):
    generator = build_generator("hf", tiny_path, max_new_tokens=6, temperature=1.0, batch_size=2, seed=3)
    assert generator.model.dtype == torch.float32 and not generator.model.training
    prompts = ["copy 12", "rev 345", [{"role": "user", "content": "sort 321"}]]
    first = generator(prompts)
    assert len(first) == 3 and all(isinstance(text, str) for text in first)
    assert generator.stats == {"calls": 1, "prompts": 3, "truncated": generator.stats["truncated"]}
    # a chat list and the same text as a string are the same prompt
    greedy = generator(["sort 321", [{"role": "user", "content": "sort 321"}]], temperature=0.0)
    assert greedy[0] == greedy[1]
    again = HFGenerator(generator.model, generator.tokenizer, max_new_tokens=6, temperature=1.0, batch_size=2, seed=3)
    assert again(prompts) == first  # same seed, same call number: same samples


def test_load_causal_lm_gives_a_pad_token(tiny_path):
    model, tokenizer = load_causal_lm(tiny_path, device="cpu")
    assert tokenizer.pad_token is not None and tokenizer.eos_token_id == model.generation_config.eos_token_id


@dataclass
class FakeSamplingParams:
    """vllm.SamplingParams: the fields VLLMGenerator sets, with vLLM's defaults."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    seed: int | None = None


@dataclass
class FakeCompletionOutput:
    index: int
    text: str
    token_ids: list
    finish_reason: str | None = None


@dataclass
class FakeRequestOutput:
    prompt_token_ids: list
    outputs: list = field(default_factory=list)


class FakeLLM:
    """vllm.LLM.generate(prompts, sampling_params, use_tqdm): one output per request, text from the seed."""

    def __init__(self, tokenizer):
        self.tokenizer, self.requests = tokenizer, []

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.requests.append((prompts, sampling_params))
        return [FakeRequestOutput(p["prompt_token_ids"], [FakeCompletionOutput(
            0, f"reply {params.seed}", [], "length" if params.seed % 2 else "stop")])
            for p, params in zip(prompts, sampling_params)]


def test_vllm_generator_sends_templated_token_ids_with_seeds(tiny_path, monkeypatch):
    from transformers import AutoTokenizer

    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.SamplingParams = FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    llm = FakeLLM(tokenizer)
    generator = VLLMGenerator(llm, max_new_tokens=9, temperature=0.5, top_p=0.8, seed=10)
    assert generator(["copy 12", "rev 3"]) == ["reply 10", "reply 11"]
    prompts, params = llm.requests[0]
    templated = tokenizer.apply_chat_template([{"role": "user", "content": "copy 12"}], tokenize=False,
                                              add_generation_prompt=True)
    assert prompts[0] == {"prompt_token_ids": tokenizer(templated, add_special_tokens=False)["input_ids"]}
    assert [(p.n, p.max_tokens, p.temperature, p.top_p, p.seed) for p in params] == [
        (1, 9, 0.5, 0.8, 10), (1, 9, 0.5, 0.8, 11)]
    assert generator.stats["truncated"] == 1
    assert generator(["x"]) == [f"reply {10 + 100_003}"]
