"""Generation backends for the creator's LLM calls: evolvers, the answer rewriter and the prompt judge.

Every backend is a ``Generator``: ``generate(prompts, **sampling) -> replies``, one reply per
prompt, in order. A prompt is a user message (``str``) or a whole chat (a list of ``{"role",
"content"}`` dicts, as distilabel sends). Chat templating is the backend's job. A generator is also
callable as ``generator(prompts)``, the ``generate`` evolvers take. ``sampling`` overrides the
defaults given at construction: ``max_new_tokens``, ``temperature`` (0 = greedy), ``top_p``.

    HFGenerator      a transformers causal LM, batched ``generate`` with the KV cache
                     (``openrlhf_eva.rollout.sample_responses``); ``HFGenerator.from_pretrained``
                     also loads a GGUF file (dequantised by transformers, needs ``gguf``)
    VLLMGenerator    an offline ``vllm.LLM``, one seeded request per prompt
    OpenAIGenerator  an OpenAI-compatible HTTP server (/v1/chat/completions or /v1/completions):
                     key from an environment variable only, per-request deadline, retries with
                     exponential backoff, bounded concurrency; a request that still fails gives ""
                     and is counted in ``stats["failed"]`` (``last_error`` says why), never a hang
    build_generator  one of the three by name, for the entry points' flags

In the Ray path the trainer's own vLLM engines serve the creator instead
(``openrlhf_eva.train_ppo_ray.vllm_generate``), unless --eva.evolver_url names a server. Counters
for logs live in ``stats``; ``stats["calls"]`` also sets each call's seed, so a trainer that
resumes a run restores it (``openrlhf_eva.train_rloo`` keeps it in its checkpoints).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence, Union

import torch

Prompt = Union[str, list]


def chat_messages(prompt: Prompt) -> list[dict]:
    """A prompt as a chat: a bare string is one user turn."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]


class Generator(ABC):
    """One reply per prompt. Subclasses implement ``_generate`` with resolved sampling settings."""

    def __init__(self, *, max_new_tokens: int = 512, temperature: float = 0.7, top_p: float = 0.95,
                 seed: int = 42) -> None:
        self.sampling = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
        self.seed = seed
        self.stats: Counter[str] = Counter()
        self.last_error: str | None = None

    def generate(self, prompts: Sequence[Prompt], **sampling: Any) -> list[str]:
        unknown = set(sampling) - set(self.sampling)
        if unknown:
            raise TypeError(f"unknown sampling settings {sorted(unknown)}; use {sorted(self.sampling)}")
        if not prompts:
            return []
        settings = {**self.sampling, **sampling}
        # A fresh seed per call: the same meta-prompt sent in two steps must not give the same reply.
        call_seed = self.seed + 100_003 * self.stats["calls"]
        self.stats["calls"] += 1
        self.stats["prompts"] += len(prompts)
        replies = self._generate(list(prompts), call_seed, **settings)
        if len(replies) != len(prompts):
            raise RuntimeError(f"{type(self).__name__} returned {len(replies)} replies for {len(prompts)} prompts")
        return replies

    __call__ = generate

    @abstractmethod
    def _generate(self, prompts: list[Prompt], seed: int, *, max_new_tokens: int, temperature: float,
                  top_p: float) -> list[str]:
        ...


