"""Tests for openrlhf_eva.solve.losses.

Every reference below is written out again from the papers' formulas in float64, without calling the
module under test, and the test imports nothing from openrlhf (its DPOLoss is read from source text).
"""

import ast
import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from openrlhf_eva.solve import LOSS_NAMES, PAPER_DEFAULTS, PreferenceInputs, PreferenceLoss, log1mexp

D = torch.float64

# --- independent float64 references ---------------------------------------------------------------


def ref_log_sigmoid(z):
    # log sigma(z) = -log(1 + e^-z), split by sign so the exp never overflows.
    return torch.where(z >= 0, -torch.log1p(torch.exp(-z)), z - torch.log1p(torch.exp(z)))


def ref_dpo(pc, pr, rc, rr, beta, ls=0.0):
    h = (pc - pr) - (rc - rr)
    return (-(1 - ls) * ref_log_sigmoid(beta * h) - ls * ref_log_sigmoid(-beta * h)).mean()


def ref_ipo(pc, pr, rc, rr, beta):
    h = (pc - pr) - (rc - rr)
    return ((h - 1 / (2 * beta)) ** 2).mean()


def ref_simpo(mc, mr, beta, gamma):
    return (-ref_log_sigmoid(beta * (mc - mr) - gamma)).mean()


def ref_orpo(mc, mr, lam):
    # Naive odds P / (1 - P): fine in float64 away from P = 1, which is where we use it.
    pc, pr = torch.exp(mc), torch.exp(mr)
    log_odds_ratio = torch.log(pc / (1 - pc)) - torch.log(pr / (1 - pr))
    return (-mc - lam * ref_log_sigmoid(log_odds_ratio)).mean()


def ref_sppo(pc, pr, rc, rr, win_c, win_r, beta):
    eta = 1 / beta
    return (0.5 * ((pc - rc - eta * (win_c - 0.5)) ** 2 + (pr - rr - eta * (win_r - 0.5)) ** 2)).mean()


def ref_nll(pc, len_c):
    return (-pc / len_c).mean()


# --- batches ---------------------------------------------------------------------------------------

FIELDS = (
    "policy_chosen_logps",
    "policy_rejected_logps",
    "reference_chosen_logps",
    "reference_rejected_logps",
    "chosen_lengths",
    "rejected_lengths",
    "chosen_win_prob",
    "rejected_win_prob",
)


def make_batch(seed=0, b=5, dtype=D):
    """Realistic per-pair tensors; summed logps = mean * length so both views agree."""
    g = torch.Generator().manual_seed(seed)
    len_c = torch.randint(3, 40, (b,), generator=g).to(dtype)
    len_r = torch.randint(3, 40, (b,), generator=g).to(dtype)
    mean_c = -(torch.rand(b, generator=g, dtype=dtype) * 2.5 + 0.05)
    mean_r = -(torch.rand(b, generator=g, dtype=dtype) * 2.5 + 0.05)
    return {
        "policy_chosen_logps": mean_c * len_c,
        "policy_rejected_logps": mean_r * len_r,
        "reference_chosen_logps": mean_c * len_c + torch.randn(b, generator=g, dtype=dtype),
        "reference_rejected_logps": mean_r * len_r + torch.randn(b, generator=g, dtype=dtype),
        "chosen_lengths": len_c,
        "rejected_lengths": len_r,
        "chosen_win_prob": torch.rand(b, generator=g, dtype=dtype),
        "rejected_win_prob": torch.rand(b, generator=g, dtype=dtype),
    }


def with_grad(batch):
    return {k: (v.clone().requires_grad_(True) if "lengths" not in k else v) for k, v in batch.items()}


