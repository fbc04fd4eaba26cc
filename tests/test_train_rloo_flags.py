"""train_rloo's upstream flags that switch something inside a run, each in a short run in this process.

The parity contract itself (every upstream train_ppo_ray flag implemented or refused by name) is
tests/test_train_rloo.py::test_every_upstream_flag_is_implemented_with_its_default_or_refused_by_name.
Every run here is one or two steps on the untrained tiny Llama (test_train_rloo's fixture), checked
against one plain run: the same seed gives the same first rollouts, so a flag's effect shows as a
difference from it (or as none, where a flag must change nothing).
"""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openrlhf_eva.creator import write_jsonl
from openrlhf_eva.embedded.data import make_seeds
from openrlhf_eva.solve import online
from openrlhf_eva.train_rloo import parse_args
from openrlhf_eva.train_rloo_flags import read_prompt_datasets


def load_sibling(name: str):
    """A module beside this file, by path: tests/ is not a package (see CONTRIBUTING.md)."""
    spec = importlib.util.spec_from_file_location(f"sibling_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_rloo_tests = load_sibling("test_train_rloo")
tiny_run = train_rloo_tests.tiny_run  # the fixture: the tiny Llama, 8 seeds, one rank in this process
run_in_process, read_metrics = train_rloo_tests.run_in_process, train_rloo_tests.read_metrics

# pg without a reference, 16 samples a step in 2 micro-batches; "4" prompts: one step, "8": two
PLAIN = ["--algo.kl.init_coef", "0", "--ds.zero_stage", "0", "--train.batch_size", "16",
         "--train.micro_batch_size", "8"]


def recorded_run(monkeypatch, run, out, *flags):
    """run_in_process, keeping what compute_advantages received each step (rewards after penalties)."""
    seen = []

    def recording(experience, rewards, args, kl_coef):
        seen.append((rewards.clone(), experience.response_length.clone(), experience.truncated.clone()))
        return compute_advantages(experience, rewards, args, kl_coef)

    compute_advantages = online.compute_advantages
    monkeypatch.setattr(online, "compute_advantages", recording)
    trainer = run_in_process(run, out, *PLAIN, *flags)
    monkeypatch.undo()
    return trainer, read_metrics(out), seen


@pytest.fixture(scope="module")
def plain_run(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain")
    with pytest.MonkeyPatch.context() as patch:
        trainer, metrics, seen = recorded_run(patch, tiny_run, out, "--eva.total_prompts", "8")
    initial = {name: weight.clone() for name, weight in load_file(Path(tiny_run.model) / "model.safetensors").items()}
    return metrics, seen, initial


def test_gradient_checkpointing_and_full_determinism_give_the_same_step(tiny_run, plain_run, tmp_path):
    try:
        trainer = run_in_process(tiny_run, tmp_path, *PLAIN, "--eva.total_prompts", "4",
                                 "--actor.gradient_checkpointing_enable", "--train.full_determinism_enable")
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)  # process-wide: later tests must not inherit it
    assert trainer.actor.model.module.is_gradient_checkpointing
    step, plain = read_metrics(tmp_path)[0], plain_run[0][0]
    for key in ("policy_loss", "actor_grad_norm", "reward_mean"):
        assert step[key] == pytest.approx(plain[key], rel=1e-5, abs=1e-7), key


def test_entropy_coef_joins_the_loss_and_logs_the_entropy(tiny_run, plain_run, tmp_path):
    trainer = run_in_process(tiny_run, tmp_path, *PLAIN, "--eva.total_prompts", "4", "--actor.entropy_coef", "0.5")
    step, plain = read_metrics(tmp_path)[0], plain_run[0][0]
    assert 0 < step["entropy_loss"] < math.log(len(trainer.tokenizer))  # nats per token, below uniform over the vocabulary
    assert step["policy_loss"] == pytest.approx(plain["policy_loss"], rel=1e-5)  # same rollouts, same policy
    assert step["actor_grad_norm"] != pytest.approx(plain["actor_grad_norm"], rel=1e-3)  # the bonus moved it
    assert "entropy_loss" not in plain


def test_overlong_and_stop_properly_penalties_shape_the_rewards_as_upstream(tiny_run, plain_run, tmp_path,
                                                                             monkeypatch):
    """DAPO: -min(length - (budget - buffer), buffer) / buffer * factor where positive; then ProRL: a
    truncated sample's reward becomes the (negative) coefficient. Budget: --rollout.max_new_tokens 8."""
    _, _, seen = recorded_run(monkeypatch, tiny_run, tmp_path, "--eva.total_prompts", "4",
                              "--reward.overlong_buffer_len", "4", "--reward.overlong_penalty_factor", "0.5",
                              "--reward.stop_properly_penalty_coef", "-0.25")
    penalized, lengths, truncated = seen[0]
    raw, plain_lengths, plain_truncated = plain_run[1][0]
    assert torch.equal(lengths, plain_lengths) and torch.equal(truncated, plain_truncated)
    exceed = (lengths - (8 - 4)).clamp(min=0, max=4)
    expected = raw.reshape(-1) - exceed / 4 * 0.5
    expected[truncated] = -0.25
    assert truncated.any() and (~truncated).any() and (exceed[~truncated] > 0).any()
    torch.testing.assert_close(penalized.reshape(-1), expected)
    assert read_metrics(tmp_path)[0]["reward_mean"] == pytest.approx(float(expected.mean()), rel=1e-5)


def test_lora_trains_only_the_adapters_and_saves_them(tiny_run, plain_run, tmp_path):
    trainer = run_in_process(tiny_run, tmp_path, *PLAIN, "--eva.total_prompts", "4", "--ds.lora.rank", "4",
                             "--ds.lora.alpha", "8", "--ds.lora.target_modules", "q_proj", "v_proj")
    model = trainer.actor.model.module
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]
    assert trainable and all("lora_" in name and ("q_proj" in name or "v_proj" in name) for name in trainable)
    initial = plain_run[2]
    for name, param in model.named_parameters():
        if not param.requires_grad:  # the frozen base: still the initial weights
            base = name.replace("base_model.model.", "").replace(".base_layer", "")
            torch.testing.assert_close(param.float(), initial[base].float(), rtol=0, atol=1e-2, msg=name)
    lora_b = [param for name, param in model.named_parameters() if "lora_B" in name]
    assert any(param.abs().sum() > 0 for param in lora_b)  # B starts at zero: nonzero means it trained
    assert (tmp_path / "model" / "adapter_config.json").exists()
    assert (tmp_path / "model" / "adapter_model.safetensors").exists()


