"""An LLM judge for prompts: complexity and quality on 1-5, and a topic (EVA.md, Table 7, Figure 6).

``judge_prompts(generate, prompts)`` sends one ``JUDGE_FRAME`` per prompt in a single batched call
and parses each reply with ``parse_judgement``. A score that is missing or outside 1-5 is None (the
caller counts it), never a guess. Used by ``python -m openrlhf_eva.score_prompts`` and by the
``tree_bon`` evolver's ``judge`` scorer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from .evolve.templates import JUDGE_FRAME, TOPICS


@dataclass
class Judgement:
    complexity: float | None
    quality: float | None
    topic: str | None  # one of the topics; "other" for an unlisted one; None without a topic line
    raw: str


def _score(name: str, text: str) -> float | None:
    # The number right after "name ... :" so that "Complexity (1-5): 3" reads 3, not 1.
    match = re.search(rf"{name}\b[^:=\n]*[:=]\s*[*\"'`]*\s*(\d+(?:\.\d+)?)", text, re.IGNORECASE)
    if not match:
        return None
    value = float(match.group(1))
    return value if 1 <= value <= 5 else None


def parse_judgement(text: str, topics: Sequence[str] = TOPICS) -> Judgement:
    """Complexity, quality and topic from a judge reply; tolerant of markdown, JSON and "4/5"."""
    text = text if isinstance(text, str) else ""
    topic = None
    match = re.search(r"topic\b[^:=\n]*[:=]\s*(.+)", text, re.IGNORECASE)
    if match:
        value = match.group(1).casefold()
        named = [(value.find(name), name) for name in topics if name in value]
        topic = min(named)[1] if named else "other"
    return Judgement(_score("complexity", text), _score("quality", text), topic, text)


def judge_prompts(generate: Callable[[list[str]], list[str]], prompts: Sequence[str],
                  topics: Sequence[str] = TOPICS) -> list[Judgement]:
    """One judgement per prompt, from one batched ``generate`` call."""
    if not prompts:
        return []
    listed = ", ".join(topics)
    replies = generate([JUDGE_FRAME.format(topics=listed, prompt=prompt) for prompt in prompts])
    if len(replies) != len(prompts):
        raise ValueError(f"generate returned {len(replies)} judgements for {len(prompts)} prompts")
    return [parse_judgement(reply, topics) for reply in replies]
