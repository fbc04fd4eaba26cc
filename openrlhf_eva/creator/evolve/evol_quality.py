"""The ``evol_quality`` evolver: the same request, better posed.

Methods (``QUALITY_METHODS`` in ``templates.py``): clarify, specify, contextualize, realism,
completeness. A vague prompt gives noisy rewards and so a noisy informativeness estimate; these
moves keep the task and make it one a strong answer can clearly win. Options as ``LLMEvolver``.
"""

from __future__ import annotations

from ..registry import register_evolver
from .llm import LLMEvolver
from .templates import QUALITY_FRAME, QUALITY_METHODS


@register_evolver("evol_quality")
class EvolQualityEvolver(LLMEvolver):
    INSTRUCTIONS = QUALITY_METHODS

    def frame(self, method: str) -> str:
        return QUALITY_FRAME
