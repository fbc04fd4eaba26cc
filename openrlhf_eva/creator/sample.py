"""Choosing the informative subset: k distinct prompt indices from per-prompt informativeness weights.

Samplers live in ``SAMPLERS`` and are called as ``fn(info, k, generator) -> LongTensor[k]`` with
``info`` a validated float64 tensor (finite, >= 0) and ``0 < k <= len(info)``; they must return k
distinct indices. Built-ins:

- ``weighted``: without replacement, each successive draw proportional to the remaining weights
  (the paper's default). All-zero weights fall back to uniform. With fewer positive weights than k,
  every positive index is taken (in random order) and the rest is filled uniformly from the zeros.
- ``greedy``: the k largest weights; ties go to the lower index, so it is deterministic.
- ``uniform``: k indices uniformly without replacement, ignoring the weights.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch

from .registry import SAMPLERS, register_sampler


@register_sampler("weighted")
def weighted(info: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """Successive draws proportional to ``info``, without replacement."""
    positive = torch.nonzero(info > 0).flatten()
    if len(positive) >= k:
        return torch.multinomial(info, k, replacement=False, generator=generator)
    # torch.multinomial refuses to draw more items than there are positive weights.
    zeros = torch.nonzero(info == 0).flatten()
    fill = zeros[torch.randperm(len(zeros), generator=generator)[: k - len(positive)]]
    return torch.cat([positive[torch.randperm(len(positive), generator=generator)], fill])


@register_sampler("greedy")
def greedy(info: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """Top-k by ``info``; a stable sort breaks ties by the lower index."""
    return torch.sort(info, descending=True, stable=True).indices[:k]


@register_sampler("uniform")
def uniform(info: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """k indices uniformly at random, without replacement."""
    return torch.randperm(len(info), generator=generator)[:k]


def sample_informative(
    info: Any, k: int, mode: str = "weighted", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Return a LongTensor of ``k`` distinct indices into ``info``, chosen by the sampler ``mode``.

    ``info`` (tensor, numpy array or list) must be 1-D, finite and >= 0. ``k == 0`` gives an empty
    tensor; ``k < 0`` or ``k > len(info)`` raises ValueError. Pass a seeded ``torch.Generator`` for
    reproducible draws (None uses torch's global RNG).
    """
    sampler = SAMPLERS.get(mode)
    info64 = torch.as_tensor(info, dtype=torch.float64)
    if info64.dim() != 1:
        raise ValueError(f"info must be 1-D, got shape {tuple(info64.shape)}")
    if not torch.isfinite(info64).all() or (info64 < 0).any():
        raise ValueError("info must be finite and >= 0 (use informativeness() to compute it)")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= k <= len(info64):
        raise ValueError(f"k must be an int in [0, {len(info64)}] (the number of prompts), got {k!r}")
    k = int(k)
    if k == 0:
        return torch.empty(0, dtype=torch.long)
    indices = torch.as_tensor(sampler(info64, k, generator), dtype=torch.long)
    if indices.shape != (k,) or len(torch.unique(indices)) != k:
        raise ValueError(f"sampler {mode!r} must return {k} distinct indices, got {indices.tolist()}")
    return indices
