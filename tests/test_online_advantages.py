"""openrlhf_eva.solve.online: advantages checked against OpenRLHF's own code path, pairs, and HF rollouts."""

import sys
import types
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import openrlhf_eva  # noqa: F401  (compat)
from openrlhf.trainer.ppo_utils import Experience, FixedKLController
from openrlhf_eva.embedded.model import build_tiny
from openrlhf_eva.solve import online


def fake_vllm_modules() -> dict:
    """What openrlhf/trainer/ray/vllm_engine.py touches of vllm at import time, and nothing more."""
    vllm = types.ModuleType("vllm")
    vllm.__version__ = "0.0.0+fake"
    vllm.inputs = types.ModuleType("vllm.inputs")
    vllm.inputs.TokensPrompt = dict
    vllm.utils = types.ModuleType("vllm.utils")
    vllm.utils.random_uuid = lambda: "fake-uuid"
    return {"vllm": vllm, "vllm.inputs": vllm.inputs, "vllm.utils": vllm.utils}


@pytest.fixture(scope="module")
def upstream_maker_class():
    """OpenRLHF's RemoteExperienceMaker, importable once vllm is stubbed; every module the import
    added is removed again afterwards so no later test sees the stub."""
    before = set(sys.modules)
    sys.modules.update(fake_vllm_modules())
    try:
        from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker

        yield RemoteExperienceMaker
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]


def make_args(estimator, n, gamma=1.0, no_std_norm=False, clip=(-10, 10)):
    return SimpleNamespace(
        rollout=SimpleNamespace(n_samples_per_prompt=n, max_new_tokens=8),
        algo=SimpleNamespace(advantage=SimpleNamespace(estimator=estimator, gamma=gamma, no_std_norm=no_std_norm),
                             kl=SimpleNamespace(use_loss=False, estimator="k1")),
        reward=SimpleNamespace(clip_range=clip),
        data=SimpleNamespace(max_len=64),
    )


def random_batch(num_prompts, n, width, seed):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (num_prompts * n,), generator=generator)
    action_mask = torch.arange(width)[None, :] < lengths[:, None]
    kl = torch.randn(num_prompts * n, width, generator=generator) * action_mask
    rewards = torch.rand(num_prompts, n, generator=generator) * 4 - 2
    return action_mask, kl, rewards


def upstream_advantages(maker_class, args, action_mask, kl, rewards, kl_coef, chunk=3, seed=0):
    """Run OpenRLHF's compute_advantages_and_returns on experiences made of shuffled chunks of the
    samples (each carrying its original `index`, as split_rollout_samples sets it)."""
    maker = object.__new__(maker_class)
    maker.strategy = SimpleNamespace(args=args)
    maker.args = args
    maker.advantage_estimator = args.algo.advantage.estimator
    maker.kl_ctl = FixedKLController(kl_coef)
    order = torch.randperm(len(action_mask), generator=torch.Generator().manual_seed(seed))
    flat_rewards = rewards.reshape(-1)
    experiences = [
        Experience(action_mask=action_mask[rows], kl=kl[rows].clone(), rewards=flat_rewards[rows].clone(),
                   index=rows.tolist(), info={})
        for rows in order.split(chunk)
    ]
    experiences = maker.compute_advantages_and_returns(experiences)
    advantages = torch.zeros(kl.shape)
    returns = torch.zeros(kl.shape)
    for rows, experience in zip(order.split(chunk), experiences):
        advantages[rows] = experience.advantages
        returns[rows] = experience.returns
    return advantages, returns


@pytest.mark.parametrize("estimator", online.ESTIMATORS)
@pytest.mark.parametrize("no_std_norm", [False, True])
def test_advantages_match_openrlhf_compute_advantages_and_returns(upstream_maker_class, estimator, no_std_norm):
    gamma = 0.9 if estimator == "reinforce" else 1.0  # upstream forces 1.0 for the group estimators
    args = make_args(estimator, n=4, gamma=gamma, no_std_norm=no_std_norm, clip=(-1.5, 1.5))
    action_mask, kl, rewards = random_batch(num_prompts=5, n=4, width=6, seed=7)
    expected_adv, expected_ret = upstream_advantages(upstream_maker_class, args, action_mask, kl, rewards, 0.05)

    experience = Experience(action_mask=action_mask, kl=kl.clone(), info={})
    online.compute_advantages(experience, rewards, args, kl_coef=0.05)
    torch.testing.assert_close(experience.advantages, expected_adv)
    torch.testing.assert_close(experience.returns, expected_ret)


@settings(max_examples=60, deadline=None)
@given(arrays("float32", st.tuples(st.integers(1, 6), st.integers(2, 8)),
              elements=st.floats(-5, 5, width=32)))