def load_causal_lm(path: str, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """(model, tokenizer) from a folder, a hub-style name, or a ``.gguf`` file.

    A GGUF file is dequantised to ``dtype`` by transformers on load (``gguf_file=``). Its stored
    end-of-sequence token can be wrong for chat models (SmolLM2's GGUF names <|im_start|>): the
    model's own ``eos_token_id`` wins, since it is the token the model ends a turn with.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    kwargs: dict[str, Any] = {}
    if str(path).endswith(".gguf"):
        path, kwargs["gguf_file"] = os.path.split(os.path.abspath(path))
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs).to(device).eval()
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    if eos is not None and eos != tokenizer.eos_token_id:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _template(tokenizer, prompt: Prompt) -> str:
    if not getattr(tokenizer, "chat_template", None):  # a base model: the user text is the prompt
        return prompt if isinstance(prompt, str) else "\n\n".join(m["content"] for m in prompt)
    return tokenizer.apply_chat_template(chat_messages(prompt), tokenize=False, add_generation_prompt=True)


class HFGenerator(Generator):
    """A transformers causal LM. Prompts go through the tokenizer's chat template; ``batch_size``
    prompts per ``generate`` call. Pass the policy's own model to evolve with the policy."""

    def __init__(self, model, tokenizer, *, batch_size: int = 16, **defaults: Any) -> None:
        super().__init__(**defaults)
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    @classmethod
    def from_pretrained(cls, path: str, *, device=None, dtype=None, **options: Any) -> "HFGenerator":
        model, tokenizer = load_causal_lm(path, device=device, dtype=dtype)
        return cls(model, tokenizer, **options)

    def _generate(self, prompts, seed, *, max_new_tokens, temperature, top_p):
        from openrlhf_eva.rollout import sample_responses

        texts = [_template(self.tokenizer, prompt) for prompt in prompts]
        rollouts = sample_responses(self.model, self.tokenizer, texts, 1, temperature=temperature, top_p=top_p,
                                    max_new_tokens=max_new_tokens, batch_size=self.batch_size, seed=seed,
                                    chat_template=False, progress=False)
        self.stats["truncated"] += sum(cut[0] for cut in rollouts.truncated)
        return [responses[0] for responses in rollouts.responses]


class VLLMGenerator(Generator):
    """An offline ``vllm.LLM``. Prompts are templated with its tokenizer and sent as token ids (text
    would get a second BOS); prompt k of a call is seeded with the call's seed + k."""

    def __init__(self, llm, tokenizer=None, **defaults: Any) -> None:
        super().__init__(**defaults)
        self.llm = llm
        self.tokenizer = tokenizer if tokenizer is not None else llm.get_tokenizer()

    @classmethod
    def from_pretrained(cls, path: str, *, engine_options: dict | None = None, **options: Any) -> "VLLMGenerator":
        import vllm

        return cls(vllm.LLM(model=path, **(engine_options or {})), **options)

    def _generate(self, prompts, seed, *, max_new_tokens, temperature, top_p):
        from vllm import SamplingParams

        requests = [{"prompt_token_ids": self.tokenizer(_template(self.tokenizer, p), add_special_tokens=False)[
            "input_ids"]} for p in prompts]
        params = [SamplingParams(n=1, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed + k)
                  for k in range(len(prompts))]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        self.stats["truncated"] += sum(out.outputs[0].finish_reason == "length" for out in outputs)
        return [out.outputs[0].text for out in outputs]


class ReplyError(Exception):
    """A reply that cannot be used; ``retry`` says whether asking again may help."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class OpenAIGenerator(Generator):
    """An OpenAI-compatible server at ``base_url`` (e.g. ``http://127.0.0.1:8000/v1``).

    The API key is read from the environment variable ``api_key_env`` (never from a flag or a
    file); a server without authentication needs none. Each request has ``timeout`` seconds in all
    (connect, wait and read); timeouts, connection errors, 408/409/429/5xx and malformed replies
    are retried up to ``retries`` times after ``backoff * 2**attempt`` seconds (capped at
    ``max_backoff``, with jitter); other 4xx fail at once. At most ``concurrency`` requests are in
    flight. A prompt whose requests all fail gives "" (the evolvers count it unparsable).
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY", chat: bool = True,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 1.0, max_backoff: float = 30.0,
                 concurrency: int = 8, **defaults: Any) -> None:
        super().__init__(**defaults)
        if concurrency < 1 or retries < 0 or timeout <= 0:
            raise ValueError("OpenAIGenerator needs concurrency >= 1, retries >= 0 and timeout > 0")
        self.url = base_url.rstrip("/") + ("/chat/completions" if chat else "/completions")
        self.model, self.chat, self.api_key_env = model, chat, api_key_env
        self.timeout, self.retries, self.backoff, self.max_backoff = timeout, retries, backoff, max_backoff
        self.concurrency = concurrency
        self._lock = threading.Lock()

    def _count(self, key: str, error: str | None = None) -> None:
        with self._lock:
            self.stats[key] += 1
            if error is not None:
                self.last_error = error

    def _body(self, prompt: Prompt, seed: int, max_new_tokens: int, temperature: float, top_p: float) -> bytes:
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_new_tokens, "temperature": temperature,
                                "top_p": top_p, "seed": seed}
        if self.chat:
            body["messages"] = chat_messages(prompt)
        else:
            body["prompt"] = prompt if isinstance(prompt, str) else "\n\n".join(m["content"] for m in prompt)
        return json.dumps(body).encode()

    def _request(self, body: bytes) -> str:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        deadline = time.monotonic() + self.timeout
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                chunks = []
                # Read in pieces against one deadline: a server that trickles bytes cannot stretch a
                # request past `timeout`, which the socket's per-read timeout alone would allow.
                while chunk := response.read(65536):
                    chunks.append(chunk)
                    if time.monotonic() > deadline:
                        raise ReplyError(f"reply not complete after {self.timeout}s", retry=True)
        except urllib.error.HTTPError as error:
            detail = error.read(300).decode("utf-8", "replace")
            raise ReplyError(f"HTTP {error.code}: {detail}", retry=error.code in (408, 409, 429) or error.code >= 500)
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ReplyError(f"{type(reason).__name__}: {reason}", retry=True)
        try:
            choice = json.loads(b"".join(chunks))["choices"][0]
            text = choice["message"]["content"] if self.chat else choice["text"]
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise ReplyError(f"malformed reply ({type(error).__name__}: {error})", retry=True)
        if not isinstance(text, str):
            raise ReplyError(f"malformed reply: content is {type(text).__name__}", retry=True)
        return text

    def _one(self, body: bytes) -> str:
        for attempt in range(self.retries + 1):
            try:
                text = self._request(body)
                self._count("succeeded")
                return text
            except ReplyError as error:
                self._count("errors", str(error))
                if not error.retry or attempt == self.retries:
                    break
                self._count("retries")
                time.sleep(min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2))
        self._count("failed")
        return ""

    def _generate(self, prompts, seed, *, max_new_tokens, temperature, top_p):
        bodies = [self._body(p, seed + k, max_new_tokens, temperature, top_p) for k, p in enumerate(prompts)]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(bodies))) as pool:
            return list(pool.map(self._one, bodies))


def build_generator(backend: str, model: str, *, url: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                    **options: Any) -> Generator:
    """``hf`` / ``vllm``: load ``model`` (a path, or a .gguf file for hf); ``openai``: ``model`` is the
    served model's name at ``url``. ``options`` go to the generator (sampling defaults, batch_size, ...)."""
    if backend == "hf":
        return HFGenerator.from_pretrained(model, **options)
    if backend == "vllm":
        return VLLMGenerator.from_pretrained(model, **options)
    if backend == "openai":
        if not url:
            raise ValueError("the openai backend needs the server's URL (e.g. http://127.0.0.1:8000/v1)")
        return OpenAIGenerator(url, model, api_key_env=api_key_env, **options)
    raise ValueError(f"unknown generation backend {backend!r}; choose hf, vllm or openai")
