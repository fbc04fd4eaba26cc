"""Held-out evaluation: greedy answers scored by an OpenRLHF-style `reward_func` file, per split.

The creator never sees these prompts (the embedded test set is excluded from seeds, SFT data
and evolved children). Used by the warm start, `iterate` and the demo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from openrlhf_eva.creator import load_plugin
from openrlhf_eva.rollout import sample_responses


def evaluate(
    model_dir: str | Path,
    rows: Sequence[dict],
    reward_file: str | Path,
    *,
    max_new_tokens: int = 24,
    batch_size: int = 128,
    chat_template: bool = True,
) -> dict[str, dict[str, float]]:
    """Mean greedy reward and `exact` (share with reward >= 1) overall and per row `split`.

    `rows` need `prompt` and `label`; rows with a `split` key are also reported under it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return evaluate_model(model, tokenizer, rows, reward_file, max_new_tokens=max_new_tokens, batch_size=batch_size,
                          chat_template=chat_template)


def evaluate_model(model, tokenizer, rows: Sequence[dict], reward_file: str | Path, *, max_new_tokens: int = 24,
                   batch_size: int = 128, chat_template: bool = True, group_keys: Sequence[str] = ("split",)
                   ) -> dict[str, dict[str, float]]:
    """`evaluate` for a model already in memory (e.g. the policy half-way through training).

    Besides "all", rows are grouped under the value of each key in `group_keys` they carry
    (``group_keys=("split", "difficulty")`` adds "difficulty=4" and the like).
    """
    out = sample_responses(model, tokenizer, [r["prompt"] for r in rows], n=1, temperature=0.0,
                           max_new_tokens=max_new_tokens, batch_size=batch_size, chat_template=chat_template,
                           progress=False)
    reward_func = load_plugin(reward_file).reward_func
    result = reward_func([q[0] for q in out.queries], out.prompts, [r["label"] for r in rows])
    rewards = torch.as_tensor(result["rewards"] if isinstance(result, dict) else result, dtype=torch.float32)
    if rewards.shape != (len(rows),):
        raise ValueError(f"{reward_file}: reward_func returned shape {tuple(rewards.shape)} for {len(rows)} queries")

    groups: dict[str, list[float]] = {"all": rewards.tolist()}
    for row, reward in zip(rows, rewards.tolist()):
        for key in group_keys:
            value = row.get(key)
            if value in (None, "all"):
                continue
            groups.setdefault(str(value) if key == "split" else f"{key}={value}", []).append(reward)
    return {
        group: {"reward": sum(v) / len(v), "exact": sum(x >= 1.0 for x in v) / len(v), "n": len(v)}
        for group, v in groups.items()
    }
