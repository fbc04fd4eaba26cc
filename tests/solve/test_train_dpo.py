"""openrlhf_eva.train_dpo: upstream's train_dpo CLI plus eva's solver losses, run through the real
OpenRLHF DPOTrainer and DeepSpeed on CPU (gloo) with the embedded tiny Llama.

Loss values and gradients are checked against an independent computation: the same bf16 weights
run through a plain transformers forward, response log-probs gathered by hand, each paper's formula
written out below (nothing from openrlhf_eva.solve), autograd for the gradient. The trainer's side is
what upstream `fit()` logs for the first step, whose batch is the whole data set: "loss" and
"grad_norm" (DeepSpeed's pre-clipping global norm of the gradient it is about to apply).

One-rank runs happen in this process (DeepSpeed initialises the gloo group once and reuses it);
the 2-rank run uses two subprocesses of `python -m openrlhf_eva.train_dpo`.
"""

import json
import os
import re
import subprocess
import sys
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from openrlhf.models import Actor
from openrlhf.trainer.dpo_trainer import DPOTrainer
from transformers import AutoModelForCausalLM, AutoTokenizer

from openrlhf_eva import compat
from openrlhf_eva import train_dpo
from openrlhf_eva.embedded.model import build_tiny
from openrlhf_eva.upstream import run_upstream_cli

# (prompt, chosen, rejected, P(chosen wins), P(rejected wins)); chosen is the right reversal.
PAIRS = [
    ("rev 4721", "1274", "4721", 0.9, 0.2),
    ("rev 380", "083", "38", 0.7, 0.4),
    ("rev 55102", "20155", "2015", 0.6, 0.1),
    ("rev 96", "69", "96 9", 0.8, 0.5),
]
IDENTICAL_PAIR = ("rev 1234", "4321", "4321", 0.5, 0.5)

EVA_FLAGS = {
    "--eva.loss",
    "--eva.beta",
    "--eva.gamma",
    "--eva.lam",
    "--eva.label_smoothing",
    "--eva.nll_coef",
    "--eva.win_prob_key",
    "--eva.paper_defaults",
    "--eva.fused_logprobs",
}



