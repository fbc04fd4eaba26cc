"""Reward for the `lists` task: pass this file's path to OpenRLHF 0.11.2 as ``--reward.remote_url``.

OpenRLHF loads it by path and calls ``reward_func(queries, prompts, labels)``: ``queries[i]`` is the
templated prompt plus the response, decoded with special tokens kept (``<s>``, ``</s>``, ``<pad>``,
chat markers such as ``<|assistant|>``), ``prompts[i]`` the templated prompt, ``labels[i]`` the gold
answer. It wants tensors of shape [B] back.

Score: 1.0 for the exact answer, else 0.8 * (1 - levenshtein(pred, gold) / max(len(pred), len(gold))).
Edit distance credits a right answer shifted by one digit; the 0.8 cap keeps a clear gap between
"almost" and "correct", and that spread among samples is what eva's informativeness measures feed on.
"""

from __future__ import annotations

import re

import torch

PARTIAL_CREDIT = 0.8
PAD = "<pad>"
ASSISTANT = "<|assistant|>"

# The response ends at the first marker other than padding: end of sequence, or the model opening a
# new turn. ``<|...|>`` also covers other chat templates' markers (``<|im_end|>``, ``<|eot_id|>``);
# answers are digits or "none", so no real answer is ever cut.
_STOP = re.compile(r"</s>|<s>|<unk>|<\|[^<>|]*\|>")


def extract_response(query: str, prompt: str) -> str:
    """The solver's answer inside ``query``: the text after the prompt, pads removed, cut at a marker."""
    text = query.replace(PAD, "")
    prompt = prompt.replace(PAD, "")
    if prompt and prompt in text:
        text = text[text.index(prompt) + len(prompt) :]
    elif ASSISTANT in text:
        # The prompt was re-tokenised differently or truncated: fall back to the last assistant turn.
        text = text[text.rindex(ASSISTANT) + len(ASSISTANT) :]
    stop = _STOP.search(text)
    return (text[: stop.start()] if stop else text).strip()


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute each cost 1), one row at a time."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def score(response: str, label: str) -> float:
    """Reward in [0, 1]; 1.0 iff the response equals the label (surrounding whitespace ignored)."""
    pred, gold = response.strip(), str(label).strip()
    if pred == gold:
        return 1.0
    # Not equal, so at least one is non-empty: the division is safe.
    return PARTIAL_CREDIT * (1.0 - levenshtein(pred, gold) / max(len(pred), len(gold)))


def reward_func(queries: list[str], prompts: list[str], labels: list[str], **kwargs) -> dict:
    """``{"rewards", "scores", "extra_logs": {"exact_match"}}``, float tensors of shape [B]."""
    responses = [extract_response(query, prompt) for query, prompt in zip(queries, prompts)]
    rewards = torch.tensor([score(r, label) for r, label in zip(responses, labels)], dtype=torch.float32)
    exact = (rewards == 1.0).float()
    return {"rewards": rewards, "scores": rewards.clone(), "extra_logs": {"exact_match": exact}}