# (name, hparams, reference(batch) -> loss) covering every loss and the NLL term.
CASES = [
    ("dpo", {"beta": 0.1}, lambda t: ref_dpo(*pairs(t), 0.1)),
    ("dpo", {"beta": 0.05, "nll_coef": 0.3}, lambda t: ref_dpo(*pairs(t), 0.05) + 0.3 * nll(t)),
    ("cdpo", {"beta": 0.1, "label_smoothing": 0.2}, lambda t: ref_dpo(*pairs(t), 0.1, 0.2)),
    ("ipo", {"beta": 0.1}, lambda t: ref_ipo(*pairs(t), 0.1)),
    ("ipo", {"beta": 0.5, "nll_coef": 1.0}, lambda t: ref_ipo(*pairs(t), 0.5) + nll(t)),
    ("simpo", {"beta": 10.0, "gamma": 5.0}, lambda t: ref_simpo(*means(t), 10.0, 5.0)),
    ("simpo", {"beta": 2.0, "gamma_beta_ratio": 0.5}, lambda t: ref_simpo(*means(t), 2.0, 1.0)),
    ("orpo", {"lam": 0.5}, lambda t: ref_orpo(*means(t), 0.5)),
    ("orpo", {"lam": 0.1, "nll_coef": 0.2}, lambda t: ref_orpo(*means(t), 0.1) + 0.2 * nll(t)),
    ("sppo", {"beta": 0.001}, lambda t: ref_sppo(*pairs(t), *wins(t), 0.001)),
    ("sppo", {"beta": 0.5, "nll_coef": 0.1}, lambda t: ref_sppo(*pairs(t), *wins(t), 0.5) + 0.1 * nll(t)),
]
CASE_IDS = [f"{n}-{'-'.join(f'{k}{v}' for k, v in h.items())}" for n, h, _ in CASES]


def pairs(t):
    keys = ("policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps")
    return tuple(t[k] for k in keys)


def means(t):
    return t["policy_chosen_logps"] / t["chosen_lengths"], t["policy_rejected_logps"] / t["rejected_lengths"]


def wins(t):
    return t["chosen_win_prob"], t["rejected_win_prob"]


def nll(t):
    return ref_nll(t["policy_chosen_logps"], t["chosen_lengths"])


# --- value and gradient agreement ------------------------------------------------------------------


@pytest.mark.parametrize("name,hp,ref", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_and_grads_match_reference(name, hp, ref, seed):
    batch = with_grad(make_batch(seed))
    loss, chosen_rewards, rejected_rewards, metrics = PreferenceLoss(name, **hp)(**batch)
    expected = ref(batch)
    assert loss.dtype == D and loss.shape == ()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)

    inputs = [v for v in batch.values() if v.requires_grad]
    got = torch.autograd.grad(loss, inputs, allow_unused=True)
    want = torch.autograd.grad(expected, inputs, allow_unused=True)
    for key, g, w in zip([k for k, v in batch.items() if v.requires_grad], got, want):
        if w is None:  # an input this loss does not read
            assert g is None or torch.all(g == 0), key
        else:
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=key)

    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad
    assert chosen_rewards.shape == rejected_rewards.shape == (5,)
    assert all(v.shape == () and not v.requires_grad for v in metrics.values())
    assert ("nll_loss" in metrics) == (hp.get("nll_coef", 0) > 0)


@pytest.mark.parametrize(
    "name,hp,scale,kind",
    [
        ("dpo", {"beta": 0.1}, 0.1, "ratio"),
        ("cdpo", {"beta": 0.2, "label_smoothing": 0.1}, 0.2, "ratio"),
        ("ipo", {"beta": 0.3}, 0.3, "ratio"),
        ("sppo", {"beta": 0.001}, 0.001, "ratio"),
        ("simpo", {"beta": 10.0, "gamma": 5.0}, 10.0, "mean"),
        ("orpo", {"lam": 0.5}, 1.0, "mean"),
    ],
)
def test_rewards(name, hp, scale, kind):
    # dpo family and sppo: beta * log(pi/ref) (DPOLoss, SPPO code); simpo: beta * mean logp; orpo: mean logp.
    batch = make_batch(10)
    _, cr, rr, _ = PreferenceLoss(name, **hp)(**batch)
    if kind == "ratio":
        want_c = scale * (batch["policy_chosen_logps"] - batch["reference_chosen_logps"])
        want_r = scale * (batch["policy_rejected_logps"] - batch["reference_rejected_logps"])
    else:
        want_c, want_r = (scale * m for m in means(batch))
    torch.testing.assert_close(cr, want_c, rtol=1e-14, atol=0)
    torch.testing.assert_close(rr, want_r, rtol=1e-14, atol=0)


