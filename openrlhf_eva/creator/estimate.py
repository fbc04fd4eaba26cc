"""Informativeness of prompts: the creator's regret proxy, computed from the solver's own rewards.

``informativeness(rewards, metric)`` maps a reward matrix ``[P, n]`` (P prompts, n sampled responses
each) to one non-negative float32 weight per prompt. The weights are used as sampling probabilities,
so the contract is strict: every output is finite and >= 0 for any input. Rewards that are NaN or
+-inf (after conversion to float32) mark a missing response. Internally rewards are float64, so gaps
between float32 rewards never overflow; results above the float32 range are clamped to its maximum.

Built-in metrics (``valid`` = the finite rewards of the row, ``m`` = their count):

| name        | value                              | m == 1 | edge cases                                    |
|-------------|------------------------------------|--------|-----------------------------------------------|
| ``A_min``   | max - min                          | 0      |                                               |
| ``A_avg``   | abs(max - mean)                    | 0      |                                               |
| ``A_dis``   | max - second largest               | 0      | a tie for the max gives 0                     |
| ``var``     | population variance (ddof = 0)     | 0      |                                               |
| ``avg``     | max(mean, 0)                       | r      | a negative mean gives 0 (weights are >= 0)    |
| ``inv_avg`` | 1 / max(mean, EPS)                 | 1/r    | mean <= EPS gives the cap 1/EPS = 1e6         |
| ``inv_A_min``| 1 / max(A_min, EPS)               | 1e6    | a zero gap gives the cap 1/EPS = 1e6          |
| ``uniform`` | 1                                  | 1      |                                               |

Every metric, built-in or user, gives 0 to a row with no valid response (m == 0): a prompt we could
not score is never preferred. "Second largest" counts multiplicity: for rewards (3, 3, 1) it is 3.
``avg`` clamps rather than shifts so that stored weights stay comparable across batches; with signed
rewards (e.g. Bradley-Terry logits) prefer a shift-invariant metric. ``inv_avg`` and ``inv_A_min``
treat mean <= 0 and gap 0 as the limit of "mean/gap -> 0+", i.e. the most preferred prompts.

A user metric is registered with ``@register_metric("name")`` and called as
``fn(rewards, valid) -> Tensor[P]`` with ``rewards`` float64 ``[P, n]`` where missing entries are 0,
and ``valid`` bool ``[P, n]``. Each row arrives sorted ascending with its missing entries last, which
makes every metric exactly invariant to the order of a prompt's responses. Its output must have
shape ``[P]`` with no NaN and no negative value (else ValueError naming the metric); +inf is
clamped like a built-in's.
"""

from __future__ import annotations

from typing import Any

import torch

from .registry import METRICS, register_metric

# Floor for the denominators of inv_avg / inv_A_min: caps their weights at 1 / EPS = 1e6.
EPS = 1e-6
# The metrics of the paper's ablation (EVA.md), in its order: defaults first, then baselines.
PAPER_METRICS = ("A_min", "A_avg", "A_dis", "uniform", "var", "avg", "inv_avg", "inv_A_min")
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _count_and_mean(rewards: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    count = valid.sum(dim=1)
    mean = rewards.sum(dim=1) / count.clamp(min=1)
    return count, mean


@register_metric("A_min")
def a_min(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Best minus worst reward: the offline default."""
    largest = rewards.masked_fill(~valid, float("-inf")).amax(dim=1)
    smallest = rewards.masked_fill(~valid, float("inf")).amin(dim=1)
    return (largest - smallest).abs()


@register_metric("A_avg")
def a_avg(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Best minus mean reward: the online default."""
    _, mean = _count_and_mean(rewards, valid)
    return (rewards.masked_fill(~valid, float("-inf")).amax(dim=1) - mean).abs()


@register_metric("A_dis")
def a_dis(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Best minus runner-up reward ("dueling"); 0 with fewer than two valid responses."""
    if rewards.shape[1] < 2:
        return torch.zeros(rewards.shape[0], dtype=rewards.dtype)
    top2 = rewards.masked_fill(~valid, float("-inf")).topk(2, dim=1).values
    gap = top2[:, 0] - top2[:, 1]
    return torch.where(valid.sum(dim=1) >= 2, gap, torch.zeros_like(gap))


@register_metric("var")
def variance(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Population variance of the valid rewards."""
    count, mean = _count_and_mean(rewards, valid)
    squared = ((rewards - mean[:, None]) ** 2) * valid
    return squared.sum(dim=1) / count.clamp(min=1)


@register_metric("avg")
def average(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean reward, clamped at 0."""
    _, mean = _count_and_mean(rewards, valid)
    return mean.clamp(min=0.0)


@register_metric("inv_avg")
def inverse_average(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """1 / mean reward, with the mean floored at EPS."""
    _, mean = _count_and_mean(rewards, valid)
    return 1.0 / mean.clamp(min=EPS)


@register_metric("inv_A_min")
def inverse_a_min(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """1 / (max - min), with the gap floored at EPS."""
    return 1.0 / a_min(rewards, valid).clamp(min=EPS)


@register_metric("uniform")
def uniform(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The same weight for every prompt."""
    return torch.ones(rewards.shape[0], dtype=rewards.dtype)


def informativeness(rewards: Any, metric: str = "A_min") -> torch.Tensor:
    """Per-prompt informativeness ``Tensor[P]`` (float32, finite, >= 0) of a reward matrix ``[P, n]``.

    ``rewards`` may be a tensor, numpy array or nested list; NaN / +-inf entries are missing
    responses. ``metric`` names an entry of ``METRICS`` (see the module docstring for definitions).
    """
    fn = METRICS.get(metric)
    rewards32 = torch.as_tensor(rewards, dtype=torch.float32)
    if rewards32.dim() != 2:
        raise ValueError(
            f"rewards must be 2-D [num_prompts, num_responses], got shape {tuple(rewards32.shape)}"
        )
    num_prompts, num_responses = rewards32.shape
    if num_responses == 0:
        return torch.zeros(num_prompts, dtype=torch.float32)

    # Sort each row ascending, missing entries last: float sums then no longer depend on response
    # order, so every metric (user ones too) is exactly invariant to permuting a row's responses.
    valid = torch.isfinite(rewards32)
    rewards64, order = rewards32.double().masked_fill(~valid, float("inf")).sort(dim=1, stable=True)
    valid = torch.gather(valid, 1, order)
    masked = rewards64.masked_fill(~valid, 0.0)
    out = torch.as_tensor(fn(masked, valid), dtype=torch.float64)
    if out.shape != (num_prompts,):
        raise ValueError(
            f"metric {metric!r} returned shape {tuple(out.shape)}, expected ({num_prompts},)"
        )
    out = torch.where(valid.any(dim=1), out, torch.zeros_like(out))
    if torch.isnan(out).any() or (out < 0).any():
        raise ValueError(f"metric {metric!r} returned NaN or negative weights: {out.tolist()[:8]}")
    return out.clamp(max=FLOAT32_MAX).to(torch.float32)
