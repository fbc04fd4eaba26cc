"""The ``evol_complexity`` evolver: in-depth moves only, one notch harder per call.

The paper's best evolver (EVA.md: 60.6 vs 60.1 for EvolInstruct). It uses the five in-depth
instructions of ``evol_instruct`` (constraints, deepening, concretizing, reasoning, expansion) in
``COMPLEXITY_FRAME``, which asks for exactly one step of extra difficulty, so that repeated rounds
climb steadily. Options as ``LLMEvolver`` (``methods``, ``feedback``, ``parents_per_call``).
"""

from __future__ import annotations

from ..registry import register_evolver
from .llm import LLMEvolver
from .templates import COMPLEXITY_FRAME, IN_DEPTH


@register_evolver("evol_complexity")
class EvolComplexityEvolver(LLMEvolver):
    INSTRUCTIONS = IN_DEPTH

    def frame(self, method: str) -> str:
        return COMPLEXITY_FRAME
