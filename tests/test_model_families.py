"""The model families people train, each as a tiny random model built from its transformers config
(nothing downloaded; the embedded char tokenizer, whose ~45 ids fit inside every model's 64-row
vocabulary), through `--eva.fused_logprobs` and the trainers.

For every family: the fused forward (openrlhf_eva.solve.fused_actor) against upstream's real
`Actor.forward`, log-probs and every parameter's gradient in fp32; which path it takes (printed
once per Actor); `train_rloo` for two steps and one creator step (`openrlhf_eva.evolve`) with it.
For Llama, Gemma-2 and Qwen2: one `train_dpo --eva.fused_logprobs` step for every loss, whose
every forward is checked against upstream's on the same batch; and Gemma-2 at ZeRO-3, fused
against unfused.

The configs make the families' differences matter: weights drawn with std 0.2 give logits of a
few nats, Gemma's soft cap (3.0) bends them, Cohere's logit_scale and Granite's logits_scaling
shrink them; `test_post_processing_is_not_a_no_op` proves a fused path without them would fail.
Trainings run in this process on one gloo rank, each with its own free port.
"""

import json
from pathlib import Path

import pytest
import torch
import transformers
from openrlhf.models import Actor

import openrlhf_eva.embedded as embedded
from openrlhf_eva import compat
from openrlhf_eva import evolve, train_dpo, train_rloo, train_rloo_trainer
from openrlhf_eva.compat import leave_no_process_group
from openrlhf_eva.creator import write_jsonl
from openrlhf_eva.embedded.data import make_seeds
from openrlhf_eva.embedded.model import build_tokenizer
from openrlhf_eva.ops import fused_linear_logprobs
from openrlhf_eva.solve import fused_actor

EMBEDDED = Path(embedded.__file__).parent
COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.2,
              pad_token_id=0, bos_token_id=1, eos_token_id=2)  # the char tokenizer's specials
# name: (config class, overrides). Tied embeddings: qwen2, gemma2, gemma3_text, cohere (their
# defaults or set here); untied: the others.
FAMILIES = {
    "llama": ("LlamaConfig", {}),
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", {"head_dim": 8}),
    "mistral": ("MistralConfig", {"head_dim": 8, "sliding_window": None}),
    "gemma2": ("Gemma2Config", {"head_dim": 8, "final_logit_softcapping": 3.0, "query_pre_attn_scalar": 8,
                                "sliding_window": 16}),
    "gemma3_text": ("Gemma3TextConfig", {"head_dim": 8, "final_logit_softcapping": 3.0, "query_pre_attn_scalar": 8,
                                         "sliding_window": 16}),
    "phi3": ("Phi3Config", {}),
    "cohere": ("CohereConfig", {"logit_scale": 0.25}),
    "granite": ("GraniteConfig", {"logits_scaling": 4.0, "embedding_multiplier": 2.0, "residual_multiplier": 0.5,
                                  "attention_multiplier": 0.125}),
    "qwen2_moe": ("Qwen2MoeConfig", {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                                     "shared_expert_intermediate_size": 32}),
    # a family fused_actor has not read: must take upstream's forward
    # (no dropout: a training forward must be repeatable for the comparisons)
    "gpt2": ("GPT2Config", {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 128, "resid_pdrop": 0.0,
                            "embd_pdrop": 0.0, "attn_pdrop": 0.0}),
}
FUSED = [name for name in FAMILIES if name != "gpt2"]
# (lora target modules, path): LoRA in the backbone runs fused; LoRA on lm_head goes upstream.
LORA = {"lora": (["q_proj", "v_proj"], "fused"), "lora_on_lm_head": (["q_proj", "lm_head"], "upstream")}
# Both paths in fp32 differ by summation order only; measured max abs error 1e-6 on log-probs
# and 8e-7 relative on gradients, bounds 20x that.
LOGP_ATOL = 2e-5
GRAD_RTOL = 2e-5



