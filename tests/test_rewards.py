"""Reward oracles: reward_func files, OpenRLHF reward models, pairwise preference, remote RM servers."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForSequenceClassification

import openrlhf_eva.embedded
from openrlhf_eva.creator import REWARDS, UnknownNameError, register_reward
from openrlhf_eva.embedded.model import build_tokenizer
from openrlhf_eva.rewards import (
    PairwisePreference,
    RemoteRewardModel,
    RewardError,
    RewardFuncFile,
    RewardModel,
    RewardOracle,
    SequenceClassifierPreference,
    build_reward,
    mean_win_rate,
)
from openrlhf_eva.rollout import Rollouts

EMBEDDED_REWARD = Path(openrlhf_eva.embedded.__file__).parent / "reward_func.py"
SMALL_LLAMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                   num_key_value_heads=2, max_position_embeddings=128)


def make_rollouts(prompts, responses, eos="</s>"):
    """Rollouts as the CLI hands them to an oracle: templated prompts, queries = prompt + response + eos."""
    templated = [f"<|user|>{p}<|assistant|>" for p in prompts]
    queries = [[t + r + eos for r in row] for t, row in zip(templated, responses)]
    return Rollouts(prompts=templated, responses=[list(r) for r in responses], queries=queries,
                    truncated=[[False] * len(r) for r in responses])


ROLLOUTS = make_rollouts(["copy 12", "rev 345", "add 1+2"], [["12", "1", "x"], ["543", "534", ""], ["3", "4", "33"]])
LABELS = ["12", "543", "3"]


def write_reward_file(tmp_path, name, body):
    path = tmp_path / f"{name}.py"
    path.write_text("import torch\n\n" + body)
    return path


# ---------------------------------------------------------------- reward_func files


def test_reward_func_file_scores_like_a_direct_call():
    oracle = build_reward("reward_func", path=EMBEDDED_REWARD)
    rewards = oracle.score(ROLLOUTS, LABELS)
    assert rewards.shape == (3, 3) and rewards.dtype == torch.float32
    direct = oracle.fn([q for row in ROLLOUTS.queries for q in row],
                       [p for p in ROLLOUTS.prompts for _ in range(3)], [x for x in LABELS for _ in range(3)])
    assert torch.equal(rewards.flatten(), direct["rewards"])
    assert rewards[0, 0] == 1.0 and rewards[1, 0] == 1.0 and rewards[2, 0] == 1.0  # the exact answers
    assert oracle.errors == {}


@pytest.mark.parametrize("returned", ["torch.tensor([float(len(q)) for q in queries])",
                                      "[float(len(q)) for q in queries]",
                                      "torch.tensor([[float(len(q))] for q in queries])"])
def test_reward_func_may_return_a_bare_tensor_list_or_column(tmp_path, returned):
    path = write_reward_file(tmp_path, "bare", f"def reward_func(queries, prompts, labels):\n    return {returned}\n")
    rewards = RewardFuncFile(path).score(ROLLOUTS, LABELS)
    assert rewards.tolist() == [[float(len(q)) for q in row] for row in ROLLOUTS.queries]


@pytest.mark.parametrize("body, message", [
    ("    return {'scores': torch.zeros(len(queries))}\n", "without 'rewards'"),
    ("    return torch.zeros(len(queries) + 1)\n", r"shape \(10,\) for 9 queries"),
    ("    return {'rewards': 'high'}\n", "not numbers"),
])
def test_reward_func_breaking_its_contract_names_the_file(tmp_path, body, message):
    path = write_reward_file(tmp_path, "broken", "def reward_func(queries, prompts, labels):\n" + body)
    with pytest.raises(RewardError, match=message) as caught:
        RewardFuncFile(path).score(ROLLOUTS, LABELS)
    assert str(path) in str(caught.value)


def test_reward_func_raising_on_one_prompt_gives_a_nan_row_and_a_reason(tmp_path):
    path = write_reward_file(tmp_path, "flaky", (
        "def reward_func(queries, prompts, labels):\n"
        "    if '543' in labels:\n"
        "        raise KeyError('no rule for 543')\n"
        "    return torch.ones(len(queries))\n"))
    oracle = RewardFuncFile(path)
    rewards = oracle.score(ROLLOUTS, LABELS)
    assert torch.isnan(rewards[1]).all() and (rewards[[0, 2]] == 1).all()
    assert list(oracle.errors) == [1]
    assert str(path) in oracle.errors[1] and "KeyError" in oracle.errors[1] and "no rule for 543" in oracle.errors[1]
    assert oracle.stats["prompts_failed"] == 1
    # the next call starts with no errors
    assert oracle.score(make_rollouts(["x"], [["a", "b"]]), ["1"]).tolist() == [[1.0, 1.0]] and oracle.errors == {}


def test_reward_func_raising_on_every_prompt_is_an_error_naming_the_file(tmp_path):
    path = write_reward_file(tmp_path, "always", "def reward_func(queries, prompts, labels):\n    return 1 / 0\n")
    with pytest.raises(RewardError, match="every prompt") as caught:
        RewardFuncFile(path).score(ROLLOUTS, LABELS)
    assert str(path) in str(caught.value) and "ZeroDivisionError" in str(caught.value)


def test_reward_func_file_missing_or_without_the_function(tmp_path):
    with pytest.raises(RewardError, match="does not exist"):
        RewardFuncFile(tmp_path / "nope.py")
    path = write_reward_file(tmp_path, "nofunc", "def reward(queries):\n    return 0\n")
    with pytest.raises(RewardError, match=f"{path}.*defines no reward_func"):
        RewardFuncFile(path)


# ---------------------------------------------------------------- registry


def test_builtins_are_registered_and_users_can_add_oracles(monkeypatch):
    monkeypatch.setattr(REWARDS, "_objects", dict(REWARDS._objects))
    assert {"reward_func", "remote", "reward_model", "pairwise"} <= set(REWARDS.names())

    @register_reward("length")
    class LengthReward(RewardOracle):
        def score(self, rollouts, labels):
            return torch.tensor([[float(len(r)) for r in row] for row in rollouts.responses])

    oracle = build_reward("length")
    assert oracle.score(ROLLOUTS, LABELS).tolist() == [[2, 1, 1], [3, 3, 0], [1, 1, 2]]
    with pytest.raises(UnknownNameError, match="unknown reward 'nope'; available: .*length"):
        build_reward("nope")


# ---------------------------------------------------------------- OpenRLHF reward model


@pytest.fixture(scope="module")
def tiny_classifier_factory(tmp_path_factory):
    """Write a tiny Llama sequence classifier (random weights) + char tokenizer; returns its folder."""

    def make(name, num_labels=1, seed=0, **config_extra):
        tokenizer = build_tokenizer()
        config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             num_labels=num_labels, **SMALL_LLAMA, **config_extra)
        torch.manual_seed(seed)
        model = LlamaForSequenceClassification(config)
        # A random head scores every text near 0; scale it so different texts differ clearly.
        model.score.weight.data *= 50
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        return str(path), model.eval(), tokenizer

    return make


def test_reward_model_matches_the_classifier_it_was_saved_from(tiny_classifier_factory):
    # LlamaForSequenceClassification stores `model.*` + `score.weight`: exactly the layout of
    # OpenRLHF's RewardModel (base_model_prefix + value head "score", no bias).
    path, classifier, tokenizer = tiny_classifier_factory("rm")
    oracle = build_reward("reward_model", path=path, batch_size=4)
    assert type(oracle.model).__name__ == "RewardModel" and next(oracle.model.parameters()).dtype == torch.float32
    rewards = oracle.score(ROLLOUTS, LABELS)
    assert rewards.shape == (3, 3) and torch.isfinite(rewards).all()

    queries = [q for row in ROLLOUTS.queries for q in row]
    with torch.no_grad():
        expected = torch.stack([classifier(**tokenizer(q, return_tensors="pt", add_special_tokens=False)).logits[0, 0]
                                for q in queries])
    torch.testing.assert_close(rewards.flatten(), expected, atol=1e-4, rtol=1e-4)
    assert rewards.flatten().unique().numel() > 3  # the texts are told apart
    # batching and left padding do not change a reward
    torch.testing.assert_close(RewardModel(path, batch_size=64).score(ROLLOUTS, LABELS), rewards, atol=1e-4, rtol=1e-4)


def test_reward_model_normalizes_with_the_stored_mean_and_std(tiny_classifier_factory):
    path, _, _ = tiny_classifier_factory("rm_norm", mean=1.5, std=4.0)
    raw = RewardModel(path).score(ROLLOUTS, LABELS)
    normalized = RewardModel(path, normalize_reward=True).score(ROLLOUTS, LABELS)
    torch.testing.assert_close(normalized, (raw - 1.5) / 4.0)


def test_reward_model_path_missing_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "no_such_rm")
    with pytest.raises(RewardError, match=f"reward model '{missing}' is not a local checkpoint"):
        RewardModel(missing)


# ---------------------------------------------------------------- pairwise preference


def test_pairwise_classifier_symmetric_win_probabilities(tiny_classifier_factory):
    path, classifier, tokenizer = tiny_classifier_factory("pairwise", seed=1)
    model = build_reward("pairwise", path=path, separator=" vs ", batch_size=5)
    assert isinstance(model, PairwisePreference)
    probs = model.win_probs(ROLLOUTS)
    assert probs.shape == (3, 3, 3) and probs.dtype == torch.float32
    assert ((probs >= 0) & (probs <= 1)).all()
    torch.testing.assert_close(probs + probs.transpose(1, 2), torch.ones(3, 3, 3), atol=1e-6, rtol=0)
    assert torch.equal(probs.diagonal(dim1=1, dim2=2), torch.full((3, 3), 0.5))
    assert (probs - 0.5).abs().max() > 0.01  # a random but scaled head prefers some responses

    def first_wins(text):
        with torch.no_grad():
            logits = classifier(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits
        return torch.sigmoid(logits[0, 0])

    prompt, (a, b, _) = ROLLOUTS.prompts[1], ROLLOUTS.responses[1]
    expected = (first_wins(prompt + a + " vs " + b) + 1 - first_wins(prompt + b + " vs " + a)) / 2
    torch.testing.assert_close(probs[1, 0, 1], expected, atol=1e-5, rtol=0)

    win_rates = model.score(ROLLOUTS, LABELS)
    torch.testing.assert_close(win_rates, mean_win_rate(probs))
    torch.testing.assert_close(win_rates[1, 0], (probs[1, 0, 1] + probs[1, 0, 2]) / 2)


def test_pairwise_two_label_head_uses_the_second_class(tiny_classifier_factory):
    path, _, _ = tiny_classifier_factory("pairwise2", num_labels=2, seed=2)
    probs = SequenceClassifierPreference(path).win_probs(ROLLOUTS)
    torch.testing.assert_close(probs + probs.transpose(1, 2), torch.ones(3, 3, 3), atol=1e-6, rtol=0)


def test_pairwise_model_missing_is_a_clear_error(tmp_path):
    with pytest.raises(RewardError, match="pairwise model .* is not a local checkpoint"):
        SequenceClassifierPreference(str(tmp_path / "none"))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6).flatmap(lambda n: st.lists(st.floats(0, 1), min_size=n * n, max_size=n * n)))
def test_mean_win_rate_of_any_symmetric_preference_averages_one_half(values):
    n = int(len(values) ** 0.5)
    raw = torch.tensor(values, dtype=torch.float64).view(1, n, n)
    probs = (raw + 1 - raw.transpose(1, 2)) / 2  # the symmetrisation SequenceClassifierPreference applies
    rates = mean_win_rate(probs)
    assert rates.shape == (1, n)
    assert ((rates >= 0) & (rates <= 1)).all()
    # every pair hands out exactly one win between its two members
    assert abs(float(rates.mean()) - 0.5) < 1e-9


# ---------------------------------------------------------------- remote RM server


class RewardServer:
    """A local RM server on 127.0.0.1 in OpenRLHF's serve_rm format; `mode` picks its behaviour."""

    def __init__(self, mode="ok", delay=0.0):
        self.mode, self.delay, self.requests = mode, delay, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(payload)
                if server.delay:
                    time.sleep(server.delay)
                if server.mode == "flaky" and len(server.requests) == 1:
                    self.send_error(503, "warming up")
                    return
                rewards = [float(len(q)) for q in payload["query"]]
                if server.mode == "null":
                    rewards[0] = None
                body = {"malformed": b"<html>oops</html>",
                        "short": json.dumps({"rewards": rewards[:-1]}).encode(),
                        "strings": json.dumps({"rewards": ["1"] * len(rewards)}).encode()}.get(
                    server.mode, json.dumps({"rewards": rewards, "scores": rewards, "extra_logs": {}}).encode())
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/get_reward"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server_factory():
    servers = []

    def make(mode="ok", delay=0.0):
        servers.append(RewardServer(mode, delay))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_remote_rm_sends_openrlhf_payloads_in_batches(server_factory):
    server = server_factory()
    oracle = build_reward("remote", urls=server.url, batch_size=4)
    rewards = oracle.score(ROLLOUTS, LABELS)
    assert rewards.tolist() == [[float(len(q)) for q in row] for row in ROLLOUTS.queries]
    assert [len(r["query"]) for r in server.requests] == [4, 4, 1]
    first = server.requests[0]
    assert set(first) == {"query", "prompts", "labels"}
    assert first["query"] == ROLLOUTS.queries[0] + ROLLOUTS.queries[1][:1]
    assert first["prompts"] == [ROLLOUTS.prompts[0]] * 3 + [ROLLOUTS.prompts[1]]
    assert first["labels"] == ["12", "12", "12", "543"]


