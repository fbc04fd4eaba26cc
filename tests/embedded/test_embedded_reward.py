"""Graded reward and the OpenRLHF reward file's response extraction."""

import importlib.util
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import openrlhf_eva.embedded
from openrlhf_eva.embedded.reward import PARTIAL_CREDIT, edit_distance, score
from openrlhf_eva.embedded.vocab import ALPHABET, ASSISTANT, EOS, PAD, USER

REWARD_FILE = Path(openrlhf_eva.embedded.__file__).parent / "reward_func.py"


@pytest.fixture(scope="module")
def reward_module():
    # Load exactly as OpenRLHF's SingleTurnAgentExecutor does.
    spec = importlib.util.spec_from_file_location("reward_func", REWARD_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_edit_distance():
    assert edit_distance("", "") == 0
    assert edit_distance("abc", "") == 3
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("1274", "2741") == 2


def test_score_exact_partial_empty_garbage():
    assert score("1274", "1274") == 1.0
    assert score(" 1274 ", "1274") == 1.0
    assert score("1275", "1274") == pytest.approx(PARTIAL_CREDIT * 0.75)
    assert score("274", "1274") == pytest.approx(PARTIAL_CREDIT * 0.75)  # shifted: still credited
    assert score("", "1274") == 0.0
    assert score("xyzw", "1274") == 0.0
    assert score("1274" * 10, "1274") < 0.1
    assert 0.0 < score("1275", "1274") < score("1274", "1274")


@settings(max_examples=300, deadline=None)
@given(response=st.text(max_size=30), answer=st.text(alphabet="0123456789", min_size=1, max_size=10))
def test_score_range_and_exactness(response, answer):
    value = score(response, answer)
    assert 0.0 <= value <= 1.0
    assert (value == 1.0) == (response.strip() == answer)


def _query(prompt_text, response_text):
    templated = f"{USER}{prompt_text}{ASSISTANT}"
    return templated, templated + response_text


@pytest.mark.parametrize(
    "response_text, expected",
    [
        ("21" + EOS, "21"),
        ("21" + EOS + PAD * 3, "21"),
        ("21", "21"),  # truncated before eos
        (EOS, ""),
        (" 21 " + EOS, "21"),
        ("21" + USER + "rev 99", "21"),  # model opens a new turn
        ("2" + PAD + "1" + EOS, "21"),
        ("21" + EOS + "junk", "21"),
    ],
)
def test_extract_response(reward_module, response_text, expected):
    prompt, query = _query("rev 12", response_text)
    assert reward_module.extract_response(query, prompt) == expected
    assert reward_module.extract_response(PAD * 4 + query, prompt) == expected  # left padding


def test_extract_response_falls_back_to_assistant_marker(reward_module):
    query = f"{USER}rev 12{ASSISTANT}21{EOS}"
    assert reward_module.extract_response(query, "a prompt that was re-rendered") == "21"
    assert reward_module.extract_response(query, "") == "21"


def test_reward_func_batch(reward_module):
    cases = [("rev 12", "21" + EOS, "21"), ("add 1+2", "4" + EOS + PAD, "3"), ("copy 123", "12", "123")]
    prompts, queries, labels = [], [], []
    for prompt_text, response_text, label in cases:
        prompt, query = _query(prompt_text, response_text)
        prompts.append(prompt)
        queries.append(query)
        labels.append(label)

    out = reward_module.reward_func(queries, prompts, labels)
    assert set(out) == {"rewards", "scores", "extra_logs"}
    assert out["rewards"].dtype == torch.float32 and out["rewards"].shape == (3,)
    assert torch.equal(out["rewards"], out["scores"])
    assert out["rewards"][0] == 1.0
    assert out["rewards"][1] == 0.0
    assert 0.0 < out["rewards"][2] < 1.0
    assert out["extra_logs"]["exact_match"].tolist() == [1.0, 0.0, 0.0]
    assert out["extra_logs"]["response_chars"].tolist() == [2.0, 1.0, 2.0]


@settings(max_examples=200, deadline=None)
@given(response=st.text(alphabet=ALPHABET + "<>|/", max_size=20))
def test_reward_func_range(reward_module, response):
    prompt, query = _query("sort 321", response)
    out = reward_module.reward_func([query], [prompt], ["123"])
    assert 0.0 <= out["rewards"].item() <= 1.0