def test_ema_is_what_gets_saved_and_the_reference_is_offloaded(tiny_run, plain_run, tmp_path):
    """beta 0.5 and one optimizer step: the saved model is halfway between the initial and the trained weights."""
    trainer = run_in_process(tiny_run, tmp_path, *PLAIN, "--eva.total_prompts", "4", "--train.enable_ema",
                             "--train.ema_beta", "0.5", "--algo.kl.init_coef", "0.01", "--ref.offload")
    assert trainer.reference.model.zero_offload_param().device == "cpu"
    saved = load_file(tmp_path / "model" / "model.safetensors")
    trained = trainer.actor.model.module.state_dict()
    initial = plain_run[2]
    moved = 0
    for name, weight in saved.items():
        before, after = initial[name].float(), trained[name].float()
        torch.testing.assert_close(weight.float(), (before + after) / 2, rtol=0, atol=2e-2, msg=name)
        moved += int(not torch.equal(before.to(after.dtype), after))
    assert moved > 0


def test_eval_runs_every_eval_steps_and_checkpoints_save_hf_models(tiny_run, plain_run, tmp_path):
    """--eval.steps 2 in a 2-step run: eval metrics in step 2 only, per datasource (upstream's keys);
    evaluating changes nothing in training; each checkpoint, and the best-eval one, also as HF model."""
    rows = make_seeds(8, seed=1)
    for i, row in enumerate(rows):
        row["datasource"] = "add" if i % 2 else "other"
    write_jsonl(tmp_path / "eval.jsonl", rows)
    run_in_process(tiny_run, tmp_path, *PLAIN, "--eva.total_prompts", "8", "--eval.dataset",
                   str(tmp_path / "eval.jsonl"), "--eval.steps", "2", "--eval.n_samples_per_prompt", "2",
                   "--ckpt.save_steps", "2", "--ckpt.save_hf")
    metrics, plain = read_metrics(tmp_path), plain_run[0]
    assert not any(key.startswith("eval_") for key in metrics[0])
    for source in ("add", "other"):
        assert 0 <= metrics[1][f"eval_{source}_pass1"] <= metrics[1][f"eval_{source}_pass2"]
        assert 0 < metrics[1][f"eval_{source}_response_length_mean"] <= 8
    assert metrics[1]["eval_num_samples"] == 16
    for step, before in zip(metrics, plain):
        assert step["policy_loss"] == before["policy_loss"] and step["reward_mean"] == before["reward_mean"]
    checkpoints = tmp_path / "ckpt"
    for tag in ("global_step2", "best_global_step2"):
        assert (checkpoints / "_actor" / tag).is_dir()
        assert (checkpoints / f"{tag}_hf" / "model.safetensors").exists()


