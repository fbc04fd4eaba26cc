"""DPO-family preference losses for the eva solver (pure torch, no OpenRLHF import).

Every loss consumes per-sequence quantities (one value per preference pair), the way OpenRLHF's
``DPOTrainer.concatenated_forward`` / ``_get_batch_logps`` produce them:

* ``*_logps``       sum of response-token log-probs,
* ``*_logps_mean``  the same sum divided by the number of response tokens,

and returns ``(loss, chosen_rewards, rejected_rewards, metrics)``: OpenRLHF's ``DPOLoss`` return plus
a dict of detached scalar tensors for logging. ``loss`` is the batch mean and already contains the
optional NLL term, so a trainer using ``nll_coef`` here should keep its own ``nll_loss_coef`` at 0.

Notation: pi = policy, ref = reference, c/r = chosen/rejected, l_c = log pi(y_c|x) (summed),
m_c = l_c / |y_c| (mean), sigma = sigmoid, B = batch.

``dpo``   Rafailov et al. 2023, "Direct Preference Optimization", Eq. 7.
          h = (l_c - l_r) - (ref_c - ref_r);  loss = -log sigma(beta * h)
``cdpo``  Mitchell 2023, "A note on DPO with noisy preferences" (conservative DPO), Eq. 3.
          loss = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h),  0 <= eps < 0.5
``ipo``   Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
          Preferences", Eq. 17.  loss = (h - 1 / (2 beta))^2, on summed log-probs like OpenRLHF.
          These three reproduce openrlhf.models.loss.DPOLoss op for op (same values, same rewards).
``simpo`` Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward".
          loss = -log sigma(beta * (m_c - m_r) - gamma).  gamma is the *absolute* target margin in
          reward units (the paper's gamma); the SimPO code's ``gamma_beta_ratio`` is gamma / beta
          and is accepted as an alternative keyword.  eva: beta=10, gamma=5 (= ratio 0.5).
``orpo``  Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model".
          odds(y) = P / (1 - P) with P = exp(m);  log odds(y) = m - log(1 - exp(m)).
          loss = -m_c + lam * -log sigma(log odds(y_c) - log odds(y_r)).  eva: lam=0.5.
``sppo``  Wu et al. 2024, "Self-Play Preference Optimization for Language Model Alignment":
          (log pi/pi_t (y) - eta (P(y > pi_t | x) - 1/2))^2.  We write eta = 1 / beta (as the SPPO
          code does: beta=0.001 <=> eta=1000) and average the two responses of the pair:
          loss = 1/2 [(l_c - ref_c - (P_c - 1/2) / beta)^2 + (l_r - ref_r - (P_r - 1/2) / beta)^2]
          with P_c / P_r the estimated win probabilities of the chosen / rejected response.

Any loss accepts ``nll_coef`` >= 0 and then adds nll_coef * mean_B(-l_c / |y_c|): the length-normalised
NLL on the chosen response of iterative RPO (Pang et al. 2024, "Iterative Reasoning Preference
Optimization"), which eva adds to DPO in multi-iteration runs. It equals OpenRLHF's ``nll_loss``.

Rewards for logging: beta * (pi - ref) for dpo/cdpo/ipo/sppo (as DPOLoss and the SPPO code),
beta * m for simpo (as the SimPO code), and m itself for orpo (its preference is on m).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

# Ye et al. 2024 (eva), solver hyper-parameter table. "loss" holds PreferenceLoss keywords; "train" the
# rest of the row. OpenRLHF 0.11.2 DPO CLI names: --adam.lr, --lr_scheduler, --train.max_epochs,
# --lr_warmup_ratio, --train.batch_size, --data.max_len (no prompt limit, no RMSprop: --optim adam|muon).
PAPER_DEFAULTS: Dict[str, Dict[str, Dict[str, object]]] = {
    "dpo": {
        "loss": {"beta": 0.05},
        "train": {
            "lr": 5e-7,
            "lr_scheduler": "cosine",
            "max_epochs": 2,
            "lr_warmup_ratio": 0.1,
            "train_batch_size": 8,
            "max_len": 2048,
            "prompt_max_len": 1024,
            "optimizer": "adamw",
        },
    },
    "orpo": {
        "loss": {"lam": 0.5},
        "train": {
            "lr": 5e-7,
            "lr_scheduler": "cosine",
            "max_epochs": 1,
            "lr_warmup_ratio": 0.1,
            "train_batch_size": 8,
            "max_len": 2048,
            "prompt_max_len": 1024,
            "optimizer": "adamw",
        },
    },
    "simpo": {
        "loss": {"beta": 10.0, "gamma": 5.0},
        "train": {
            "lr": 8e-7,
            "lr_scheduler": "cosine",
            "max_epochs": 1,
            "lr_warmup_ratio": 0.1,
            "train_batch_size": 32,
            "max_len": 2048,
            "prompt_max_len": 1024,
            "optimizer": "adamw",
        },
    },
    "sppo": {
        "loss": {"beta": 0.001},
        "train": {
            "lr": 5e-7,
            "lr_scheduler": "linear",
            "max_epochs": 6,
            "lr_warmup_ratio": 0.1,
            "train_batch_size": 8,
            "max_len": 1024,
            "prompt_max_len": 512,
            "optimizer": "rmsprop",
        },
    },
}


@dataclass(frozen=True)
class _Spec:
    needs_reference: bool
    needs_win_prob: bool
    hparams: Tuple[str, ...]  # required, besides the optional nll_coef


_SPECS: Dict[str, _Spec] = {
    "dpo": _Spec(True, False, ("beta",)),
    "cdpo": _Spec(True, False, ("beta", "label_smoothing")),
    "ipo": _Spec(True, False, ("beta",)),
    "simpo": _Spec(False, False, ("beta", "gamma")),
    "orpo": _Spec(False, False, ("lam",)),
    "sppo": _Spec(True, True, ("beta",)),
}
LOSS_NAMES: Tuple[str, ...] = tuple(_SPECS)


@dataclass
class PreferenceInputs:
    """Per-pair tensors, all of the same shape (usually [B]). Leave unused ones as None."""

    policy_chosen_logps: Optional[torch.Tensor] = None  # summed over response tokens
    policy_rejected_logps: Optional[torch.Tensor] = None
    policy_chosen_logps_mean: Optional[torch.Tensor] = None  # length-normalised (simpo, orpo, nll)
    policy_rejected_logps_mean: Optional[torch.Tensor] = None
    reference_chosen_logps: Optional[torch.Tensor] = None  # summed; dpo, cdpo, ipo, sppo only
    reference_rejected_logps: Optional[torch.Tensor] = None
    chosen_lengths: Optional[torch.Tensor] = None  # response tokens; used when a mean is not given
    rejected_lengths: Optional[torch.Tensor] = None
    chosen_win_prob: Optional[torch.Tensor] = None  # sppo: P(y_c beats pi_t | x) in [0, 1]
    rejected_win_prob: Optional[torch.Tensor] = None


_INPUT_FIELDS = tuple(f.name for f in fields(PreferenceInputs))


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate on both ends (Maechler 2012, "Accurately computing log(1-exp(-|a|))").

    Near 0, 1 - exp(x) cancels, so use -expm1(x); far below, exp(x) is tiny, so use log1p(-exp(x)).
    """
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _check_hparams(name: str, hp: Dict[str, float]) -> None:
    for key, value in hp.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{name}: hyper-parameter {key}={value!r} must be a finite number")
    if "beta" in hp and hp["beta"] <= 0:
        raise ValueError(f"{name}: beta must be > 0, got {hp['beta']}")
    if "label_smoothing" in hp and not 0 <= hp["label_smoothing"] < 0.5:
        raise ValueError(f"{name}: label_smoothing must be in [0, 0.5), got {hp['label_smoothing']}")
    for key in ("gamma", "lam", "nll_coef"):
        if key in hp and hp[key] < 0:
            raise ValueError(f"{name}: {key} must be >= 0, got {hp[key]}")


