"""Reward oracles for the creator's estimate step: score the n responses sampled for each prompt.

An oracle is a class registered in ``REWARDS`` (``@register_reward("name")``) whose
``score(rollouts, labels)`` takes a ``Rollouts`` ([P] prompts, [P][n] responses and queries) and the
P labels, and returns a float32 Tensor ``[P, n]``. NaN marks a response it could not score; callers
count them, and a prompt left with fewer than two scored responses gives no preference pair.
Built-ins, one per way OpenRLHF 0.11.2 gets a reward:

| name           | flag                                   | what it calls                                       |
|----------------|----------------------------------------|-----------------------------------------------------|
| ``reward_func``  | ``--reward.remote_url file.py``        | ``reward_func(queries, prompts, labels)`` in the file |
| ``remote``       | ``--reward.remote_url http://...``     | POST ``{"query", "prompts", "labels"}`` (serve_rm)   |
| ``reward_model`` | ``--reward.model_name_or_path PATH``   | ``get_llm_for_sequence_regression(PATH, "reward")`` |
| ``pairwise``     | ``--reward.pairwise_model PATH``       | a sequence classifier on (prompt + A + sep + B)     |

Failure policy. A reward function or server that breaks its contract (wrong shape or type, a reply
that is not ``{"rewards": [...]}`` of the right length) is a bug, not bad data: ``RewardError``
naming the file or URL. A ``reward_func`` that raises is retried prompt by prompt; the prompts on
which it still raises get NaN rows and a reason in ``oracle.errors`` (prompt index -> message, for
the last ``score`` call), which the CLI writes to its rejects file; if it raises on every prompt of
the batch the function is broken and ``RewardError`` is raised. A server that does not answer
within ``timeout`` after ``retries`` tries raises ``RewardError`` too: an outage is not a row problem.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.request
from abc import ABC, abstractmethod
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from itertools import cycle
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from openrlhf_eva.creator import REWARDS, load_plugin, register_reward
from openrlhf_eva.rollout import Rollouts


class RewardError(RuntimeError):
    """A reward oracle that cannot be loaded or breaks its contract; the message names the file or URL."""


class RewardOracle(ABC):
    """Base class of reward oracles. Subclasses call ``super().__init__()`` to get ``stats`` and ``errors``."""

    def __init__(self) -> None:
        self.stats: Counter[str] = Counter()
        self.errors: dict[int, str] = {}

    @abstractmethod
    def score(self, rollouts: Rollouts, labels: Sequence[Any]) -> torch.Tensor:
        """Float32 rewards ``[P, n]`` for ``rollouts.queries``; NaN where a response could not be scored."""


def build_reward(name: str, **kwargs: Any) -> RewardOracle:
    """Instantiate the oracle registered as ``name``; unknown names list the registered ones."""
    return REWARDS.get(name)(**kwargs)


def _flatten(rollouts: Rollouts, labels: Sequence[Any]) -> tuple[list[str], list[str], list[Any]]:
    """The P*n (query, prompt, label) triples OpenRLHF's reward_func and RM servers receive, prompt-major."""
    queries = [q for row in rollouts.queries for q in row]
    prompts = [p for p, row in zip(rollouts.prompts, rollouts.queries) for _ in row]
    flat_labels = [label for label, row in zip(labels, rollouts.queries) for _ in row]
    return queries, prompts, flat_labels


def _device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