def test_muon_optimizer_through_openrlhfs_strategy(tiny_run, tmp_path):
    trainer = run_in_process(tiny_run, tmp_path, *PLAIN, "--eva.total_prompts", "4", "--actor.optim", "muon",
                             "--actor.muon.lr", "0.01", "--actor.max_norm", "0")
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # DeepSpeed's bf16 wrapper, at ZeRO-0
    assert "Muon" in type(inner).__name__
    # the Newton-Schulz group at --actor.muon.lr, the rest (embeddings, head, norms) at --actor.adam.lr
    assert sorted({group["initial_lr"] for group in inner.param_groups}) == [1e-3, 0.01]
    assert read_metrics(tmp_path)[0]["actor_grad_norm"] > 0


@pytest.fixture
def tiny_moe(tiny_run, tmp_path):
    """A 2-layer Mixtral with 4 experts and the tiny Llama's tokenizer."""
    from transformers import AutoConfig, AutoTokenizer, MixtralConfig, MixtralForCausalLM

    tokenizer, llama = AutoTokenizer.from_pretrained(tiny_run.model), AutoConfig.from_pretrained(tiny_run.model)
    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=llama.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=4, num_local_experts=4, num_experts_per_tok=2,
                           max_position_embeddings=128, bos_token_id=llama.bos_token_id,
                           eos_token_id=llama.eos_token_id, pad_token_id=llama.pad_token_id)
    MixtralForCausalLM(config).save_pretrained(tmp_path / "moe")
    tokenizer.save_pretrained(tmp_path / "moe")
    return type(tiny_run)(model=str(tmp_path / "moe"), seeds=tiny_run.seeds)


def test_aux_loss_coef_adds_the_moe_balancing_loss(tiny_moe, tmp_path):
    flags = [*PLAIN, "--eva.total_prompts", "4", "--ds.experts_implementation", "eager"]
    run_in_process(tiny_moe, tmp_path / "without", *flags)
    run_in_process(tiny_moe, tmp_path / "with", *flags, "--actor.aux_loss_coef", "1.0")
    without, with_aux = read_metrics(tmp_path / "without")[0], read_metrics(tmp_path / "with")[0]
    assert with_aux["aux_loss"] > 0 and "aux_loss" not in without
    assert with_aux["policy_loss"] == pytest.approx(without["policy_loss"], rel=1e-5)
    assert with_aux["actor_grad_norm"] != pytest.approx(without["actor_grad_norm"], rel=1e-3)