class PreferenceLoss(nn.Module):
    """One of LOSS_NAMES. Hyper-parameters left out fall back to PAPER_DEFAULTS[name]["loss"].

    >>> loss_fn = PreferenceLoss("simpo")  # beta=10, gamma=5
    >>> loss, chosen_rewards, rejected_rewards, metrics = loss_fn(
    ...     policy_chosen_logps_mean=mc, policy_rejected_logps_mean=mr)
    """

    def __init__(self, name: str, **hparams: float) -> None:
        super().__init__()
        if name not in _SPECS:
            raise ValueError(f"unknown preference loss {name!r}; valid names: {', '.join(LOSS_NAMES)}")
        spec = _SPECS[name]
        allowed = spec.hparams + ("nll_coef",) + (("gamma_beta_ratio",) if name == "simpo" else ())
        unknown = sorted(set(hparams) - set(allowed))
        if unknown:
            raise ValueError(f"{name}: unknown hyper-parameter(s) {unknown}; accepted: {list(allowed)}")

        defaults = dict(PAPER_DEFAULTS.get(name, {}).get("loss", {}))
        if "gamma_beta_ratio" in hparams:
            if "gamma" in hparams:
                raise ValueError("simpo: give either gamma (absolute margin) or gamma_beta_ratio, not both")
            defaults.pop("gamma", None)
        hp = {"nll_coef": 0.0, **defaults, **hparams}
        _check_hparams(name, hp)  # before the ratio conversion, so it sees a valid beta
        if "gamma_beta_ratio" in hp:
            hp["gamma"] = hp.pop("gamma_beta_ratio") * hp["beta"]
            _check_hparams(name, hp)

        missing = [key for key in spec.hparams if key not in hp]
        if missing:
            raise ValueError(f"{name}: missing hyper-parameter(s) {missing} (no paper default for this loss)")

        self.name = name
        self.hparams = {key: float(value) for key, value in hp.items()}

    @classmethod
    def from_openrlhf(
        cls, beta: float, label_smoothing: float = 0.0, ipo: bool = False, nll_coef: float = 0.0
    ) -> "PreferenceLoss":
        """Drop-in for ``DPOLoss(beta, label_smoothing, ipo)``; like DPOLoss, ipo ignores label_smoothing."""
        if ipo:
            return cls("ipo", beta=beta, nll_coef=nll_coef)
        if label_smoothing > 0:
            return cls("cdpo", beta=beta, label_smoothing=label_smoothing, nll_coef=nll_coef)
        return cls("dpo", beta=beta, nll_coef=nll_coef)

    @property
    def needs_reference(self) -> bool:
        """False for simpo/orpo: the trainer can skip loading and running the reference model."""
        return _SPECS[self.name].needs_reference

    @property
    def needs_win_prob(self) -> bool:
        """True for sppo: the batch must carry chosen_win_prob / rejected_win_prob."""
        return _SPECS[self.name].needs_win_prob

    def extra_repr(self) -> str:
        return f"{self.name!r}, " + ", ".join(f"{k}={v:g}" for k, v in self.hparams.items())

    def forward(
        self, inputs: Optional[PreferenceInputs | Mapping[str, torch.Tensor]] = None, **tensors: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """Take a PreferenceInputs, a dict of its fields, or its fields as keywords."""
        if inputs is not None and tensors:
            raise TypeError("pass either a PreferenceInputs/dict or keyword tensors, not both")
        if not isinstance(inputs, PreferenceInputs):
            given = dict(inputs if inputs is not None else tensors)
            unknown = sorted(set(given) - set(_INPUT_FIELDS))
            if unknown:
                raise TypeError(f"unknown input field(s) {unknown}; valid fields: {list(_INPUT_FIELDS)}")
            inputs = PreferenceInputs(**given)
        self._check_shapes(inputs)

        metrics: Dict[str, torch.Tensor] = {}
        if self.name in ("dpo", "cdpo", "ipo"):
            losses, chosen_rewards, rejected_rewards = self._dpo_family(inputs)
        elif self.name == "simpo":
            losses, chosen_rewards, rejected_rewards = self._simpo(inputs)
        elif self.name == "orpo":
            losses, chosen_rewards, rejected_rewards = self._orpo(inputs, metrics)
        else:
            losses, chosen_rewards, rejected_rewards = self._sppo(inputs)

        loss = losses.mean()
        metrics["preference_loss"] = loss.detach()
        if self.hparams["nll_coef"] > 0:
            nll = -self._mean_logps(inputs, "chosen").mean()
            loss = loss + self.hparams["nll_coef"] * nll
            metrics["nll_loss"] = nll.detach()
        return loss, chosen_rewards, rejected_rewards, metrics

    # --- input plumbing -------------------------------------------------------------------------

    def _require(self, inputs: PreferenceInputs, *names: str) -> Tuple[torch.Tensor, ...]:
        missing = [n for n in names if getattr(inputs, n) is None]
        if missing:
            raise ValueError(f"{self.name} loss needs input(s) {missing}, got None")
        return tuple(getattr(inputs, n) for n in names)

    def _mean_logps(self, inputs: PreferenceInputs, side: str) -> torch.Tensor:
        mean = getattr(inputs, f"policy_{side}_logps_mean")
        if mean is not None:
            return mean
        total, length = getattr(inputs, f"policy_{side}_logps"), getattr(inputs, f"{side}_lengths")
        if total is None or length is None:
            raise ValueError(
                f"{self.name} loss needs input policy_{side}_logps_mean "
                f"(or policy_{side}_logps together with {side}_lengths), got None"
            )
        # An empty response has sum 0; clamp so it reads as mean 0 rather than 0/0.
        return total / length.to(total.dtype).clamp(min=1)

    @staticmethod
    def _check_shapes(inputs: PreferenceInputs) -> None:
        shapes = {n: tuple(getattr(inputs, n).shape) for n in _INPUT_FIELDS if getattr(inputs, n) is not None}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"preference inputs must share one shape, got {shapes}")

    # --- losses (per pair; forward takes the batch mean) -----------------------------------------

    def _dpo_family(self, inputs: PreferenceInputs):
        pi_c, pi_r, ref_c, ref_r = self._require(
            inputs,
            "policy_chosen_logps",
            "policy_rejected_logps",
            "reference_chosen_logps",
            "reference_rejected_logps",
        )
        beta = self.hparams["beta"]
        # Same op order as OpenRLHF's DPOLoss so results match it bit for bit.
        logits = (pi_c - pi_r) - (ref_c - ref_r)
        if self.name == "ipo":
            losses = (logits - 1 / (2 * beta)) ** 2
        else:
            eps = self.hparams.get("label_smoothing", 0.0)
            losses = -F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps
        return losses, beta * (pi_c - ref_c).detach(), beta * (pi_r - ref_r).detach()

    def _simpo(self, inputs: PreferenceInputs):
        beta, gamma = self.hparams["beta"], self.hparams["gamma"]
        m_c, m_r = self._mean_logps(inputs, "chosen"), self._mean_logps(inputs, "rejected")
        losses = -F.logsigmoid(beta * (m_c - m_r) - gamma)
        return losses, beta * m_c.detach(), beta * m_r.detach()

    def _orpo(self, inputs: PreferenceInputs, metrics: Dict[str, torch.Tensor]):
        m_c, m_r = self._mean_logps(inputs, "chosen"), self._mean_logps(inputs, "rejected")
        # A mean log-prob of exactly 0 (P = 1) has infinite odds; keep it one ulp-ish below 0.
        eps = torch.finfo(m_c.dtype).eps
        s_c, s_r = m_c.clamp(max=-eps), m_r.clamp(max=-eps)
        log_odds_ratio = (s_c - s_r) - (log1mexp(s_c) - log1mexp(s_r))
        or_loss = -F.logsigmoid(log_odds_ratio)
        nll = -m_c
        metrics["orpo_nll"] = nll.detach().mean()
        metrics["orpo_or_loss"] = or_loss.detach().mean()
        metrics["orpo_log_odds_ratio"] = log_odds_ratio.detach().mean()
        return nll + self.hparams["lam"] * or_loss, m_c.detach(), m_r.detach()

    def _sppo(self, inputs: PreferenceInputs):
        pi_c, pi_r, ref_c, ref_r, p_c, p_r = self._require(
            inputs,
            "policy_chosen_logps",
            "policy_rejected_logps",
            "reference_chosen_logps",
            "reference_rejected_logps",
            "chosen_win_prob",
            "rejected_win_prob",
        )
        beta = self.hparams["beta"]
        ratio_c, ratio_r = pi_c - ref_c, pi_r - ref_r
        # Target log-ratio eta * (P - 1/2) with eta = 1 / beta.
        losses = 0.5 * ((ratio_c - (p_c - 0.5) / beta) ** 2 + (ratio_r - (p_r - 0.5) / beta) ** 2)
        return losses, beta * ratio_c.detach(), beta * ratio_r.detach()