def write_pairs(path, pairs, win_prob_keys=("chosen_win_prob", "rejected_win_prob")):
    with open(path, "w") as f:
        for prompt, chosen, rejected, chosen_win, rejected_win in pairs:
            row = {
                "prompt": [{"role": "user", "content": prompt}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
            if win_prob_keys:
                row.update(zip(win_prob_keys, (chosen_win, rejected_win)))
            f.write(json.dumps(row) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Policy (seed 0), a different reference (seed 1, so log-ratios are not 0) and data files."""
    root = tmp_path_factory.mktemp("train_dpo")
    return {
        "policy": build_tiny(root / "policy", seed=0),
        "reference": build_tiny(root / "reference", seed=1),
        "pairs": write_pairs(root / "pairs.jsonl", PAIRS),
        "pairs_and_identical": write_pairs(root / "pairs_and_identical.jsonl", PAIRS + [IDENTICAL_PAIR]),
        "pairs_without_win_prob": write_pairs(root / "pairs_without_win_prob.jsonl", PAIRS, win_prob_keys=()),
    }


@pytest.fixture(scope="module", autouse=True)
def one_rank_in_this_process():
    """Rendezvous variables for the in-process runs, unset again afterwards.

    A free port instead of the fixed default, so parallel test sessions do not collide; restored
    at the end so later subprocesses do not inherit a port this process still listens on.
    """
    with pytest.MonkeyPatch.context() as patch:
        for name, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1").items():
            patch.setenv(name, value)
        patch.setenv("MASTER_PORT", str(compat.free_port()))
        yield
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def train_argv(tiny, data, out_dir, *extra):
    """One optimizer step over the 4 pairs at ZeRO 0 (flags given later in `extra` win)."""
    return [
        "--model.model_name_or_path", tiny["policy"],
        "--data.dataset", data,
        "--data.prompt_key", "prompt", "--data.chosen_key", "chosen", "--data.rejected_key", "rejected",
        "--data.apply_chat_template", "--data.max_len", "64",
        "--train.micro_batch_size", "4", "--train.batch_size", "4", "--train.max_epochs", "1",
        "--adam.lr", "1e-3", "--lr_warmup_ratio", "0",
        "--ds.zero_stage", "0", "--ds.param_dtype", "bf16", "--ds.attn_implementation", "sdpa",
        "--ckpt.output_dir", str(out_dir / "model"), "--ckpt.path", str(out_dir / "ckpt"),
        *extra,
    ]  # fmt: skip


@pytest.fixture
def trainer_logs(monkeypatch):
    """Every logs_dict upstream fit() hands to save_logs_and_checkpoints (one per optimizer step)."""
    logs = []
    original = DPOTrainer.save_logs_and_checkpoints

    def record(self, args, global_step, step_bar, logs_dict=None, client_states=None):
        logs.append(dict(logs_dict))
        return original(self, args, global_step, step_bar, logs_dict, client_states)

    monkeypatch.setattr(DPOTrainer, "save_logs_and_checkpoints", record)
    return logs


@pytest.fixture
def actor_calls(monkeypatch):
    """How many OpenRLHF Actors were constructed and how many forwards they ran."""
    calls = Counter()
    original_init, original_forward = Actor.__init__, Actor.forward

    def init(self, *args, **kwargs):
        calls["init"] += 1
        original_init(self, *args, **kwargs)

    def forward(self, *args, **kwargs):
        calls["forward"] += 1
        return original_forward(self, *args, **kwargs)

    monkeypatch.setattr(Actor, "__init__", init)
    monkeypatch.setattr(Actor, "forward", forward)
    return calls


# --- the independent computation --------------------------------------------------------------------


def response_logps(model, tokenizer, pairs):
    """Per pair: summed and mean log-prob of the chosen and the rejected response, shape [4, B].

    Text as the tiny chat template renders it (see openrlhf_eva.embedded.model), one unpadded
    sequence at a time; a response is its answer plus the closing eos.
    """
    rows = []
    for prompt, chosen, rejected, _, _ in pairs:
        prompt_text = f"<|user|>{prompt}<|assistant|>"
        prompt_len = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
        row = []
        for answer in (chosen, rejected):
            ids = torch.tensor([tokenizer(prompt_text + answer + "</s>", add_special_tokens=False)["input_ids"]])
            logits = model(ids).logits.float()
            token_logps = torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
            response = token_logps[prompt_len - 1 :].double()
            row += [response.sum(), response.mean()]
        rows.append(torch.stack(row))
    chosen_sum, chosen_mean, rejected_sum, rejected_mean = torch.stack(rows).T
    return chosen_sum, chosen_mean, rejected_sum, rejected_mean


def paper_loss(name, hp, policy, reference, win_probs):
    """(loss, chosen reward, rejected reward) from the papers' formulas, batch means."""
    pc, mc, pr, mr = policy
    rc, _, rr, _ = reference
    wc, wr = win_probs
    if name in ("dpo", "cdpo", "ipo"):
        h = (pc - pr) - (rc - rr)
        if name == "ipo":  # Azar et al., Eq. 17
            losses = (h - 1 / (2 * hp["beta"])) ** 2
        else:  # Mitchell's cDPO; eps = 0 is Rafailov et al., Eq. 7
            eps = hp.get("label_smoothing", 0.0)
            losses = -(1 - eps) * F.logsigmoid(hp["beta"] * h) - eps * F.logsigmoid(-hp["beta"] * h)
        rewards = hp["beta"] * (pc - rc), hp["beta"] * (pr - rr)
    elif name == "simpo":  # Meng et al.: margin gamma on beta-scaled mean log-probs
        losses = -F.logsigmoid(hp["beta"] * (mc - mr) - hp["gamma"])
        rewards = hp["beta"] * mc, hp["beta"] * mr
    elif name == "orpo":  # Hong et al.: NLL + lambda * -log sigma(log odds ratio), odds = P / (1 - P)
        odds_c, odds_r = mc.exp() / (1 - mc.exp()), mr.exp() / (1 - mr.exp())
        losses = -mc - hp["lam"] * F.logsigmoid(odds_c.log() - odds_r.log())
        rewards = mc, mr
    else:  # sppo, Wu et al.: squared distance of each log-ratio to (P - 1/2) / beta
        losses = 0.5 * ((pc - rc - (wc - 0.5) / hp["beta"]) ** 2 + (pr - rr - (wr - 0.5) / hp["beta"]) ** 2)
        rewards = hp["beta"] * (pc - rc), hp["beta"] * (pr - rr)
    nll = -mc.mean()
    loss = losses.mean() + hp.get("nll_coef", 0.0) * nll
    return loss, rewards[0].mean(), rewards[1].mean()


def independent_step(tiny, name, hp):
    """Loss, rewards and gradient norm of the first step, without OpenRLHF or openrlhf_eva.solve."""
    tokenizer = AutoTokenizer.from_pretrained(tiny["policy"])
    # bf16 weights like the trainer's (--ds.param_dtype bf16), computed in fp32: only activations differ.
    policy = AutoModelForCausalLM.from_pretrained(tiny["policy"], dtype=torch.bfloat16).float()
    reference = AutoModelForCausalLM.from_pretrained(tiny["reference"], dtype=torch.bfloat16).float()
    with torch.no_grad():
        reference_logps = response_logps(reference, tokenizer, PAIRS)
    win_probs = torch.tensor([pair[3:] for pair in PAIRS], dtype=torch.float64).T
    loss, chosen_reward, rejected_reward = paper_loss(
        name, hp, response_logps(policy, tokenizer, PAIRS), reference_logps, win_probs
    )
    loss.backward()
    gradients = {name: p.grad for name, p in policy.named_parameters()}
    grad_norm = torch.sqrt(sum(grad.double().pow(2).sum() for grad in gradients.values()))
    logged = {
        "loss": loss.item(),
        "chosen_reward": chosen_reward.item(),
        "reject_reward": rejected_reward.item(),
        "grad_norm": grad_norm.item(),
    }
    return logged, gradients


def load_saved(path):
    model = AutoModelForCausalLM.from_pretrained(path)
    return {name: tensor.float() for name, tensor in model.state_dict().items()}


# --- flags -------------------------------------------------------------------------------------------


def test_help_lists_every_upstream_flag_plus_eva_flags(capsys):
    with pytest.raises(SystemExit) as upstream_exit:
        run_upstream_cli("openrlhf.cli.train_dpo", ["--help"])
    upstream_help = capsys.readouterr().out
    with pytest.raises(SystemExit) as eva_exit:
        train_dpo.main(["--help"])
    eva_help = capsys.readouterr().out
    assert upstream_exit.value.code == eva_exit.value.code == 0

    upstream_flags = set(re.findall(r"--[a-z_][\w.]*", upstream_help))
    eva_help_flags = set(re.findall(r"--[a-z_][\w.]*", eva_help))
    assert {"--model.beta", "--model.ipo_enable", "--ds.zero_stage", "--muon.no_nesterov"} <= upstream_flags
    assert len(upstream_flags) > 80
    assert eva_help_flags - upstream_flags == EVA_FLAGS
    assert upstream_flags <= eva_help_flags
    assert "usage: openrlhf_eva.train_dpo" in eva_help


class StopAfterParsing(Exception):
    pass


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], {"eva.loss": "dpo", "eva.beta": 0.1, "eva.nll_coef": 0.0, "eva.gamma": None, "eva.win_prob_key": None}),
        (["--model.beta", "0.3"], {"eva.loss": "dpo", "eva.beta": 0.3}),
        (["--model.ipo_enable", "--model.label_smoothing", "0.1"], {"eva.loss": "ipo", "eva.label_smoothing": None}),
        (["--model.label_smoothing", "0.2"], {"eva.loss": "cdpo", "eva.label_smoothing": 0.2, "eva.beta": 0.1}),
        (["--eva.label_smoothing", "0.1", "--eva.beta", "0.4"], {"eva.loss": "cdpo", "eva.beta": 0.4}),
        (["--eva.loss", "simpo"], {"eva.beta": 10.0, "eva.gamma": 5.0, "eva.lam": None}),
        (["--eva.loss", "simpo", "--model.beta", "2", "--eva.gamma", "1"], {"eva.beta": 2.0, "eva.gamma": 1.0}),
        (["--eva.loss", "orpo"], {"eva.lam": 0.5, "eva.beta": None}),
        (["--eva.loss", "sppo"], {"eva.beta": 0.001, "eva.win_prob_key": ["chosen_win_prob", "rejected_win_prob"]}),
        (["--eva.nll_coef", "0.2"], {"eva.loss": "dpo", "eva.nll_coef": 0.2}),
        (
            ["--eva.paper_defaults"],
            {"eva.beta": 0.05, "adam.lr": 5e-7, "lr_scheduler": "cosine", "train.max_epochs": 2,
             "lr_warmup_ratio": 0.1, "train.batch_size": 8, "data.max_len": 2048},
        ),
        (
            ["--eva.paper_defaults", "--eva.loss", "simpo", "--adam.lr", "1e-6", "--model.beta", "3"],
            {"eva.beta": 3.0, "eva.gamma": 5.0, "adam.lr": 1e-6, "train.batch_size": 32, "train.max_epochs": 1},
        ),
    ],
)  # fmt: skip
def test_flag_resolution(monkeypatch, argv, expected):
    # Through the real upstream parser; stopped right after eva's resolution, before anything trains.
    resolve = train_dpo.resolve_eva_flags

    def resolve_then_stop(flags, parser):
        resolve(flags, parser)
        raise StopAfterParsing(dict(flags))

    monkeypatch.setattr(train_dpo, "resolve_eva_flags", resolve_then_stop)
    with pytest.raises(StopAfterParsing) as stop:
        train_dpo.main(argv)
    flags = stop.value.args[0]
    assert {key: flags[key] for key in expected} == expected


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--eva.loss", "kto"], "invalid choice: 'kto'"),
        (["--eva.loss", "simpo", "--model.ipo_enable"], "--eva.loss simpo contradicts --model.ipo_enable"),
        (["--eva.loss", "dpo", "--model.label_smoothing", "0.1"], "contradicts a label smoothing > 0"),
        (["--eva.gamma", "1"], "unknown hyper-parameter(s) ['gamma']"),
        (["--eva.loss", "cdpo"], "needs --eva.label_smoothing"),
        (["--eva.loss", "cdpo", "--eva.label_smoothing", "0.7"], "label_smoothing must be in [0, 0.5)"),
        (["--eva.beta", "-1"], "beta must be > 0"),
        (["--eva.nll_coef", "0.1", "--model.nll_loss_coef", "0.1"], "add the same NLL term"),
        (["--eva.win_prob_key", "a", "b"], "--eva.win_prob_key applies to sppo only"),
        (["--eva.loss", "ipo", "--eva.paper_defaults"], "no hyper-parameters for ipo"),
        (["--model.ipo_enable", "--eva.label_smoothing", "0.1"], "--eva.label_smoothing applies to cdpo only"),
    ],
)
def test_bad_flags_are_argparse_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        train_dpo.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# --- training through the real trainer ---------------------------------------------------------------