@pytest.mark.parametrize("name,hp,ref", CASES, ids=CASE_IDS)
def test_gradcheck(name, hp, ref):
    batch = make_batch(3, b=3)
    keys = [k for k in FIELDS if "lengths" not in k]
    loss_fn = PreferenceLoss(name, **hp)

    def f(*tensors):
        return loss_fn(**dict(zip(keys, tensors)), chosen_lengths=batch["chosen_lengths"],
                       rejected_lengths=batch["rejected_lengths"])[0]

    assert torch.autograd.gradcheck(f, tuple(batch[k].clone().requires_grad_(True) for k in keys))


@pytest.mark.parametrize("name", ["simpo", "orpo"])
def test_given_means_equal_sum_over_length(name):
    batch = make_batch(4)
    m_c, m_r = means(batch)
    from_lengths = PreferenceLoss(name)(**batch)[0]
    from_means = PreferenceLoss(name)(policy_chosen_logps_mean=m_c, policy_rejected_logps_mean=m_r)[0]
    torch.testing.assert_close(from_lengths, from_means, rtol=1e-14, atol=0)


def test_nll_uses_mean_logps_when_given():
    # Mirrors OpenRLHF's nll_loss = -all_logps_mean[:B].mean().
    batch = make_batch(5)
    m_c, _ = means(batch)
    batch.pop("chosen_lengths")
    _, _, _, metrics = PreferenceLoss("dpo", beta=0.1, nll_coef=1.0)(**batch, policy_chosen_logps_mean=m_c)
    torch.testing.assert_close(metrics["nll_loss"], -m_c.mean())


# --- OpenRLHF DPOLoss equality ---------------------------------------------------------------------


def openrlhf_formula(pc, pr, rc, rr, beta, label_smoothing, ipo):
    """openrlhf.models.loss.DPOLoss.forward (0.11.2), transcribed with its op order."""
    logits = (pc - pr) - (rc - rr)
    if ipo:
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    return losses.mean(), beta * (pc - rc).detach(), beta * (pr - rr).detach()


def installed_dpo_loss_class():
    """DPOLoss compiled from the installed openrlhf source text, without importing openrlhf."""
    spec = importlib.util.find_spec("openrlhf")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "loss.py"
    if not path.exists():
        return None
    tree = ast.parse(path.read_text())
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DPOLoss"), None)
    if cls is None:
        return None
    namespace = {"torch": torch, "nn": torch.nn, "F": F, "Tuple": tuple}
    exec(compile(ast.Module(body=[cls], type_ignores=[]), str(path), "exec"), namespace)
    return namespace["DPOLoss"]


DPO_SETTINGS = [(0.1, 0.0, False), (0.05, 0.0, False), (0.1, 0.3, False), (0.1, 0.0, True), (0.2, 0.3, True)]


