"""`deepspeed --module openrlhf_eva.train_dpo` (or `python -m` for one rank): OpenRLHF's `train_dpo`
with eva's solver losses.

Every upstream flag keeps its upstream meaning: this runs upstream's own parser and `train(args)`
(`openrlhf_eva.upstream.run_upstream_cli`). eva adds `--eva.*` flags and swaps three classes in
before upstream's module runs (see `openrlhf_eva.solve.dpo_trainer`): `EvaDPOTrainer` for
`DPOTrainer`, `PreferenceDataset` for `RewardDataset` (drops chosen == rejected pairs, carries SPPO
win probabilities) and, for reference-free losses, a `SkippedReference` for the reference `Actor`.

Flags (an upstream flag counts as set when it differs from its upstream default):

--eva.loss {dpo,cdpo,ipo,simpo,orpo,sppo}
    Default: what upstream's flags select, exactly as upstream's DPOLoss does: ipo with
    --model.ipo_enable, else cdpo with a label smoothing > 0, else dpo. Naming a different loss
    than --model.ipo_enable / --model.label_smoothing select is an error.
--eva.beta
    dpo, cdpo, ipo, simpo, sppo. Unset: --model.beta if set; else the paper's value for simpo
    (10) and sppo (0.001), and for dpo (0.05) under --eva.paper_defaults; else --model.beta (0.1).
--eva.gamma        simpo's target margin between the rewards beta * mean log-prob. Unset: 5.
--eva.lam          orpo's odds-ratio weight. Unset: 0.5.
--eva.label_smoothing
    cdpo's epsilon; unset: --model.label_smoothing. Given without --eva.loss it selects cdpo,
    like upstream's flag. cdpo with epsilon 0 is an error (that is plain dpo).
--eva.nll_coef
    Adds nll_coef * mean(-log pi(chosen) / |chosen|) (iterative RPO; eva's multi-iteration DPO)
    inside the eva loss, logged as "loss" and "eva_nll_loss". Upstream's --model.nll_loss_coef adds
    the same term outside the logged "loss" (as "nll_loss"); use one of the two, never both.
    orpo already contains this term with weight 1.
--eva.win_prob_key CHOSEN REJECTED
    sppo only: dataset columns with P(chosen beats the current policy) and P(rejected beats it),
    numbers in [0, 1], in --data.dataset and --eval.dataset. Default: chosen_win_prob rejected_win_prob.
--eva.paper_defaults
    Fill what is unset from PAPER_DEFAULTS (eva paper, its solver table) for dpo, orpo, simpo,
    sppo: beta above, and --adam.lr, --lr_scheduler, --train.max_epochs, --lr_warmup_ratio,
    --train.batch_size, --data.max_len when they are at their upstream defaults. The paper's
    prompt length limit and SPPO's RMSprop have no OpenRLHF flag and are reported, not applied.

--eva.fused_logprobs
    Response log-probs through openrlhf_eva.ops.fused_linear_logprobs inside Actor.forward (policy
    and reference): the [B, T, V] logits and their fp32 copy are never built.

Reference-free losses (simpo, orpo) never load, wrap or run a reference model. Where upstream has
`--model.loss_type` (patches/0006-dpo-add-SimPO-and-ORPO-losses.patch), eva sets it to the eva loss
and upstream `train()` builds no reference; otherwise upstream `train()` builds the policy Actor
first and the reference second, and the second gets a `SkippedReference`. `--model.loss_type`
itself is not an eva flag: choose the loss with --eva.loss.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Optional, Sequence
from unittest import mock

import openrlhf.datasets
import openrlhf.models
import openrlhf.trainer.dpo_trainer

# Imported before the Actor swap below: it binds `Actor` for isinstance checks and would otherwise
# first be imported (by get_strategy) while the swap is in place.
import openrlhf.utils.deepspeed  # noqa: F401

from openrlhf_eva.compat import seams
from openrlhf_eva.solve.dpo_trainer import EvaDPOTrainer, PreferenceDataset, SkippedReference
from openrlhf_eva.solve.losses import LOSS_NAMES, PAPER_DEFAULTS, PreferenceLoss
from openrlhf_eva.upstream import run_upstream_cli

# Losses OpenRLHF's DPOLoss has: their beta defaults to --model.beta's 0.1. That value is on the
# wrong scale for SimPO (length-normalised reward) and SPPO (beta = 1 / eta), which take the paper's.
UPSTREAM_LOSSES = ("dpo", "cdpo", "ipo")

# PAPER_DEFAULTS[loss]["train"] keys that have an OpenRLHF train_dpo flag.
PAPER_TRAIN_FLAGS = {
    "lr": "adam.lr",
    "lr_scheduler": "lr_scheduler",
    "max_epochs": "train.max_epochs",
    "lr_warmup_ratio": "lr_warmup_ratio",
    "train_batch_size": "train.batch_size",
    "max_len": "data.max_len",
}


def add_eva_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("eva solver loss (openrlhf_eva)")
    group.add_argument(
        "--eva.loss",
        choices=LOSS_NAMES,
        default=None,
        help="preference loss (default dpo; ipo/cdpo when --model.ipo_enable/--model.label_smoothing select them)",
    )
    group.add_argument(
        "--eva.beta",
        type=float,
        default=None,
        help="beta of dpo/cdpo/ipo/simpo/sppo (default: --model.beta if set, else the paper's simpo 10, "
        "sppo 0.001 and, with --eva.paper_defaults, dpo 0.05, else --model.beta)",
    )
    group.add_argument("--eva.gamma", type=float, default=None, help="simpo target margin gamma (default 5)")
    group.add_argument("--eva.lam", type=float, default=None, help="orpo odds-ratio weight lambda (default 0.5)")
    group.add_argument(
        "--eva.label_smoothing",
        type=float,
        default=None,
        help="cdpo epsilon in (0, 0.5) (default --model.label_smoothing); selects cdpo when --eva.loss is unset",
    )
    group.add_argument(
        "--eva.nll_coef",
        type=float,
        default=None,
        help="weight of the length-normalised NLL on chosen, inside the logged loss (default 0); "
        "an alternative to --model.nll_loss_coef, not to be combined with it",
    )
    group.add_argument(
        "--eva.win_prob_key",
        nargs=2,
        default=None,
        metavar=("CHOSEN_KEY", "REJECTED_KEY"),
        help="sppo: dataset columns with the chosen/rejected win probabilities "
        "(default chosen_win_prob rejected_win_prob)",
    )
    group.add_argument(
        "--eva.fused_logprobs",
        action="store_true",
        default=False,
        help="compute response log-probs with lm_head fused into the gather (openrlhf_eva.ops): no [B, T, V] "
        "logits in forward or backward; same losses and gradients",
    )
    group.add_argument(
        "--eva.paper_defaults",
        action="store_true",
        default=False,
        help="take unset loss and training hyper-parameters (lr, scheduler, epochs, warmup, batch size, "
        "max_len) from the eva paper's table for dpo/orpo/simpo/sppo",
    )


def resolve_eva_flags(flags: dict, parser: argparse.ArgumentParser) -> PreferenceLoss:
    """Settle the loss and its hyper-parameters from eva's and upstream's flags, in place.

    `flags` is the flat namespace dict; afterwards `eva.<hparam>` holds the value used (None where
    the loss has no such hyper-parameter), which is what `EvaDPOTrainer` builds its loss from.
    """

    def is_set(dest: str) -> bool:
        return flags[dest] != parser.get_default(dest)

    smoothing = flags["eva.label_smoothing"]
    smoothing = flags["model.label_smoothing"] if smoothing is None else smoothing
    implied = "ipo" if flags["model.ipo_enable"] else "cdpo" if smoothing > 0 else "dpo"
    name = flags["eva.loss"] or implied
    if implied != "dpo" and name != implied:
        reason = "--model.ipo_enable" if implied == "ipo" else "a label smoothing > 0"
        parser.error(f"--eva.loss {name} contradicts {reason}, which selects {implied}; drop one of them")

    hparams = {key: flags[f"eva.{key}"] for key in ("beta", "gamma", "lam") if flags[f"eva.{key}"] is not None}
    if name != "orpo" and "beta" not in hparams:
        paper_beta = PAPER_DEFAULTS.get(name, {}).get("loss", {}).get("beta")
        use_paper = name not in UPSTREAM_LOSSES or flags["eva.paper_defaults"]
        if paper_beta is not None and use_paper and not is_set("model.beta"):
            hparams["beta"] = paper_beta
        else:
            hparams["beta"] = flags["model.beta"]
    if name == "cdpo":
        if smoothing == 0:
            parser.error("--eva.loss cdpo needs --eva.label_smoothing (or --model.label_smoothing) > 0")
        hparams["label_smoothing"] = smoothing
    elif flags["eva.label_smoothing"] is not None:
        parser.error(f"--eva.label_smoothing applies to cdpo only, not {name}")

    # patches/0006: upstream's own loss switch, set below from the eva loss (so --model.simpo_gamma etc.
    # would be ignored: refuse them rather than train with something else than asked).
    if "model.loss_type" in flags and flags["model.loss_type"] != "dpo":
        parser.error("--model.loss_type: use --eva.loss, which sets upstream's loss type itself")

    nll_coef = flags["eva.nll_coef"] or 0.0
    if nll_coef > 0 and flags["model.nll_loss_coef"] > 0:
        parser.error("--eva.nll_coef and --model.nll_loss_coef add the same NLL term: set one of them")
    try:
        loss = PreferenceLoss(name, **hparams, nll_coef=nll_coef)
    except ValueError as error:
        parser.error(f"--eva.loss {name}: {error}")

    if name == "sppo":
        flags["eva.win_prob_key"] = flags["eva.win_prob_key"] or ["chosen_win_prob", "rejected_win_prob"]
    elif flags["eva.win_prob_key"] is not None:
        parser.error(f"--eva.win_prob_key applies to sppo only, not {name}")

    if flags["eva.paper_defaults"]:
        if name not in PAPER_DEFAULTS:
            parser.error(f"--eva.paper_defaults: the eva paper gives no hyper-parameters for {name}")
        filled, not_applied = {}, {}
        for key, value in PAPER_DEFAULTS[name]["train"].items():
            dest = PAPER_TRAIN_FLAGS.get(key)
            if dest is not None:
                if not is_set(dest):
                    flags[dest] = filled[dest] = value
            elif (key, value) != ("optimizer", "adamw"):  # upstream's --optim adam is AdamW already
                not_applied[key] = value
        if os.environ.get("RANK", "0") == "0":
            print(f"[openrlhf_eva] --eva.paper_defaults ({name}): set {filled}; no OpenRLHF flag for {not_applied}")

    flags["eva.loss"] = name
    if "model.loss_type" in flags and not loss.needs_reference:
        flags["model.loss_type"] = name  # upstream train() then loads no reference model
    for key in ("beta", "gamma", "lam", "label_smoothing"):
        flags[f"eva.{key}"] = loss.hparams.get(key)
    flags["eva.nll_coef"] = loss.hparams["nll_coef"]
    return loss


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run upstream train_dpo with `argv` (default: sys.argv[1:]) and eva's classes swapped in."""
    parsed = {}  # what the parse hook learns, for the classes that run later inside upstream train()
    actors_built = 0
    upstream_actor = openrlhf.models.Actor
    # Imported here, before any swap, so that its own bindings stay upstream's (None: runs as __main__).
    cli = seams.cli_with_build_parser("openrlhf.cli.train_dpo")

    def add_flags(parser: argparse.ArgumentParser) -> None:
        parsed["parser"] = parser
        add_eva_flags(parser)

    def prepare(args: argparse.Namespace) -> None:
        parsed["loss"] = resolve_eva_flags(vars(args), parsed["parser"])
        if getattr(args, "eva.fused_logprobs"):
            from openrlhf_eva.solve.fused_actor import fused_forward

            # Policy and reference are both Actors: patching the class covers the two forwards.
            patches.enter_context(mock.patch.object(upstream_actor, "forward", fused_forward))

    def policy_actor_or_skipped_reference(*args, **kwargs):
        # Upstream train() builds exactly two Actors, the policy first and the reference second.
        nonlocal actors_built
        actors_built += 1
        if actors_built > 1 and not parsed["loss"].needs_reference:
            return SkippedReference()
        return upstream_actor(*args, **kwargs)

    swaps = {"DPOTrainer": EvaDPOTrainer, "RewardDataset": PreferenceDataset}
    if cli is None or not seams.dpo_reference_free(cli.build_parser()):
        swaps["Actor"] = policy_actor_or_skipped_reference
    # An imported train_dpo (patches/0003) looks these names up in its own module; as `__main__`
    # (runpy) it re-executes its imports, so there they are swapped on the modules they come from.
    homes = {"DPOTrainer": openrlhf.trainer.dpo_trainer, "RewardDataset": openrlhf.datasets, "Actor": openrlhf.models}
    with contextlib.ExitStack() as patches:
        for name, replacement in swaps.items():
            patches.enter_context(mock.patch.object(cli or homes[name], name, replacement))
        run_upstream_cli(
            "openrlhf.cli.train_dpo", argv, add_flags=add_flags, prepare=prepare, prog="openrlhf_eva.train_dpo"
        )


if __name__ == "__main__":
    main()