LOSS_RUNS = {
    # name: (flags, hyper-parameters they resolve to, ZeRO stage)
    "dpo": (["--model.beta", "0.2", "--eva.nll_coef", "0.3"], {"beta": 0.2, "nll_coef": 0.3}, 0),
    "cdpo": (["--eva.loss", "cdpo", "--eva.beta", "0.3", "--eva.label_smoothing", "0.2"],
             {"beta": 0.3, "label_smoothing": 0.2}, 0),
    "ipo": (["--model.ipo_enable", "--model.beta", "0.5"], {"beta": 0.5}, 0),
    "simpo": (["--eva.loss", "simpo"], {"beta": 10.0, "gamma": 5.0}, 2),
    "orpo": (["--eva.loss", "orpo", "--eva.lam", "0.7"], {"lam": 0.7}, 0),
    "sppo": (["--eva.loss", "sppo", "--eva.beta", "0.1"], {"beta": 0.1}, 0),
}  # fmt: skip


@pytest.mark.parametrize("name", list(LOSS_RUNS))
def test_first_step_matches_independent_computation(
    tiny, tmp_path, capsys, trainer_logs, actor_calls, name
):
    flags, hp, zero_stage = LOSS_RUNS[name]
    argv = train_argv(tiny, tiny["pairs_and_identical"], tmp_path, "--ref.model_name_or_path", tiny["reference"],
                      "--ds.zero_stage", str(zero_stage), *flags)  # fmt: skip
    if name == "orpo":  # with an eval set: upstream evaluate() must not touch the skipped reference either
        argv += ["--eval.dataset", tiny["pairs"], "--eval.split", "train"]
    train_dpo.main(argv)

    # The identical pair is dropped (and counted), so the one step saw exactly PAIRS.
    assert "dropped 1 of 5 preference pairs with chosen == rejected" in capsys.readouterr().out
    assert len(trainer_logs) == 1
    logged = trainer_logs[0]
    expected, gradients = independent_step(tiny, name, hp)
    # bf16 activations in the trainer against fp32 here, on the same bf16 weights (measured: < 0.5%).
    for key in ("loss", "grad_norm", "chosen_reward", "reject_reward"):
        assert logged[key] == pytest.approx(expected[key], rel=1e-2, abs=2e-3), key
    assert logged["eva_preference_loss"] <= logged["loss"]
    if name == "orpo":
        assert {"eva_orpo_nll", "eva_orpo_or_loss", "eva_orpo_log_odds_ratio"} <= set(logged)
    if name == "dpo":
        assert logged["eva_nll_loss"] > 0

    # Reference-free losses construct one Actor (the policy) and run only its forwards: simpo one
    # (the step), orpo two (the step and the end-of-epoch evaluation). The others: policy + reference.
    if name in ("simpo", "orpo"):
        assert actor_calls == {"init": 1, "forward": 1 if name == "simpo" else 2}
    else:
        assert actor_calls == {"init": 2, "forward": 2}

    saved = load_saved(tmp_path / "model")
    initial = load_saved(tiny["policy"])
    # Adam's first step moves each weight by lr * sign(gradient) (bias-corrected m / sqrt(v) is
    # g / |g|; clipping only rescales g), so the saved model shows the sign of every gradient element
    # the trainer applied. Compared where the independent gradient is clearly nonzero and the saved
    # bf16 can show a 1e-3 step (|w| < 0.1: not the RMSNorm weights at 1.0).
    agree = checked = 0
    for key, grad in gradients.items():
        clear = (grad.abs() > 1e-2 * grad.abs().max()) & (initial[key].abs() < 0.1)
        step = (saved[key] - initial[key])[clear]
        agree += (step.sign() == -grad[clear].sign()).sum().item()
        checked += clear.sum().item()
    assert checked > 0.5 * sum(grad.numel() for grad in gradients.values())
    assert agree >= 0.9999 * checked