@pytest.mark.parametrize("beta,ls,ipo", DPO_SETTINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dpo_family_bitwise_equal_to_openrlhf(beta, ls, ipo, dtype):
    batch = make_batch(6, b=64, dtype=dtype)
    loss, cr, rr, _ = PreferenceLoss.from_openrlhf(beta, ls, ipo)(**batch)
    assert PreferenceLoss.from_openrlhf(beta, ls, ipo).name == ("ipo" if ipo else "cdpo" if ls else "dpo")
    want = openrlhf_formula(*pairs(batch), beta, ls, ipo)
    for got, exp in zip((loss, cr, rr), want):
        assert torch.equal(got, exp)

    DPOLoss = installed_dpo_loss_class()
    if DPOLoss is None:
        pytest.skip("openrlhf source not found")
    installed = DPOLoss(beta, ls, ipo)(*pairs(batch))
    for got, exp in zip((loss, cr, rr), installed):
        assert torch.equal(got, exp)


# --- hand-computed cases ---------------------------------------------------------------------------


def t(*values):
    return torch.tensor(values, dtype=D)


def test_dpo_hand_values():
    # h = (-10 - -12) - (-11 - -11) = 2; beta 0.5 -> -log sigma(1) = log(1 + e^-1).
    loss = PreferenceLoss("dpo", beta=0.5)(
        policy_chosen_logps=t(-10.0), policy_rejected_logps=t(-12.0),
        reference_chosen_logps=t(-11.0), reference_rejected_logps=t(-11.0),
    )[0]
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-15)
    zero = dict(policy_chosen_logps=t(-3.0), policy_rejected_logps=t(-3.0),
                reference_chosen_logps=t(-5.0), reference_rejected_logps=t(-5.0))
    assert PreferenceLoss("dpo", beta=0.1)(**zero)[0].item() == pytest.approx(math.log(2), rel=1e-15)
    assert PreferenceLoss("cdpo", beta=0.1, label_smoothing=0.3)(**zero)[0].item() == pytest.approx(math.log(2))
    # IPO at h = 0: (0 - 1/(2*0.25))^2 = 4.
    assert PreferenceLoss("ipo", beta=0.25)(**zero)[0].item() == pytest.approx(4.0, rel=1e-15)


@pytest.mark.parametrize(
    "delta,beta,gamma,expected",
    [
        (0.5, 10.0, 5.0, math.log(2)),  # margin exactly met: -log sigma(0)
        (0.5 + math.log(3) / 10, 10.0, 5.0, math.log(4 / 3)),  # sigma(log 3) = 3/4
        (0.0, 10.0, 5.0, math.log1p(math.exp(5.0))),  # tie: -log sigma(-5)
        (1.0, 2.0, 0.0, math.log1p(math.exp(-2.0))),  # no margin
    ],
)
def test_simpo_closed_form(delta, beta, gamma, expected):
    loss = PreferenceLoss("simpo", beta=beta, gamma=gamma)(
        policy_chosen_logps_mean=t(-1.0 + delta), policy_rejected_logps_mean=t(-1.0)
    )[0]
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_simpo_gamma_beta_ratio_is_gamma_over_beta():
    a = PreferenceLoss("simpo", beta=10.0, gamma_beta_ratio=0.5)
    assert a.hparams["gamma"] == 5.0 and a.hparams == PreferenceLoss("simpo").hparams


def test_orpo_hand_value():
    # P_c = 1/2 -> odds 1; P_r = 1/5 -> odds 1/4; log odds ratio = log 4, -log sigma(log 4) = log(5/4).
    loss, cr, rr, metrics = PreferenceLoss("orpo", lam=0.5)(
        policy_chosen_logps_mean=t(math.log(0.5)), policy_rejected_logps_mean=t(math.log(0.2))
    )
    assert loss.item() == pytest.approx(math.log(2) + 0.5 * math.log(1.25), rel=1e-14)
    assert metrics["orpo_log_odds_ratio"].item() == pytest.approx(math.log(4), rel=1e-14)
    assert metrics["orpo_nll"].item() == pytest.approx(math.log(2), rel=1e-14)
    assert cr.item() == pytest.approx(math.log(0.5)) and rr.item() == pytest.approx(math.log(0.2))


def test_sppo_hand_value():
    # beta 0.001 -> eta 1000. chosen: ratio 100, target 1000*(0.6-0.5)=100 -> 0.
    # rejected: ratio -50, target 1000*(0.4-0.5)=-100 -> 50^2. Mean of the two: 1250.
    loss, cr, rr, _ = PreferenceLoss("sppo")(
        policy_chosen_logps=t(-100.0), reference_chosen_logps=t(-200.0), chosen_win_prob=t(0.6),
        policy_rejected_logps=t(-250.0), reference_rejected_logps=t(-200.0), rejected_win_prob=t(0.4),
    )
    assert loss.item() == pytest.approx(1250.0, rel=1e-9)
    assert cr.item() == pytest.approx(0.1) and rr.item() == pytest.approx(-0.05)