@register_reward("reward_func")
class RewardFuncFile(RewardOracle):
    """OpenRLHF's ``reward_func(queries, prompts, labels)`` from a Python file (``--reward.remote_url x.py``).

    It may return a dict with ``"rewards"`` (OpenRLHF's contract; ``scores``/``extra_logs`` are
    ignored here) or the rewards themselves, as a tensor or list of ``len(queries)`` numbers.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = os.path.abspath(os.fspath(path))
        if not os.path.isfile(self.path):
            raise RewardError(f"reward_func file {self.path} does not exist")
        self.fn = getattr(load_plugin(self.path), "reward_func", None)
        if not callable(self.fn):
            raise RewardError(f"reward_func file {self.path} defines no reward_func(queries, prompts, labels)")

    def _call(self, queries: list[str], prompts: list[str], labels: list[Any]) -> torch.Tensor:
        out = self.fn(queries, prompts, labels)
        if isinstance(out, dict):
            if "rewards" not in out:
                raise RewardError(f"{self.path}: reward_func returned a dict without 'rewards' (keys: {sorted(out)})")
            out = out["rewards"]
        try:
            rewards = torch.as_tensor(out, dtype=torch.float32).detach().cpu()
        except (TypeError, ValueError, RuntimeError) as error:
            message = f"{self.path}: reward_func returned {type(out).__name__}, not numbers: {error}"
            raise RewardError(message) from None
        # [B] is the contract; [B, 1] (a squeezable value head) is accepted too.
        if rewards.dim() == 2 and rewards.shape[1] == 1:
            rewards = rewards[:, 0]
        if rewards.shape != (len(queries),):
            raise RewardError(
                f"{self.path}: reward_func returned rewards of shape {tuple(rewards.shape)} for {len(queries)} queries"
            )
        return rewards

    def score(self, rollouts: Rollouts, labels: Sequence[Any]) -> torch.Tensor:
        self.errors = {}
        num_prompts = len(rollouts.queries)
        n = len(rollouts.queries[0]) if num_prompts else 0
        queries, prompts, flat_labels = _flatten(rollouts, labels)
        if not queries:
            return torch.empty(num_prompts, n)
        try:
            return self._call(queries, prompts, flat_labels).view(num_prompts, n)
        except RewardError:
            raise
        except Exception:
            self.stats["batch_retried_per_prompt"] += 1
        # One prompt's bad row should not sink the batch: find the prompts it raises on.
        rows = []
        for i in range(num_prompts):
            span = slice(i * n, (i + 1) * n)
            try:
                rows.append(self._call(queries[span], prompts[span], flat_labels[span]))
            except RewardError:
                raise
            except Exception as error:
                self.errors[i] = f"{self.path}: reward_func raised {type(error).__name__}: {error}"
                self.stats["prompts_failed"] += 1
                rows.append(torch.full((n,), float("nan")))
        if len(self.errors) == num_prompts:
            raise RewardError(f"reward_func raised on every prompt of the batch; first: {self.errors[0]}")
        return torch.stack(rows)


@register_reward("remote")
class RemoteRewardModel(RewardOracle):
    """An RM server speaking OpenRLHF's JSON: POST ``{"query", "prompts", "labels"}`` -> ``{"rewards": [...]}``.

    ``urls`` is one URL or a comma-separated list (as ``--reward.remote_url`` takes); batches of
    ``batch_size`` queries go round-robin to the servers, one request in flight per server. A null
    reward in a reply marks that response unscorable (NaN).
    """

    def __init__(self, urls: str | Sequence[str], batch_size: int = 64, timeout: float = 180.0, retries: int = 5,
                 retry_wait: float = 1.0) -> None:
        super().__init__()
        self.urls = [u.strip() for u in urls.split(",")] if isinstance(urls, str) else list(urls)
        if not self.urls or not all(self.urls):
            raise RewardError(f"remote reward: no URL in {urls!r}")
        self.batch_size, self.timeout, self.retries, self.retry_wait = batch_size, timeout, retries, retry_wait

    def _post(self, url: str, payload: dict) -> list[float]:
        body = json.dumps(payload).encode()
        last_error: Exception | None = None
        for attempt in range(self.retries):
            if attempt:
                self.stats["retries"] += 1
                time.sleep(self.retry_wait)
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    reply = response.read()
            except (OSError, http.client.HTTPException) as error:  # refused, HTTP 4xx/5xx, timeout, cut off
                last_error = error
                continue
            return self._parse(url, reply, len(payload["query"]))
        raise RewardError(
            f"remote reward {url}: no reply after {self.retries} tries ({self.timeout:g}s timeout each); "
            f"last error: {type(last_error).__name__}: {last_error}"
        )

    @staticmethod
    def _parse(url: str, reply: bytes, expected: int) -> list[float]:
        try:
            data = json.loads(reply)
        except ValueError:
            raise RewardError(f"remote reward {url}: reply is not JSON: {reply[:200]!r}") from None
        rewards = data.get("rewards") if isinstance(data, dict) else None
        if not isinstance(rewards, list) or len(rewards) != expected:
            raise RewardError(
                f"remote reward {url}: expected {{'rewards': [{expected} numbers]}}, got {reply[:200]!r}"
            )
        if not all(r is None or (isinstance(r, (int, float)) and not isinstance(r, bool)) for r in rewards):
            raise RewardError(f"remote reward {url}: rewards must be numbers or null, got {rewards[:8]!r}")
        return [float("nan") if r is None else float(r) for r in rewards]

    def score(self, rollouts: Rollouts, labels: Sequence[Any]) -> torch.Tensor:
        self.errors = {}
        queries, prompts, flat_labels = _flatten(rollouts, labels)
        starts = range(0, len(queries), self.batch_size)
        payloads = [{"query": queries[s : s + self.batch_size], "prompts": prompts[s : s + self.batch_size],
                     "labels": flat_labels[s : s + self.batch_size]} for s in starts]
        with ThreadPoolExecutor(max_workers=len(self.urls)) as pool:
            replies = list(pool.map(self._post, cycle(self.urls), payloads))
        rewards = torch.tensor([r for reply in replies for r in reply], dtype=torch.float32)
        return rewards.view(len(rollouts.queries), len(rollouts.queries[0]) if rollouts.queries else 0)


def _load_or_explain(kind: str, path: str, load):
    """Load a checkpoint, turning "not there" into one error that names the flag's value."""
    try:
        return load()
    except (OSError, ValueError) as error:
        raise RewardError(f"{kind} {path!r} is not a local checkpoint and could not be loaded: {error}") from error


