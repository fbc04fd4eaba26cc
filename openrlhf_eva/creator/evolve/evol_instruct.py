"""The ``evol_instruct`` evolver: an LLM rewrites each parent with one of ten meta-prompts.

In-depth methods make the prompt harder and share the "rewriter" frame; in-breadth methods make a
different prompt and share the "creator" frame (both in ``templates.py``):

    in-depth:   constraints, deepening, concretizing, reasoning, expansion
    in-breadth: persona, shift_in, shift_out, mix, abstract

Each child draws its method uniformly from ``methods``. All meta-prompts of one ``evolve`` call go
to ``generate`` in a single batched call. Outputs are cleaned by ``parse_output``; an output that is
empty after cleaning gives no child and counts in ``stats["unparsable"]``. Children carry
``label=None`` (a reward model judges them) and the method's name. ``feedback`` and
``parents_per_call`` are described in ``llm.py``.
"""

from __future__ import annotations

from typing import Sequence

from ..registry import register_evolver
from .llm import Generate, LLMEvolver, parse_output
from .templates import CREATOR_FRAME, IN_BREADTH, IN_DEPTH, REWRITER_FRAME

METHODS: tuple[str, ...] = (*IN_DEPTH, *IN_BREADTH)


def build_meta_prompt(method: str, prompt: str) -> str:
    """The meta-prompt asking an LLM to evolve ``prompt`` with ``method``."""
    if method in IN_DEPTH:
        return REWRITER_FRAME.format(instruction=IN_DEPTH[method], prompt=prompt)
    return CREATOR_FRAME.format(instruction=IN_BREADTH[method], prompt=prompt)


@register_evolver("evol_instruct")
class EvolInstructEvolver(LLMEvolver):
    """LLM-based evolving over any batched ``generate(list[str]) -> list[str]`` callable."""

    INSTRUCTIONS = {**IN_DEPTH, **IN_BREADTH}

    def __init__(self, generate: Generate, methods: Sequence[str] = METHODS, **options) -> None:
        super().__init__(generate, methods, **options)

    def frame(self, method: str) -> str:
        return REWRITER_FRAME if method in IN_DEPTH else CREATOR_FRAME


__all__ = ["CREATOR_FRAME", "IN_BREADTH", "IN_DEPTH", "METHODS", "REWRITER_FRAME", "EvolInstructEvolver",
           "build_meta_prompt", "parse_output"]