@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Each family saved with save_pretrained next to the char tokenizer: name -> path."""
    root = tmp_path_factory.mktemp("families")
    tokenizer = build_tokenizer()
    paths = {}
    for name, (config_class, overrides) in FAMILIES.items():
        config = getattr(transformers, config_class)(**{**COMMON, **overrides})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = transformers.AutoModelForCausalLM.from_config(config)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


@pytest.fixture
def one_rank(monkeypatch):
    """One gloo rank in this process on a fresh free port; no process group left behind."""
    for name, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(compat.free_port())).items():
        monkeypatch.setenv(name, value)
    leave_no_process_group()  # a stale DeepSpeed world group from an earlier module
    yield
    leave_no_process_group()


def build_actor(path: str, variant: str | None = None) -> Actor:
    """The real OpenRLHF Actor (LoRA through its own lora_rank), in fp32, LoRA B made nonzero."""
    lora = dict(lora_rank=4, lora_alpha=8, target_modules=LORA[variant][0]) if variant else {}
    actor = Actor(path, attn_implementation="sdpa", param_dtype="bf16", **lora)
    actor.model.float()
    if variant:  # peft starts lora_B at 0, which would make the adapters invisible in the forward
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            for name, param in actor.model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.3)
    return actor


def forward_and_grads(actor: Actor, forward):
    """Response log-probs, MoE aux loss and every parameter's gradient for one left-padded batch."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(9, 45, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding, as the trainers batch prompts
    actor.model.zero_grad()
    logps, output = forward(actor, ids, action_mask=torch.ones(3, 5), attention_mask=mask, return_output=True)
    aux = output["aux_loss"] if "aux_loss" in output else None
    weights = torch.linspace(0.5, 2.0, logps.numel()).view_as(logps)  # a per-token upstream gradient
    ((logps * weights).sum() + (0.1 * aux if aux is not None else 0.0)).backward()
    grads = {n: p.grad.clone() for n, p in actor.model.named_parameters() if p.requires_grad}
    return logps.detach(), aux, grads


@pytest.mark.parametrize("name, variant", [(name, None) for name in FAMILIES] + [("llama", v) for v in LORA])
def test_fused_forward_matches_upstream(models, capsys, name, variant):
    actor = build_actor(models[name], variant)
    up_logps, up_aux, up_grads = forward_and_grads(actor, Actor.forward)
    capsys.readouterr()
    logps, aux, grads = forward_and_grads(actor, fused_actor.fused_forward)
    path = "upstream" if name == "gpt2" else LORA[variant][1] if variant else "fused"
    said = [line for line in capsys.readouterr().out.splitlines() if "--eva.fused_logprobs" in line]
    assert len(said) == 1 and ("-> fused" if path == "fused" else "-> upstream") in said[0], said
    if variant == "lora_on_lm_head":
        assert "lm_head is a peft.tuners.lora.layer.Linear" in said[0]

    err = (logps - up_logps).abs().max().item()
    assert err <= LOGP_ATOL, err
    assert (aux is None) == (up_aux is None) == (name != "qwen2_moe")
    if aux is not None:
        torch.testing.assert_close(aux, up_aux, rtol=1e-5, atol=1e-6)
    assert set(grads) == set(up_grads) and all(g.abs().max() > 0 for n, g in up_grads.items() if "lora_A" not in n)
    for param, up in up_grads.items():
        scale = up.abs().max().item()
        assert (grads[param] - up).abs().max().item() <= GRAD_RTOL * scale + 1e-12, param
    print(f"{name}{'+' + variant if variant else ''}: {said[0].split(': ', 1)[1]}; max |d logp| {err:.1e}")


@pytest.mark.parametrize("name", ["gemma2", "gemma3_text", "cohere", "granite"])
def test_post_processing_is_not_a_no_op(models, name):
    """The fused op without the family's post-processing would be far off: the test above can fail."""
    actor = build_actor(models[name])
    causal, backbone, head, (scale, softcap) = fused_actor.model_plan(actor.model)
    assert (softcap is not None) == name.startswith("gemma") and (scale != 1.0) == (name in ("cohere", "granite"))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(9, 45, (2, 10), generator=g)
    labels = torch.roll(ids, -1, 1)
    with torch.no_grad():
        hidden = backbone(ids)[0]
        upstream = torch.log_softmax(causal(ids).logits.float(), -1).gather(-1, labels[..., None])[..., 0]
        exact = fused_linear_logprobs(hidden, head.weight, labels, logit_scale=scale, softcap=softcap)
        plain = fused_linear_logprobs(hidden, head.weight, labels)
    assert (exact - upstream).abs().max() <= LOGP_ATOL
    assert (plain - upstream).abs().max() > 0.05


# --- trainings ----------------------------------------------------------------------------------