def test_default_loss_reproduces_upstream_dpo(tiny, tmp_path, trainer_logs):
    # Two steps (micro batch 2), so the second step also checks the update upstream applied.
    extra = ["--train.micro_batch_size", "2", "--train.batch_size", "2", "--ref.model_name_or_path", tiny["reference"]]
    run_upstream_cli("openrlhf.cli.train_dpo", train_argv(tiny, tiny["pairs"], tmp_path / "upstream", *extra))
    upstream_logs = list(trainer_logs)
    trainer_logs.clear()
    train_dpo.main(train_argv(tiny, tiny["pairs"], tmp_path / "eva", *extra))

    assert len(upstream_logs) == len(trainer_logs) == 2
    for upstream_step, eva_step in zip(upstream_logs, trainer_logs):
        assert {key: eva_step[key] for key in upstream_step} == upstream_step
        assert set(eva_step) - set(upstream_step) == {"eva_preference_loss"}
    upstream_model, eva_model = load_saved(tmp_path / "upstream" / "model"), load_saved(tmp_path / "eva" / "model")
    assert all(torch.equal(upstream_model[key], eva_model[key]) for key in upstream_model)


def test_fused_actor_forward_matches_upstream_values_and_gradients(tiny):
    from openrlhf_eva.solve.fused_actor import fused_forward

    actor = Actor(tiny["policy"], attn_implementation="sdpa", param_dtype="bf16")
    actor.model.float()  # fp32 weights: the two paths then differ only by summation order
    ids = torch.randint(9, 45, (3, 12), generator=torch.Generator().manual_seed(0))  # never the global RNG
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding, as the trainers batch prompts
    action_mask = torch.ones(3, 5)
    grads = []
    for forward in (Actor.forward, fused_forward):
        actor.model.zero_grad()
        logps, _ = forward(actor, ids, action_mask=action_mask, attention_mask=mask, return_output=True)
        weights = torch.linspace(0.5, 2.0, logps.numel()).view_as(logps)  # a per-token upstream gradient
        (logps * weights).sum().backward()
        grads.append((logps.detach(), {n: p.grad.clone() for n, p in actor.model.named_parameters()}))
    (up, up_grads), (fused, fused_grads) = grads
    torch.testing.assert_close(fused, up, rtol=1e-5, atol=1e-5)
    for name in up_grads:
        # fp32 summation order: errors scale with the tensor's largest entry (measured 4e-7 of it)
        scale = float(up_grads[name].abs().max())
        torch.testing.assert_close(fused_grads[name], up_grads[name], rtol=1e-4, atol=1e-5 * scale + 1e-7, msg=name)


