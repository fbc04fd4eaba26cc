"""Solver side of eva: preference losses for the DPO-style trainer."""

from .losses import LOSS_NAMES, PAPER_DEFAULTS, PreferenceInputs, PreferenceLoss, log1mexp

__all__ = ["LOSS_NAMES", "PAPER_DEFAULTS", "PreferenceInputs", "PreferenceLoss", "log1mexp"]