@pytest.fixture
def checked_fused_forward(monkeypatch):
    """Every fused forward a trainer runs, also run through upstream's Actor.forward (no grad) on
    the same inputs; the largest log-prob difference is recorded. The trainers import
    fused_forward when they start, so patching the module attribute reaches them."""
    diffs = []
    fused = fused_actor.fused_forward

    def checked(self, sequences, action_mask=None, attention_mask=None, *args, **kwargs):
        result = fused(self, sequences, action_mask, attention_mask, *args, **kwargs)
        with torch.no_grad():
            expected = fused_actor.upstream_forward(self, sequences, action_mask, attention_mask, *args, **kwargs)
        logps = result[0] if isinstance(result, tuple) else result
        expected = expected[0] if isinstance(expected, tuple) else expected
        diffs.append((logps.detach() - expected).abs().max().item())
        return result

    monkeypatch.setattr(fused_actor, "fused_forward", checked)
    return diffs


# bf16 activations: the fused op rounds the logits once (to bf16, as the lm_head does), and its
# soft cap runs in fp32 where upstream's runs in bf16. Measured max 0.03 nats per token.
BF16_LOGP_ATOL = 0.125
PAIRS = [("rev 4721", "1274", "4721"), ("rev 380", "083", "38"), ("rev 55102", "20155", "2015"),
         ("rev 96", "69", "96 9")]
DPO_LOSSES = {
    "dpo": ["--model.beta", "0.2"],
    "cdpo": ["--eva.loss", "cdpo", "--eva.label_smoothing", "0.2"],
    "ipo": ["--model.ipo_enable"],
    "simpo": ["--eva.loss", "simpo"],
    "orpo": ["--eva.loss", "orpo"],
    "sppo": ["--eva.loss", "sppo"],
}


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    rows = [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}], "chosen_win_prob": 0.8, "rejected_win_prob": 0.3}
            for p, c, r in PAIRS]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def dpo_argv(model: str, pairs: str, out: Path, *extra: str) -> list[str]:
    return [
        "--model.model_name_or_path", model, "--data.dataset", pairs,
        "--data.prompt_key", "prompt", "--data.chosen_key", "chosen", "--data.rejected_key", "rejected",
        "--data.apply_chat_template", "--data.max_len", "64",
        "--train.micro_batch_size", "4", "--train.batch_size", "4", "--train.max_epochs", "1",
        "--adam.lr", "1e-3", "--lr_warmup_ratio", "0", "--ds.zero_stage", "0", "--ds.param_dtype", "bf16",
        "--ds.attn_implementation", "sdpa", "--ckpt.output_dir", str(out / "model"), "--ckpt.path", str(out / "ckpt"),
        *extra,
    ]  # fmt: skip


@pytest.fixture
def dpo_logs(monkeypatch):
    """Every logs_dict upstream DPOTrainer.fit() saves (one per optimizer step)."""
    from openrlhf.trainer.dpo_trainer import DPOTrainer

    logs = []
    original = DPOTrainer.save_logs_and_checkpoints

    def record(self, args, global_step, step_bar, logs_dict=None, client_states=None):
        logs.append(dict(logs_dict))
        return original(self, args, global_step, step_bar, logs_dict, client_states)

    monkeypatch.setattr(DPOTrainer, "save_logs_and_checkpoints", record)
    return logs


@pytest.mark.slow
def test_train_dpo_zero3_fused_step_matches_unfused(models, pairs_file, tmp_path, monkeypatch, dpo_logs, capsys):
    """ZeRO-3 partitions lm_head (here tied to the embedding, Gemma-2): the fused op runs as
    lm_head's forward, so DeepSpeed gathers the weight for it and takes its gradient."""
    runs = {}
    for fused in (False, True):
        for name, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                                MASTER_PORT=str(compat.free_port())).items():
            monkeypatch.setenv(name, value)
        leave_no_process_group()
        extra = ["--ds.zero_stage", "3", *(["--eva.fused_logprobs"] if fused else [])]
        train_dpo.main(dpo_argv(models["gemma2"], pairs_file, tmp_path / str(fused), *extra))
        leave_no_process_group()
        runs[fused] = dpo_logs.pop()
    assert "Gemma2ForCausalLM -> fused lm_head + log-probs" in capsys.readouterr().out
    for key in ("loss", "grad_norm", "chosen_reward", "reject_reward"):
        assert runs[True][key] == pytest.approx(runs[False][key], rel=2e-2, abs=1e-4), key


