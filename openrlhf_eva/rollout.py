"""Sample n responses per prompt from a Hugging Face causal LM (batched `generate`, KV cache).

The creator's *estimate* step and the CPU solvers share this. vLLM is used instead where a
caller passes a vLLM engine (GPU machines); on CPU this is the path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm


@dataclass
class Rollouts:
    """n responses for each of P prompts, plus the exact strings OpenRLHF's reward_func receives."""

    prompts: list[str]  # templated prompts, as the model saw them
    responses: list[list[str]]  # [P][n] response text, special tokens removed
    queries: list[list[str]]  # [P][n] prompt + response with special tokens (reward_func's `queries`)
    truncated: list[list[bool]]  # [P][n] hit max_new_tokens without an eos


def apply_chat_template(tokenizer, prompts: Sequence[str]) -> list[str]:
    """The templated text a chat model is prompted with (what OpenRLHF's datasets build)."""
    if not getattr(tokenizer, "chat_template", None):
        return list(prompts)
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]


def _through_first_eos(row: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    ends = (row == eos_token_id).nonzero()
    return row[: int(ends[0]) + 1] if len(ends) else row


@torch.no_grad()
def sample_responses(
    model,
    tokenizer,
    prompts: Sequence[str],
    n: int = 6,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 64,
    seed: int = 42,
    chat_template: bool = True,
    progress: bool = True,
) -> Rollouts:
    """Draw n samples per prompt; deterministic for a fixed seed, model and batch size."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    templated = apply_chat_template(tokenizer, prompts) if chat_template else list(prompts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generate appends on the right
    responses: list[list[str]] = []
    queries: list[list[str]] = []
    truncated: list[list[bool]] = []
    # Batches hold whole prompts (all n samples of a prompt together), ~batch_size sequences each.
    per_batch = max(1, batch_size // n)
    generator_state = torch.random.get_rng_state()
    try:
        for start in tqdm(range(0, len(templated), per_batch), desc="sampling", disable=not progress, leave=False):
            chunk = templated[start : start + per_batch]
            torch.manual_seed(seed + start)
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model.generate(
                **enc,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                num_return_sequences=n,
                use_cache=True,  # a policy under training has it off in its config (OpenRLHF's Actor)
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new_tokens = out[:, enc["input_ids"].shape[1] :]
            for i, prompt_text in enumerate(chunk):
                # Cut each sample just after its first eos: generate pads finished rows, and a
                # reward model must read its score at the eos, not at a trailing pad.
                rows = [_through_first_eos(row, tokenizer.eos_token_id) for row in new_tokens[i * n : (i + 1) * n]]
                responses.append(tokenizer.batch_decode(rows, skip_special_tokens=True))
                queries.append([prompt_text + t for t in tokenizer.batch_decode(rows, skip_special_tokens=False)])
                truncated.append([bool(len(r) == 0 or r[-1] != tokenizer.eos_token_id) for r in rows])
    finally:
        tokenizer.padding_side = padding_side
        torch.random.set_rng_state(generator_state)
        model.train(was_training)
    return Rollouts(prompts=templated, responses=responses, queries=queries, truncated=truncated)