def test_remote_rm_round_robins_over_comma_separated_servers(server_factory):
    one, two = server_factory(), server_factory()
    rewards = RemoteRewardModel(f"{one.url}, {two.url}", batch_size=3).score(ROLLOUTS, LABELS)
    assert rewards.tolist() == [[float(len(q)) for q in row] for row in ROLLOUTS.queries]
    assert len(one.requests) == 2 and len(two.requests) == 1


def test_remote_rm_null_reward_is_unscorable(server_factory):
    server = server_factory("null")
    rewards = RemoteRewardModel(server.url, batch_size=9).score(ROLLOUTS, LABELS)
    assert torch.isnan(rewards[0, 0]) and torch.isfinite(rewards.flatten()[1:]).all()


def test_remote_rm_retries_a_failed_request(server_factory):
    server = server_factory("flaky")
    oracle = RemoteRewardModel(server.url, batch_size=9, retry_wait=0.01)
    assert torch.isfinite(oracle.score(ROLLOUTS, LABELS)).all()
    assert len(server.requests) == 2 and oracle.stats["retries"] == 1


def test_remote_rm_timeout_gives_up_after_the_retries(server_factory):
    server = server_factory(delay=1.0)
    oracle = RemoteRewardModel(server.url, batch_size=9, timeout=0.2, retries=2, retry_wait=0.0)
    started = time.time()
    with pytest.raises(RewardError, match="no reply after 2 tries") as caught:
        oracle.score(ROLLOUTS, LABELS)
    assert time.time() - started < 0.9 * 2  # gave up on each try before the server answered
    assert server.url in str(caught.value) and "timed out" in str(caught.value)


@pytest.mark.parametrize("mode, message", [("malformed", "reply is not JSON"), ("short", "expected .*9 numbers"),
                                           ("strings", "must be numbers or null")])
def test_remote_rm_malformed_reply_is_an_error_naming_the_url(server_factory, mode, message):
    server = server_factory(mode)
    with pytest.raises(RewardError, match=message) as caught:
        RemoteRewardModel(server.url, batch_size=9, retry_wait=0.0).score(ROLLOUTS, LABELS)
    assert server.url in str(caught.value)
    assert len(server.requests) == 1  # a broken contract is not retried


def test_remote_rm_unreachable(server_factory):
    server = server_factory()
    url = server.url
    server.close()
    with pytest.raises(RewardError, match=f"remote reward {url}: no reply after 2 tries"):
        RemoteRewardModel(url, timeout=1.0, retries=2, retry_wait=0.0).score(ROLLOUTS, LABELS)