def test_fused_logprobs_flag_gives_the_same_training_step(tiny, tmp_path, trainer_logs):
    extra = ["--ref.model_name_or_path", tiny["reference"]]
    train_dpo.main(train_argv(tiny, tiny["pairs"], tmp_path / "unfused", *extra))
    unfused = dict(trainer_logs[0])
    trainer_logs.clear()
    train_dpo.main(train_argv(tiny, tiny["pairs"], tmp_path / "fused", *extra, "--eva.fused_logprobs"))
    fused = trainer_logs[0]
    for key in ("loss", "grad_norm", "chosen_reward", "reject_reward"):
        assert fused[key] == pytest.approx(unfused[key], rel=2e-2, abs=1e-4), key
    assert Actor.forward.__name__ == "forward"  # the patch was undone after the run


def test_sppo_without_win_prob_columns_names_the_missing_key(tiny, tmp_path):
    argv = train_argv(tiny, tiny["pairs_without_win_prob"], tmp_path, "--eva.loss", "sppo")
    with pytest.raises(ValueError, match=r"win-probability column\(s\) \['chosen_win_prob', 'rejected_win_prob'\]"):
        train_dpo.main(argv)


@pytest.mark.slow
def test_deepspeed_launcher_two_rank_gloo_sppo_zero2(tiny, tmp_path):
    """`deepspeed --module openrlhf_eva.train_dpo` on 2 CPU ranks (gloo), ZeRO 2, SPPO with renamed
    win-prob columns, two identical pairs."""
    keys = ("p_chosen", "p_rejected")
    data = write_pairs(tmp_path / "pairs.jsonl", PAIRS + [IDENTICAL_PAIR] + PAIRS + [IDENTICAL_PAIR], keys)
    argv = train_argv(tiny, data, tmp_path, "--train.micro_batch_size", "2", "--ds.zero_stage", "2",
                      "--eva.loss", "sppo", "--eva.win_prob_key", *keys)  # fmt: skip
    # The launcher sets each rank's RANK/LOCAL_RANK/WORLD_SIZE; drop this process's one-rank values.
    env = {name: value for name, value in os.environ.items()
           if name not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}  # fmt: skip
    launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2",
                "--master_port", str(compat.free_port()), "--module", "openrlhf_eva.train_dpo"]  # fmt: skip
    run = subprocess.run([*launcher, *argv], env=env, capture_output=True, text=True, timeout=400)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]

    assert "dist_world_size=2" in output
    assert output.count("exits successfully") == 2
    # Both ranks drop the pairs; only rank 0 prints the count.
    assert output.count("dropped 2 of 10 preference pairs with chosen == rejected") == 1
    assert output.count("PreferenceLoss('sppo', nll_coef=0, beta=0.001)") == 1
    saved, initial = load_saved(tmp_path / "model"), load_saved(tiny["policy"])
    assert any(not torch.equal(saved[key], initial[key]) for key in saved)