def test_rloo_advantage_is_reward_minus_the_mean_of_the_others(rewards):
    rewards = torch.from_numpy(rewards)
    num_prompts, n = rewards.shape
    action_mask = torch.ones(num_prompts * n, 3, dtype=torch.bool)
    experience = Experience(action_mask=action_mask, kl=torch.zeros(num_prompts * n, 3), info={})
    online.compute_advantages(experience, rewards, make_args("rloo", n, clip=(-100, 100)), kl_coef=0.0)
    others_mean = torch.stack([torch.cat([row[:i], row[i + 1:]]).mean() for row in rewards for i in range(n)])
    expected = rewards.reshape(-1) - others_mean
    for t in range(3):  # the return from the last token back: every response token carries it
        torch.testing.assert_close(experience.advantages[:, t], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(experience.advantages[:, 0].view(num_prompts, n).sum(dim=1),
                               torch.zeros(num_prompts), atol=1e-4, rtol=0)


def test_groups_with_a_non_finite_reward_get_zero_advantage_and_stay_out_of_whitening():
    action_mask, kl, rewards = random_batch(num_prompts=3, n=4, width=5, seed=1)
    args = make_args("reinforce_baseline", n=4)
    clean = Experience(action_mask=action_mask[:8], kl=kl[:8].clone(), info={})
    online.compute_advantages(clean, rewards[:2], args, kl_coef=0.1)
    rewards[2, 1] = float("nan")
    experience = Experience(action_mask=action_mask, kl=kl.clone(), info={})
    online.compute_advantages(experience, rewards, args, kl_coef=0.1)
    assert torch.isfinite(experience.advantages).all()
    assert (experience.advantages[8:] == 0).all()
    torch.testing.assert_close(experience.advantages[:8], clean.advantages)


def test_online_dpo_pairs_best_against_worst_and_skips_ties_and_unscored_groups():
    nan = float("nan")
    rewards = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.3, 0.3], [nan, 0.2, nan], [nan, 0.7, 0.1], [1.0, 1.0, 0.0]])
    chosen, rejected, has_pair = online.best_and_worst(rewards)
    assert has_pair.tolist() == [True, False, False, True, True]
    assert chosen[has_pair].tolist() == [1, 1, 0] and rejected[has_pair].tolist() == [0, 2, 2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny(tmp_path_factory.mktemp("tiny"), seed=3)
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_generate_builds_an_openrlhf_experience_with_masks_up_to_the_first_eos(tiny):
    model, tokenizer = tiny
    prompts = ["<|user|>copy 12<|assistant|>", "<|user|>add 123+45<|assistant|>"]
    kwargs = dict(max_new_tokens=6, temperature=1.0, top_p=1.0, prompt_max_len=32)
    experience = online.generate(model, tokenizer, prompts, 3, seed=11, **kwargs)
    assert experience.sequences.shape[0] == 6 and experience.action_mask.shape[1] <= 6
    width = experience.action_mask.shape[1]
    response = experience.sequences[:, -width:]
    for row, mask in zip(response, experience.action_mask):
        eos = (row == tokenizer.eos_token_id).nonzero()
        valid = int(mask.sum())
        if len(eos):  # valid through the first eos, padding after it
            assert valid == int(eos[0]) + 1
        else:
            assert valid == width
        assert (row[valid:] == tokenizer.pad_token_id).all()
    assert experience.truncated.tolist() == [int(m.sum()) == width and r[-1] != tokenizer.eos_token_id
                                             for m, r in zip(experience.action_mask, response)]
    torch.testing.assert_close(experience.attention_mask[:, -width:], experience.action_mask.long())
    # sampling is a function of the seed alone, and leaves the global RNG where it was
    state = torch.get_rng_state()
    again = online.generate(model, tokenizer, prompts, 3, seed=11, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(again.sequences, experience.sequences)
    other = online.generate(model, tokenizer, prompts, 3, seed=12, **kwargs)
    assert not torch.equal(other.sequences, experience.sequences)
    # the reward sees prompt + response with special tokens and without padding, grouped per prompt
    rollouts = online.to_rollouts(experience, tokenizer, prompts, 3)
    assert len(rollouts.queries) == 2 and all(len(q) == 3 for q in rollouts.queries)
    rows = iter(zip(response, experience.action_mask))
    for prompt, queries, responses in zip(prompts, rollouts.queries, rollouts.responses):
        for query, text in zip(queries, responses):
            row, mask = next(rows)
            assert query == prompt + tokenizer.decode(row[mask], skip_special_tokens=False)
            assert text == tokenizer.decode(row[mask], skip_special_tokens=True)