@pytest.mark.slow
@pytest.mark.parametrize("loss", list(DPO_LOSSES))
@pytest.mark.parametrize("name", ["llama", "gemma2", "qwen2"])
def test_train_dpo_step_with_fused_logprobs(models, pairs_file, tmp_path, one_rank, checked_fused_forward, dpo_logs,
                                            capsys, name, loss):
    train_dpo.main(dpo_argv(models[name], pairs_file, tmp_path, "--eva.fused_logprobs", *DPO_LOSSES[loss]))
    reference_free = loss in ("simpo", "orpo")
    # policy and (unless reference-free) reference: one forward each, both fused and checked
    assert len(checked_fused_forward) == (1 if reference_free else 2)
    assert max(checked_fused_forward) <= BF16_LOGP_ATOL, checked_fused_forward
    assert "-> fused lm_head + log-probs" in capsys.readouterr().out
    print(f"{name} {loss}: max |d logp| per token, fused vs upstream (bf16): {max(checked_fused_forward):.3f}")
    assert len(dpo_logs) == 1 and torch.isfinite(torch.tensor([dpo_logs[0]["loss"], dpo_logs[0]["grad_norm"]])).all()
    assert dpo_logs[0]["grad_norm"] > 0


def rloo_argv(model: str, seeds: str, out: Path) -> list[str]:
    """Two steps of 4 prompts x 4 samples, 8-token responses, KL to a reference (so both fuse)."""
    return [
        "--actor.model_name_or_path", model, "--data.prompt_dataset", seeds, "--data.input_key", "prompt",
        "--data.label_key", "label", "--data.apply_chat_template", "--data.max_len", "48",
        "--reward.remote_url", str(EMBEDDED / "reward_func.py"),
        "--rollout.batch_size", "4", "--rollout.n_samples_per_prompt", "4", "--rollout.max_new_tokens", "8",
        "--rollout.micro_batch_size", "16", "--train.batch_size", "16", "--train.micro_batch_size", "8",
        "--actor.adam.lr", "1e-3", "--actor.lr_warmup_ratio", "0", "--algo.kl.init_coef", "0.01",
        "--ds.zero_stage", "0", "--ds.attn_implementation", "sdpa", "--eva.total_prompts", "8",
        "--eva.fused_logprobs", "--ckpt.output_dir", str(out / "model"), "--ckpt.path", str(out / "ckpt"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def seeds_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("seeds") / "seeds.jsonl"
    write_jsonl(path, make_seeds(8, seed=0))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_train_rloo_two_steps_with_fused_logprobs(models, seeds_file, tmp_path, one_rank, checked_fused_forward,
                                                  name):
    trainer = train_rloo_trainer.OnlineTrainer(train_rloo.parse_args(rloo_argv(models[name], seeds_file, tmp_path)))
    trainer.fit()
    metrics = [json.loads(line) for line in (tmp_path / "model" / "eva_metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(torch.isfinite(torch.tensor([m["policy_loss"], m["actor_grad_norm"], m["kl"]])).all() for m in metrics)
    # per step: old log-probs, the reference's, 2 training micro-batches (gpt2's go upstream unchanged)
    assert len(checked_fused_forward) == 2 * 4
    assert max(checked_fused_forward) <= (0.0 if name == "gpt2" else BF16_LOGP_ATOL), checked_fused_forward
    print(f"{name} rloo: max |d logp| per token, fused vs upstream (bf16): {max(checked_fused_forward):.3f}")


@pytest.mark.parametrize("name", FAMILIES)
def test_creator_step(models, seeds_file, tmp_path, name):
    """`python -m openrlhf_eva.evolve` (HF generate, the embedded reward and task evolver)."""
    summary = evolve.main([
        "--pretrain", models[name], "--prompt_data", seeds_file, "--output_dir", str(tmp_path),
        "--data.label_key", "label", "--data.apply_chat_template", "--max_prompt_len", "32",
        "--n_samples_per_prompt", "4", "--max_new_tokens", "6", "--shard_size", "8",
        "--reward.remote_url", str(EMBEDDED / "reward_func.py"), "--eva.evolver", "task",
        "--eva.evolver_path", str(EMBEDDED / "evolve_func.py"), "--eva.sample_fraction", "0.5",
    ])  # fmt: skip
    counts = summary["counts"]
    assert counts["responses/sampled"] == 8 * 4
    assert counts["prompts/in"] == counts["prompts/pairs"] + counts["prompts/ties"] + counts["prompts/rejected"] == 8
    next_prompts = (tmp_path / "next_prompts.jsonl").read_text().splitlines()
    assert len(next_prompts) == 8
