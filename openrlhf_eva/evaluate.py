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
                   batch_size: int = 128, chat_template: bool = True, group_keys: Sequence[str] = ("split",),
                   samples: int = 0, seed: int = 0) -> dict[str, dict[str, float]]:
    """`evaluate` for a model already in memory (e.g. the policy half-way through training).

    Besides "all", rows are grouped under the value of each key in `group_keys` they carry
    (``group_keys=("split", "difficulty")`` adds "difficulty=4" and the like). With ``samples=k``
    each group also gets "sampled" and "sampled_exact": the mean reward (and exact share) of k
    samples per prompt at temperature 1, seeded by ``seed``. Greedy reward moves only when the
    policy's top answer changes; sampled mean@k also moves when RL merely sharpens the policy,
    so the two together tell learning from sharpening.
    """
    reward_func = load_plugin(reward_file).reward_func
    labels = [r["label"] for r in rows]

    def score(temperature: float, n: int) -> list[list[float]]:
        out = sample_responses(model, tokenizer, [r["prompt"] for r in rows], n=n, temperature=temperature,
                               max_new_tokens=max_new_tokens, batch_size=batch_size, chat_template=chat_template,
                               seed=seed, progress=False)
        result = reward_func([q for qs in out.queries for q in qs], [p for p in out.prompts for _ in range(n)],
                             [label for label in labels for _ in range(n)])
        rewards = torch.as_tensor(result["rewards"] if isinstance(result, dict) else result, dtype=torch.float32)
        if rewards.shape != (len(rows) * n,):
            raise ValueError(f"{reward_file}: reward_func returned shape {tuple(rewards.shape)} for "
                             f"{len(rows) * n} queries")
        return rewards.view(len(rows), n).tolist()

    greedy = [r[0] for r in score(0.0, 1)]
    sampled = score(1.0, samples) if samples else None
    groups: dict[str, list[int]] = {"all": list(range(len(rows)))}
    for index, row in enumerate(rows):
        for key in group_keys:
            value = row.get(key)
            if value in (None, "all"):
                continue
            groups.setdefault(str(value) if key == "split" else f"{key}={value}", []).append(index)
    result = {}
    for group, members in groups.items():
        values = [greedy[i] for i in members]
        entry = {"reward": sum(values) / len(values), "exact": sum(x >= 1.0 for x in values) / len(values),
                 "n": len(values)}
        if sampled is not None:
            draws = [x for i in members for x in sampled[i]]
            entry.update(sampled=sum(draws) / len(draws), sampled_exact=sum(x >= 1.0 for x in draws) / len(draws))
        result[group] = entry
    return result
