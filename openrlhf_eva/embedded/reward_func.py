"""OpenRLHF reward file for the embedded tasks: pass its path as ``--reward.remote_url``.

OpenRLHF 0.11.2 loads it with ``spec_from_file_location`` and calls
``reward_func(queries, prompts, labels)``, where ``queries[i]`` is the prompt and response decoded
with ``skip_special_tokens=False`` (chat markers, ``</s>`` and possibly ``<pad>`` included),
``prompts[i]`` the templated prompt and ``labels[i]`` the gold answer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

try:
    from openrlhf_eva.embedded import vocab
    from openrlhf_eva.embedded.reward import score
except ImportError:
    # Loaded by path in a process where the package is not installed: use the checkout it lives in.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from openrlhf_eva.embedded import vocab
    from openrlhf_eva.embedded.reward import score

# A response ends at the first marker that is not padding: </s>, or the model opening a new turn.
_STOP_MARKERS = tuple(token for token in vocab.SPECIAL_TOKENS if token != vocab.PAD)


def extract_response(query: str, prompt: str) -> str:
    """The solver's answer inside ``query``: text after the prompt, cut at eos, pads removed."""
    text = query.replace(vocab.PAD, "")
    prompt = prompt.replace(vocab.PAD, "")
    if prompt and prompt in text:
        text = text[text.index(prompt) + len(prompt) :]
    elif vocab.ASSISTANT in text:
        # The prompt was re-tokenised differently or truncated: fall back to the last assistant turn.
        text = text[text.rindex(vocab.ASSISTANT) + len(vocab.ASSISTANT) :]
    stops = [text.index(marker) for marker in _STOP_MARKERS if marker in text]
    if stops:
        text = text[: min(stops)]
    return text.strip()


def reward_func(queries: list[str], prompts: list[str], labels: list[str], **kwargs) -> dict:
    """Graded task reward per query: ``{"rewards", "scores", "extra_logs"}``, tensors of shape [B]."""
    responses = [extract_response(query, prompt) for query, prompt in zip(queries, prompts)]
    rewards = torch.tensor(
        [score(response, str(label)) for response, label in zip(responses, labels)], dtype=torch.float32
    )
    exact = torch.tensor(
        [float(response == str(label).strip()) for response, label in zip(responses, labels)],
        dtype=torch.float32,
    )
    lengths = torch.tensor([float(len(response)) for response in responses], dtype=torch.float32)
    return {
        "rewards": rewards,
        "scores": rewards.clone(),
        "extra_logs": {"exact_match": exact, "response_chars": lengths},
    }