@register_reward("reward_model")
class RewardModel(RewardOracle):
    """An OpenRLHF reward model (value head ``value_head_prefix`` on a base LM), batched on CPU or GPU.

    Loaded with ``openrlhf.models.get_llm_for_sequence_regression(path, "reward", ...)`` exactly as
    ``cli/serve_rm.py`` does, and fed the same strings: each query (prompt + response, special tokens
    kept) tokenised with the RM's tokenizer, no special tokens added, left-padded; the reward is read
    at the last token. Queries longer than ``max_len`` tokens lose their beginning, not the response.
    On CPU the weights are fp32 (fp16 is refused there and bf16 matmuls are slow); on GPU
    ``param_dtype``.
    """

    def __init__(self, path: str, *, batch_size: int = 32, max_len: int = 2048, normalize_reward: bool = False,
                 value_head_prefix: str = "score", param_dtype: str = "bf16", attn_implementation: str = "sdpa",
                 device: str | torch.device | None = None, offload: bool = False) -> None:
        """``offload`` (``--reward.offload``): the weights wait in CPU memory and visit the device to score."""
        super().__init__()
        from openrlhf.models import get_llm_for_sequence_regression
        from openrlhf.utils import get_tokenizer

        self.path, self.batch_size, self.max_len = path, batch_size, max_len
        self.device = _device(device)
        # get_llm_for_sequence_regression passes torch_dtype from param_dtype; transformers 5 lets
        # an explicit `dtype` override it, which is how fp32 reaches the CPU.
        dtype = {"dtype": torch.float32} if self.device.type == "cpu" else {}
        self.model = _load_or_explain("reward model", path, lambda: get_llm_for_sequence_regression(
            path, "reward", normalize_reward=normalize_reward, value_head_prefix=value_head_prefix,
            param_dtype=param_dtype, attn_implementation=attn_implementation, **dtype))
        # RewardModel keeps mean/std in non-persistent buffers filled in __init__; transformers 5
        # builds the model on the meta device and materialises such buffers uninitialised, so
        # normalize_reward would divide by garbage. Refill them from the config, as __init__ meant to.
        self.model.mean.fill_(getattr(self.model.config, "mean", 0.0))
        self.model.std.fill_(getattr(self.model.config, "std", 1.0))
        self.offload = offload
        self.model.to("cpu" if offload else self.device).eval()
        self.tokenizer = get_tokenizer(path, self.model, "left")
        self.tokenizer.truncation_side = "left"

    @torch.no_grad()
    def score(self, rollouts: Rollouts, labels: Sequence[Any]) -> torch.Tensor:
        self.errors = {}
        queries, _, _ = _flatten(rollouts, labels)
        rewards = []
        self.model.to(self.device)
        for start in tqdm(range(0, len(queries), self.batch_size), desc="reward model", leave=False,
                          disable=len(queries) <= self.batch_size):
            batch = self.tokenizer(queries[start : start + self.batch_size], return_tensors="pt", padding=True,
                                   truncation=True, max_length=self.max_len, add_special_tokens=False)
            batch = batch.to(self.device)
            rewards.append(self.model(batch["input_ids"], batch["attention_mask"]).float().cpu())
        if self.offload:
            self.model.to("cpu")
        n = len(rollouts.queries[0]) if rollouts.queries else 0
        return torch.cat(rewards).view(len(rollouts.queries), n) if rewards else torch.empty(0, n)


