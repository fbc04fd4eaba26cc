"""--eva.rewrite_chosen in the online DPO solver: `online.rewrite_chosen_responses` on an Experience
sampled from the tiny Llama, scored by OpenRLHF's Actor before and after the rewrite."""

import pytest
import torch
from openrlhf.models import Actor
from transformers import AutoTokenizer

from openrlhf_eva.embedded.model import build_tiny
from openrlhf_eva.rollout import apply_chat_template
from openrlhf_eva.solve import online

N = 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny(tmp_path_factory.mktemp("tiny_rewrite"), seed=0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"  # as OpenRLHF's get_tokenizer sets it for the policy
    actor = Actor(path, attn_implementation="sdpa", param_dtype="bf16")
    actor.model.float()  # fp32: log-probs of the same tokens then agree whatever the padding around them
    actor.eval()
    return actor, tokenizer


def test_rewrites_replace_the_chosen_rows_and_widen_the_responses(tiny):
    actor, tokenizer = tiny
    prompts = ["copy 12", "rev 345", "sort 321"]
    templated = apply_chat_template(tokenizer, prompts)
    experience = online.generate(actor.model, tokenizer, templated, N, max_new_tokens=3, temperature=1.0,
                                 top_p=1.0, seed=5, prompt_max_len=32)
    responses = online.to_rollouts(experience, tokenizer, templated, N).responses
    # prompt 0: sample 2 is chosen; prompt 1: all tied, no pair; prompt 2: sample 0 is chosen.
    rewards = torch.tensor([[0.1, 0.5, 0.9], [0.3, 0.3, 0.3], [0.8, 0.2, 0.5]])
    old_width = experience.action_mask.shape[1]
    old_sequences, old_action_mask = experience.sequences.clone(), experience.action_mask.clone()
    with torch.no_grad():
        old_logps = actor(experience.sequences, experience.action_mask, attention_mask=experience.attention_mask)

    frames = []

    def generate(texts):
        frames.extend(texts)
        return ["12 34", "123 4567"]  # 5 tokens + eos fit the budget of 6; 8 + eos do not

    counts = online.rewrite_chosen_responses(experience, rewards, prompts, responses, tokenizer, generate,
                                             max_tokens=6)

    assert counts == {"rewritten": 1, "kept_too_many_tokens": 1}
    assert len(frames) == 2
    assert "copy 12" in frames[0] and responses[0][2] in frames[0] and "sort 321" in frames[1]
    rewritten_row, kept_row = 0 * N + 2, 2 * N + 0
    assert experience.action_mask.shape[1] == 6 > old_width  # widened for the rewrite
    start = experience.sequences.shape[1] - 6
    mask = experience.action_mask[rewritten_row]
    assert tokenizer.decode(experience.sequences[rewritten_row, start:][mask]) == "12 34" + tokenizer.eos_token
    assert int(mask.sum()) == 6 and experience.response_length[rewritten_row] == 6
    assert not experience.truncated[rewritten_row]
    torch.testing.assert_close(experience.attention_mask[:, start:], experience.action_mask.long())
    for row in range(len(experience.sequences)):
        if row == rewritten_row:
            continue  # every other row, the unusable rewrite's included, keeps its sample, padded on the right
        assert torch.equal(experience.sequences[row, :start + old_width], old_sequences[row])
        assert torch.equal(experience.action_mask[row, :old_width], old_action_mask[row])
        assert not experience.action_mask[row, old_width:].any()
    assert torch.equal(experience.sequences[kept_row, :start + old_width], old_sequences[kept_row])

    with torch.no_grad():
        new_logps = actor(experience.sequences, experience.action_mask, attention_mask=experience.attention_mask)
        prompt_ids = experience.sequences[rewritten_row, :start][experience.attention_mask[rewritten_row, :start] == 1]
        alone = torch.cat([prompt_ids, experience.sequences[rewritten_row, start:start + 6]])[None]
        rewrite_logps = actor(alone, torch.ones(1, 6, dtype=torch.bool), attention_mask=torch.ones_like(alone))
    others = [row for row in range(len(experience.sequences)) if row != rewritten_row]
    torch.testing.assert_close(new_logps[others, :old_width], old_logps[others], rtol=1e-5, atol=1e-5)
    assert not new_logps[others, old_width:].any()
    torch.testing.assert_close(new_logps[rewritten_row], rewrite_logps[0], rtol=1e-5, atol=1e-5)


def test_no_pairs_no_rewrites(tiny):
    actor, tokenizer = tiny
    templated = apply_chat_template(tokenizer, ["copy 12"])
    experience = online.generate(actor.model, tokenizer, templated, N, max_new_tokens=3, temperature=1.0,
                                 top_p=1.0, seed=5, prompt_max_len=32)
    sequences = experience.sequences.clone()
    tied = torch.full((1, N), 0.5)

    def generate(texts):
        raise AssertionError("nothing to rewrite: the creator must not be called")

    counts = online.rewrite_chosen_responses(experience, tied, ["copy 12"], [["a"] * N], tokenizer, generate, 6)
    assert counts == {} and torch.equal(experience.sequences, sequences)