@pytest.mark.parametrize("beta", [0.001, 0.1, 2.0])
def test_sppo_minimiser_is_the_target_log_ratio(beta):
    win_c, win_r = t(0.9, 0.55, 0.3), t(0.2, 0.5, 0.7)
    ref_c, ref_r = t(-40.0, -12.0, -80.0), t(-35.0, -20.0, -60.0)
    pc = (ref_c + (win_c - 0.5) / beta).requires_grad_(True)
    pr = (ref_r + (win_r - 0.5) / beta).requires_grad_(True)
    loss = PreferenceLoss("sppo", beta=beta)(
        policy_chosen_logps=pc, policy_rejected_logps=pr, reference_chosen_logps=ref_c,
        reference_rejected_logps=ref_r, chosen_win_prob=win_c, rejected_win_prob=win_r,
    )[0]
    assert loss.item() == pytest.approx(0.0, abs=1e-18)
    for g in torch.autograd.grad(loss, (pc, pr)):
        assert torch.all(g.abs() < 1e-12)
    # ... and it is a strict minimum: moving off the target raises the loss.
    off = PreferenceLoss("sppo", beta=beta)(
        policy_chosen_logps=pc.detach() + 0.1, policy_rejected_logps=pr.detach(), reference_chosen_logps=ref_c,
        reference_rejected_logps=ref_r, chosen_win_prob=win_c, rejected_win_prob=win_r,
    )[0]
    assert off.item() > 0


# --- reference-free losses and stability ----------------------------------------------------------


def test_needs_reference_flags():
    assert {n: PreferenceLoss(n, **hp_for(n)).needs_reference for n in LOSS_NAMES} == {
        "dpo": True, "cdpo": True, "ipo": True, "simpo": False, "orpo": False, "sppo": True,
    }
    assert [n for n in LOSS_NAMES if PreferenceLoss(n, **hp_for(n)).needs_win_prob] == ["sppo"]


def hp_for(name):
    return {"cdpo": {"beta": 0.1, "label_smoothing": 0.1}, "ipo": {"beta": 0.1}}.get(name, {})


@pytest.mark.parametrize("name", ["simpo", "orpo"])
def test_reference_free_losses_run_without_reference(name):
    batch = make_batch(7)
    batch["reference_chosen_logps"] = batch["reference_rejected_logps"] = None
    loss_fn = PreferenceLoss(name)
    assert not loss_fn.needs_reference
    loss = loss_fn(PreferenceInputs(**batch))[0]
    assert torch.isfinite(loss)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "m_c,m_r", [(-1e-8, -50.0), (-50.0, -1e-8), (-1e-8, -1e-8), (0.0, -3.0), (-3.0, 0.0), (-50.0, -50.0)]
)
def test_orpo_stable_at_extremes(dtype, m_c, m_r):
    mc = torch.full((2,), m_c, dtype=dtype, requires_grad=True)
    mr = torch.full((2,), m_r, dtype=dtype, requires_grad=True)
    loss = PreferenceLoss("orpo", nll_coef=0.1)(policy_chosen_logps_mean=mc, policy_rejected_logps_mean=mr)[0]
    assert torch.isfinite(loss)
    for g in torch.autograd.grad(loss, (mc, mr)):
        assert torch.all(torch.isfinite(g))


def test_orpo_near_zero_matches_asymptotics():
    # For m -> 0-, log(1 - e^m) ~ log(-m); a naive log(1 - exp(m)) loses this in float64 below ~1e-16.
    mc, mr = t(-1e-8), t(-2.0)
    got = PreferenceLoss("orpo", lam=1.0)(policy_chosen_logps_mean=mc, policy_rejected_logps_mean=mr)[3]
    lo_c = -1e-8 - math.log(1e-8 - 0.5e-16)
    lo_r = -2.0 - math.log(1 - math.exp(-2.0))
    assert got["orpo_log_odds_ratio"].item() == pytest.approx(lo_c - lo_r, rel=1e-12)