def test_prompt_probs_mix_datasets_and_prompt_split_picks_a_split(tmp_path):
    from datasets import Dataset, DatasetDict
    from openrlhf.datasets.utils import blending_datasets
    from openrlhf.utils import get_strategy

    first, second = make_seeds(8, seed=2), make_seeds(8, seed=3)
    write_jsonl(tmp_path / "a.jsonl", first)
    write_jsonl(tmp_path / "b.jsonl", second)
    paths = f"{tmp_path / 'a.jsonl'},{tmp_path / 'b.jsonl'}"
    args = parse_args(["--actor.model_name_or_path", "m", "--data.prompt_dataset", paths, "--data.prompt_probs",
                       "0.7,0.3", "--data.input_key", "prompt", "--data.label_key", "label", "--reward.remote_url",
                       "r.py", "--rollout.n_samples_per_prompt", "2", "--train.batch_size", "2"])
    strategy = get_strategy(args)
    mixed = read_prompt_datasets(args, strategy, paths, "0.7,0.3", "train")
    upstream = blending_datasets(paths, "0.7,0.3", strategy, args.train.seed)
    assert [p["prompt"] for p in mixed] == upstream["prompt"] and [p["label"] for p in mixed] == upstream["label"]
    prompts = {p["prompt"] for p in mixed}
    assert prompts & {r["prompt"] for r in first} and prompts & {r["prompt"] for r in second}

    DatasetDict({"train": Dataset.from_list(first), "test": Dataset.from_list(second)}).save_to_disk(tmp_path / "hf")
    held_out = read_prompt_datasets(args, strategy, str(tmp_path / "hf"), None, "test")
    assert [p["prompt"] for p in held_out] == [r["prompt"] for r in second]
    with pytest.raises(ValueError, match="only the split 'train'"):
        read_prompt_datasets(args, strategy, str(tmp_path / "a.jsonl"), None, "test")


def test_deepspeed_flags_reach_openrlhfs_strategy_config():
    from openrlhf.utils import get_strategy

    args = parse_args(["--actor.model_name_or_path", "m", "--data.prompt_dataset", "p.jsonl", "--reward.remote_url",
                       "r.py", "--rollout.n_samples_per_prompt", "2", "--train.batch_size", "2", "--ds.zpg", "2",
                       "--ds.grad_accum_dtype", "fp32", "--ds.overlap_comm", "--ds.use_universal_ckpt",
                       "--ds.deepcompile"])
    config = get_strategy(args).get_ds_train_config()
    assert config["zero_optimization"]["zero_hpz_partition_size"] == 2
    assert config["zero_optimization"]["overlap_comm"] is True
    assert config["data_types"]["grad_accum_dtype"] == "fp32"
    assert config["checkpoint"]["load_universal"] is True and config["compile"]["deepcompile"] is True


@pytest.mark.parametrize("flags, message", [
    (["--ds.load_in_4bit"], "needs the bitsandbytes package"),
    (["--ds.use_liger_kernel"], "needs the liger-kernel package"),
    (["--use_ms"], "needs the modelscope package"),
    (["--train.enable_ema", "--ds.lora.rank", "4"], "cannot follow a --ds.lora.rank adapter"),
    (["--eva.solver", "online_dpo", "--actor.entropy_coef", "0.1"], "need --eva.solver pg"),
    (["--reward.overlong_buffer_len", "100", "--rollout.max_new_tokens", "8"], "the response budget"),
    (["--data.prompt_probs", "0.5,0.5"], "one probability per --data.prompt_dataset entry"),
], ids=["4bit", "liger", "modelscope", "ema_lora", "entropy_dpo", "overlong_budget", "probs"])
def test_flags_that_cannot_apply_say_why(flags, message, capsys):
    module = {"--ds.load_in_4bit": "bitsandbytes", "--ds.use_liger_kernel": "liger_kernel",
              "--use_ms": "modelscope"}.get(flags[0])
    if module and importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    with pytest.raises(SystemExit):
        parse_args(["--actor.model_name_or_path", "m", "--data.prompt_dataset", "p.jsonl", "--reward.remote_url",
                    "r.py", "--rollout.n_samples_per_prompt", "2", "--train.batch_size", "2", *flags])
    assert message in capsys.readouterr().err
