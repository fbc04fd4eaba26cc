"""The answer rewriter (EVA.md, "Evolving methods", bonus): improve the chosen response before training.

``rewrite_chosen(generate, prompts, chosen)`` asks an LLM (the solver itself in the paper) to
improve each chosen response y+ for helpfulness, relevance, depth, creativity and detail at a
similar length (``REWRITE_RESPONSE_FRAME``), in one batched call, and the pair trains as
(x, y+', y-). A rewrite is used only when it is usable; otherwise the original y+ is kept and the
reason counted, so a bad rewriter can never empty or corrupt the preference data:
    empty      nothing left after cleaning (or the backend failed and returned "")
    too_short  fewer than ``min_ratio`` x the original's words
    too_long   more than ``max_ratio`` x the original's words
    refusal    the rewriter declined
    unchanged  the same text as the original

Callers: ``openrlhf_eva.evolve --eva.rewrite_chosen`` (offline pairs) and the online DPO solver
(``openrlhf_eva.train_rloo --eva.rewrite_chosen``, through ``solve.online.rewrite_chosen_responses``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

from openrlhf_eva.creator.evolve.templates import REWRITE_RESPONSE_FRAME

_LABEL = re.compile(r"^\s*(?:#+\s*)?(?:\*\*)?\s*(?:the\s+)?(?:improved|rewritten|revised|new)\s+(?:answer|response)"
                    r"\s*(?:\*\*)?\s*:\s*(?:\*\*)?", re.IGNORECASE)
_DELIMITERS = re.compile(r"^<<<\s*(.*?)\s*>>>$", re.DOTALL)
_REFUSAL = re.compile(r"^\s*(?:i'?m sorry|i am sorry|i cannot\b|i can(?:'|no)t\b|as an ai\b|i apologi[sz]e)",
                      re.IGNORECASE)


@dataclass
class Rewrites:
    texts: list[str]  # the chosen response to train on: the rewrite, or the original where it was not usable
    rewritten: list[bool]  # whether texts[k] is the rewrite
    reasons: list[str | None]  # why the original was kept (None where the rewrite is used)
    counts: Counter = field(default_factory=Counter)  # rewritten / kept_<reason>


def clean_rewrite(text: str) -> str:
    """Strip whitespace, an "Improved answer:" label and a ``<<< >>>`` pair around the whole reply."""
    text = _LABEL.sub("", (text or "").strip(), count=1).strip()
    match = _DELIMITERS.match(text)
    return match.group(1).strip() if match else text


def rewrite_chosen(generate: Callable[[list[str]], list[str]], prompts: Sequence[str], chosen: Sequence[str], *,
                   min_ratio: float = 0.5, max_ratio: float = 2.0) -> Rewrites:
    """Rewrite each chosen response; see the module docstring for when the original is kept."""
    if len(prompts) != len(chosen):
        raise ValueError(f"{len(prompts)} prompts but {len(chosen)} chosen responses")
    if not prompts:
        return Rewrites([], [], [], Counter())
    replies = generate([REWRITE_RESPONSE_FRAME.format(prompt=p, response=c) for p, c in zip(prompts, chosen)])
    if len(replies) != len(prompts):
        raise ValueError(f"generate returned {len(replies)} rewrites for {len(prompts)} responses")
    texts, rewritten, reasons, counts = [], [], [], Counter()
    for original, reply in zip(chosen, replies):
        text = clean_rewrite(reply) if isinstance(reply, str) else ""
        size, base = len(text.split()), max(1, len(original.split()))
        if not text:
            reason = "empty"
        elif _REFUSAL.match(text):
            reason = "refusal"
        elif " ".join(text.split()) == " ".join(original.split()):
            reason = "unchanged"
        elif size < min_ratio * base:
            reason = "too_short"
        elif size > max_ratio * base:
            reason = "too_long"
        else:
            reason = None
        texts.append(original if reason else text)
        rewritten.append(reason is None)
        reasons.append(reason)
        counts["rewritten" if reason is None else f"kept_{reason}"] += 1
    return Rewrites(texts, rewritten, reasons, counts)