def test_log1mexp_accuracy():
    x = -torch.logspace(-30, 2.5, 300, dtype=D)
    # Reference per regime: log(-expm1) is exact to rounding near 0, log1p(-exp) far from 0.
    want = [math.log(-math.expm1(v)) if v > -1 else math.log1p(-math.exp(v)) for v in x.tolist()]
    want = torch.tensor(want, dtype=D)
    torch.testing.assert_close(log1mexp(x), want, rtol=1e-14, atol=1e-300)
    x32 = -torch.logspace(-20, 2, 100, dtype=torch.float32)
    assert torch.all(torch.isfinite(log1mexp(x32)))


# --- validation ------------------------------------------------------------------------------------


def test_unknown_loss_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown preference loss 'kto'.*dpo, cdpo, ipo, simpo, orpo, sppo"):
        PreferenceLoss("kto")


@pytest.mark.parametrize(
    "name,hp,match",
    [
        ("dpo", {"beta": 0.0}, "beta must be > 0"),
        ("sppo", {"beta": -0.001}, "beta must be > 0"),
        ("simpo", {"beta": -1.0}, "beta must be > 0"),
        ("dpo", {"beta": float("nan")}, "finite number"),
        ("dpo", {"beta": float("inf")}, "finite number"),
        ("dpo", {"beta": True}, "finite number"),
        ("dpo", {"beta": "0.1"}, "finite number"),
        ("cdpo", {"beta": 0.1, "label_smoothing": 0.5}, r"label_smoothing must be in \[0, 0.5\)"),
        ("cdpo", {"beta": 0.1, "label_smoothing": -0.1}, "label_smoothing"),
        ("simpo", {"gamma": -1.0}, "gamma must be >= 0"),
        ("simpo", {"gamma_beta_ratio": -0.5}, "gamma must be >= 0"),
        ("simpo", {"gamma": 5.0, "gamma_beta_ratio": 0.5}, "not both"),
        ("orpo", {"lam": -0.5}, "lam must be >= 0"),
        ("dpo", {"nll_coef": -1.0}, "nll_coef must be >= 0"),
        ("dpo", {"gamma": 1.0}, r"unknown hyper-parameter\(s\) \['gamma'\]; accepted: \['beta', 'nll_coef'\]"),
        ("orpo", {"beta": 0.1}, "unknown hyper-parameter"),
        ("ipo", {}, r"missing hyper-parameter\(s\) \['beta'\]"),
        ("cdpo", {"beta": 0.1}, r"missing hyper-parameter\(s\) \['label_smoothing'\]"),
    ],
)
def test_bad_hyper_parameters(name, hp, match):
    with pytest.raises(ValueError, match=match):
        PreferenceLoss(name, **hp)


@pytest.mark.parametrize(
    "name,drop,match",
    [
        ("dpo", ["reference_chosen_logps"], r"dpo loss needs input\(s\) \['reference_chosen_logps'\]"),
        ("ipo", ["reference_chosen_logps", "reference_rejected_logps"], "'reference_chosen_logps', 'reference_rej"),
        ("sppo", ["rejected_win_prob"], r"sppo loss needs input\(s\) \['rejected_win_prob'\]"),
        ("sppo", ["policy_chosen_logps"], "policy_chosen_logps"),
        ("simpo", ["chosen_lengths"], "policy_chosen_logps_mean .or policy_chosen_logps together with chosen_lengths"),
        ("orpo", ["policy_rejected_logps"], "policy_rejected_logps_mean"),
        ("dpo", ["chosen_lengths"], None),  # dpo without nll does not read lengths
    ],
)
def test_missing_inputs_name_the_field(name, drop, match):
    batch = make_batch(8)
    for key in drop:
        batch.pop(key)
    loss_fn = PreferenceLoss(name, **hp_for(name))
    if match is None:
        loss_fn(**batch)
        with pytest.raises(ValueError, match="chosen_lengths"):
            PreferenceLoss(name, nll_coef=0.1)(**batch)
    else:
        with pytest.raises(ValueError, match=match):
            loss_fn(**batch)