def mean_win_rate(win_probs: torch.Tensor) -> torch.Tensor:
    """``[P, n]`` mean over the other responses j != i of P(i beats j); 0.5 when n == 1."""
    n = win_probs.shape[-1]
    if n == 1:
        return torch.full(win_probs.shape[:-1], 0.5)
    return (win_probs.sum(dim=-1) - win_probs.diagonal(dim1=-2, dim2=-1)) / (n - 1)


class PairwisePreference(RewardOracle):
    """A preference model over a prompt's responses: ``win_probs`` gives ``[P, n, n]`` P(i beats j).

    Implementations keep P(i>j) + P(j>i) = 1 and P(i>i) = 0.5. As a reward oracle it scores each
    response by its mean win rate against the others, the estimate SPPO trains on.
    """

    @abstractmethod
    def win_probs(self, rollouts: Rollouts) -> torch.Tensor:
        """``[P, n, n]`` float32 probabilities that response i of a prompt beats response j."""

    def score(self, rollouts: Rollouts, labels: Sequence[Any]) -> torch.Tensor:
        self.errors = {}
        return mean_win_rate(self.win_probs(rollouts))


@register_reward("pairwise")
class SequenceClassifierPreference(PairwisePreference):
    """Pairwise preference from a Hugging Face sequence classifier that reads both responses at once.

    Input ``prompt + response_a + separator + response_b`` (the templated prompt, response text
    without special tokens); P(a beats b) = sigmoid(logit) for a one-label head, softmax's second
    class for a two-label head. Classifiers favour one position, so every pair is scored in both
    orders and symmetrised: P(i>j) = (s(i,j) + 1 - s(j,i)) / 2.
    """

    def __init__(self, path: str, *, separator: str = "\n\n### Response B:\n", batch_size: int = 32,
                 max_len: int = 2048, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path, self.separator, self.batch_size, self.max_len = path, separator, batch_size, max_len
        self.device = _device(device)
        dtype = dtype or (torch.float32 if self.device.type == "cpu" else torch.bfloat16)
        self.model = _load_or_explain("pairwise model", path,
                                      lambda: AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype))
        if self.model.config.num_labels not in (1, 2):
            raise RewardError(f"pairwise model {path}: expected a 1- or 2-label head, "
                              f"got {self.model.config.num_labels}")
        self.model.to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Llama-style classifiers read the logit at the last non-pad token: pad on the left.
        self.tokenizer.padding_side = "left"
        self.tokenizer.truncation_side = "left"
        self.model.config.pad_token_id = self.tokenizer.pad_token_id

    @torch.no_grad()
    def _first_wins(self, texts: list[str]) -> torch.Tensor:
        out = []
        for start in tqdm(range(0, len(texts), self.batch_size), desc="pairwise model", leave=False,
                          disable=len(texts) <= self.batch_size):
            batch = self.tokenizer(texts[start : start + self.batch_size], return_tensors="pt", padding=True,
                                   truncation=True, max_length=self.max_len, add_special_tokens=False).to(self.device)
            logits = self.model(**batch).logits.float().cpu()
            out.append(torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else logits.softmax(dim=-1)[:, 1])
        return torch.cat(out) if out else torch.empty(0)

    def win_probs(self, rollouts: Rollouts) -> torch.Tensor:
        num_prompts = len(rollouts.responses)
        n = len(rollouts.responses[0]) if num_prompts else 0
        pairs = [(p, i, j) for p in range(num_prompts) for i in range(n) for j in range(n) if i != j]
        texts = [rollouts.prompts[p] + rollouts.responses[p][i] + self.separator + rollouts.responses[p][j]
                 for p, i, j in pairs]
        first_wins = torch.full((num_prompts, n, n), 0.5, dtype=torch.float64)
        for (p, i, j), s in zip(pairs, self._first_wins(texts).double().tolist()):
            first_wins[p, i, j] = s
        # Symmetrise in float64; the diagonal stays (0.5 + 1 - 0.5) / 2 = 0.5.
        return ((first_wins + 1 - first_wins.transpose(1, 2)) / 2).float()