def test_bad_input_containers():
    batch = make_batch(9)
    loss_fn = PreferenceLoss("dpo")
    with pytest.raises(TypeError, match=r"unknown input field\(s\) \['chosen_logps'\]"):
        loss_fn(chosen_logps=batch["policy_chosen_logps"])
    with pytest.raises(TypeError, match="not both"):
        loss_fn(batch, policy_chosen_logps=batch["policy_chosen_logps"])
    batch["reference_rejected_logps"] = batch["reference_rejected_logps"][:3]
    with pytest.raises(ValueError, match="share one shape"):
        loss_fn(batch)  # a plain dict works too, up to the shape check


# --- defaults --------------------------------------------------------------------------------------


def test_paper_defaults_follow_the_eva_table():
    assert {n: d["loss"] for n, d in PAPER_DEFAULTS.items()} == {
        "dpo": {"beta": 0.05}, "orpo": {"lam": 0.5}, "simpo": {"beta": 10.0, "gamma": 5.0}, "sppo": {"beta": 0.001},
    }
    rows = {n: tuple(d["train"].values()) for n, d in PAPER_DEFAULTS.items()}
    assert rows == {
        "dpo": (5e-7, "cosine", 2, 0.1, 8, 2048, 1024, "adamw"),
        "orpo": (5e-7, "cosine", 1, 0.1, 8, 2048, 1024, "adamw"),
        "simpo": (8e-7, "cosine", 1, 0.1, 32, 2048, 1024, "adamw"),
        "sppo": (5e-7, "linear", 6, 0.1, 8, 1024, 512, "rmsprop"),
    }
    for name, d in PAPER_DEFAULTS.items():
        assert PreferenceLoss(name).hparams == {"nll_coef": 0.0, **d["loss"]}
        assert PreferenceLoss(name, **d["loss"]).hparams == PreferenceLoss(name).hparams


# --- property: finite for realistic finite inputs ------------------------------------------------

logp_sums = st.floats(-2000.0, 0.0, allow_nan=False)
logp_means = st.floats(-20.0, 0.0, allow_nan=False)
lengths = st.integers(1, 2048)
probs = st.floats(0.0, 1.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(logp_means, logp_means, lengths, lengths, st.floats(-50, 50), st.floats(-50, 50), probs, probs),
             min_size=1, max_size=6),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_losses_finite_for_realistic_inputs(rows, dtype):
    cols = list(zip(*rows))
    mean_c, mean_r = torch.tensor(cols[0], dtype=dtype), torch.tensor(cols[1], dtype=dtype)
    len_c, len_r = torch.tensor(cols[2], dtype=dtype), torch.tensor(cols[3], dtype=dtype)
    pc = (mean_c * len_c).clamp(min=-2000.0).requires_grad_(True)
    pr = (mean_r * len_r).clamp(min=-2000.0).requires_grad_(True)
    batch = {
        "policy_chosen_logps": pc,
        "policy_rejected_logps": pr,
        "reference_chosen_logps": pc.detach() + torch.tensor(cols[4], dtype=dtype),
        "reference_rejected_logps": pr.detach() + torch.tensor(cols[5], dtype=dtype),
        "chosen_lengths": len_c,
        "rejected_lengths": len_r,
        "chosen_win_prob": torch.tensor(cols[6], dtype=dtype),
        "rejected_win_prob": torch.tensor(cols[7], dtype=dtype),
    }
    for name in LOSS_NAMES:
        loss, cr, rr, metrics = PreferenceLoss(name, nll_coef=0.1, **hp_for(name))(**batch)
        assert torch.isfinite(loss), name
        assert torch.all(torch.isfinite(cr)) and torch.all(torch.isfinite(rr)), name
        for g in torch.autograd.grad(loss, (pc, pr)):
            assert torch.all(torch.isfinite(g)), name
