"""`python -m openrlhf_eva.evolve` end to end on the tiny Llama: outputs, accounting, resume, ranks, bad input."""

import importlib.machinery
import json
import random
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

import openrlhf_eva.embedded
from openrlhf_eva import compat
from openrlhf_eva.creator import (
    DEFAULT_FILTERS,
    EVOLVE_METHODS,
    METRICS,
    PromptFileError,
    UnknownNameError,
    read_prompts,
    write_jsonl,
)
from openrlhf_eva.embedded.data import make_seeds
from openrlhf_eva.embedded.model import build_tiny, build_tokenizer
from openrlhf_eva.embedded.tasks import solve
from openrlhf_eva.evolve import generate_with_vllm, main
from openrlhf_eva.rewards import RewardError
from openrlhf_eva.rollout import Rollouts

EMBEDDED = Path(openrlhf_eva.embedded.__file__).parent
REWARD_FILE = str(EMBEDDED / "reward_func.py")
EVOLVE_FILE = str(EMBEDDED / "evolve_func.py")
REPO = Path(__file__).resolve().parents[1]
LONG_PROMPT = "add 1234567+7654321"  # 21 tokens with the chat markers; the seeds have at most 13
LINEAGE = ("eva_origin", "eva_parent", "eva_method", "eva_depth", "eva_info")
OUTPUTS = ("pairs.jsonl", "next_prompts.jsonl", "rejects.jsonl", "summary.json")


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny_policy"), seed=42)


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    rows = make_seeds(n=12, seed=0)
    rows.insert(5, {"prompt": LONG_PROMPT, "label": solve(LONG_PROMPT), "kind": "add", "difficulty": 7})
    path = tmp_path_factory.mktemp("prompts") / "seeds.jsonl"
    write_jsonl(path, rows)
    return path


def cli_args(model, prompts, out, *extra, reward=REWARD_FILE, n=6, shard_size=5, chat=True):
    args = ["--pretrain", str(model), "--prompt_data", str(prompts), "--output_dir", str(out),
            "--data.label_key", "label", "--max_prompt_len", "16",
            "--n_samples_per_prompt", str(n), "--max_new_tokens", "8", "--shard_size", str(shard_size),
            "--eva.evolver", "task", "--eva.evolver_path", EVOLVE_FILE, "--eva.sample_fraction", "0.5"]
    if reward:
        args += ["--reward.remote_url", str(reward)]
    if chat:
        args += ["--data.apply_chat_template"]
    return args + list(extra)


@pytest.fixture(scope="module")
def one_rank_run(tiny_model, prompt_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("one_rank")
    summary = main(cli_args(tiny_model, prompt_file, out))
    return out, summary


def test_outputs_exist_and_every_prompt_is_accounted_for(one_rank_run, prompt_file):
    out, summary = one_rank_run
    assert all((out / name).exists() for name in OUTPUTS)
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        "estimate-0-00000.jsonl", "estimate-0-00001.jsonl", "estimate-0-00002.jsonl", "manifest.json"]
    rows_in = read_prompts(prompt_file)
    pairs, rejects = read_jsonl(out / "pairs.jsonl"), read_jsonl(out / "rejects.jsonl")
    prompt_rejects = [r for r in rejects if r["stage"] == "prompt"]
    # never silently lose a row: every input prompt is a pair, a tie or a reject, exactly once
    assert len(rows_in) == len(pairs) + len(prompt_rejects) == 13
    assert sorted(r["index"] for r in pairs + prompt_rejects) == list(range(13))
    counts = summary["counts"]
    assert counts["prompts/in"] == counts["prompts/pairs"] + counts["prompts/ties"] + counts["prompts/rejected"] == 13
    assert counts["prompts/pairs"] == len(pairs) > 0
    assert counts["prompts/ties"] == sum(r["category"] == "tie" for r in prompt_rejects)
    assert counts["responses/sampled"] == 12 * 6 and counts["responses/unscorable"] == 0
    assert json.loads((out / "summary.json").read_text())["counts"] == counts

    too_long = [r for r in prompt_rejects if r["category"] == "too_long"]
    assert [(r["index"], r["prompt"]) for r in too_long] == [(5, LONG_PROMPT)]
    assert "21 tokens > --max_prompt_len 16" in too_long[0]["reason"]
    for tie in (r for r in prompt_rejects if r["category"] == "tie"):
        assert len(set(tie["rewards"])) == 1 or "same text" in tie["reason"]


def test_pairs_are_max_and_min_reward_responses_in_train_dpo_form(one_rank_run, tiny_model, prompt_file):
    from openrlhf.datasets.reward_dataset import preprocess_data

    out, _ = one_rank_run
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    inputs = read_prompts(prompt_file)
    for pair in read_jsonl(out / "pairs.jsonl"):
        assert pair["chosen_reward"] > pair["rejected_reward"]
        assert pair["chosen_reward"] == max(pair["rewards"]) and pair["rejected_reward"] == min(pair["rewards"])
        chosen = pair["responses"][pair["rewards"].index(pair["chosen_reward"])]
        rejected = pair["responses"][pair["rewards"].index(pair["rejected_reward"])]
        assert chosen != rejected
        # what OpenRLHF's DPO dataset makes of the row with --data.apply_chat_template, as here
        prompt, chosen_text, rejected_text, _ = preprocess_data(
            pair, prompt_key="prompt", apply_chat_template=tokenizer.apply_chat_template, is_dpo=True)
        assert prompt == f"<|user|>{inputs[pair['index']]['prompt']}<|assistant|>"  # as the policy saw it
        assert (chosen_text, rejected_text) == (chosen + "</s>", rejected + "</s>")
        assert len(pair["responses"]) == len(pair["rewards"]) == len(pair["truncated"]) == 6
        assert set(pair["info"]) == set(METRICS.names())
        assert pair["info"]["A_min"] == pytest.approx(pair["chosen_reward"] - pair["rejected_reward"], abs=1e-6)


def test_next_prompts_carry_lineage_and_summary_has_every_metric(one_rank_run, prompt_file):
    out, summary = one_rank_run
    next_set = read_jsonl(out / "next_prompts.jsonl")
    inputs = {r["prompt"] for r in read_prompts(prompt_file)}
    counts = summary["counts"]
    assert len(next_set) == counts["next/evolved"] + counts["next/original"] == 12  # the estimated prompts
    assert counts["next/evolved"] > 0
    for row in next_set:
        assert all(key in row for key in LINEAGE)
        if row["eva_origin"] == "evolved":
            assert row["eva_parent"] in inputs and row["eva_depth"] == 1 and row["label"] == solve(row["prompt"])
        else:
            assert row["eva_origin"] == "seed" and row["prompt"] in inputs and row["prompt"] != LONG_PROMPT
    assert set(summary["info"]) == set(METRICS.names())
    assert summary["info"]["uniform"]["mean"] == 1.0
    assert {"estimate_s", "creator_s", "total_s"} <= set(summary["timings"])
    assert summary["args"]["rollout.n_samples_per_prompt"] == 6 and summary["world_size"] == 1


def test_resume_rebuilds_only_the_missing_shard_and_gives_identical_outputs(one_rank_run, tiny_model, prompt_file,
                                                                            tmp_path):
    original, _ = one_rank_run
    out = tmp_path / "resumed"
    shutil.copytree(original, out)
    for name in OUTPUTS:
        (out / name).unlink()
    (out / "shards" / "estimate-0-00001.jsonl").unlink()
    summary = main(cli_args(tiny_model, prompt_file, out))
    assert summary["counts"]["shards/estimated_now"] == 1
    for name in ("pairs.jsonl", "next_prompts.jsonl", "rejects.jsonl", "shards/estimate-0-00001.jsonl"):
        assert (out / name).read_bytes() == (original / name).read_bytes(), name

    # the creator flags are not part of the estimates: another metric reuses every shard
    again = main(cli_args(tiny_model, prompt_file, out, "--eva.metric", "A_avg", "--eva.sample_mode", "greedy"))
    assert again["counts"]["shards/estimated_now"] == 0
    assert (out / "pairs.jsonl").read_bytes() == (original / "pairs.jsonl").read_bytes()
    # estimates made with other settings are never mixed in
    with pytest.raises(ValueError, match=r"other settings \(n changed\)"):
        main(cli_args(tiny_model, prompt_file, out, n=5))


def test_evol_instruct_rewrites_with_the_policy_on_reused_estimates(one_rank_run, tiny_model, prompt_file, tmp_path):
    original, _ = one_rank_run
    out = tmp_path / "evol"
    shutil.copytree(original / "shards", out / "shards")
    summary = main(cli_args(tiny_model, prompt_file, out, "--eva.evolver", "evol_instruct",
                            "--eva.evolutions_per_prompt", "1", "--eva.evolve_max_new_tokens", "6"))
    assert summary["counts"]["shards/estimated_now"] == 0
    assert summary["counts"]["children/generated"] + summary["counts"].get("evolver/unparsable", 0) == 6
    evolved = [r for r in read_jsonl(out / "next_prompts.jsonl") if r["eva_origin"] == "evolved"]
    assert evolved and all(r["eva_method"] in EVOLVE_METHODS and r["label"] is None for r in evolved)


def test_llm_evolver_options_feedback_and_the_rewriter_on_reused_estimates(one_rank_run, tiny_model, prompt_file,
                                                                          tmp_path):
    """evol_complexity with feedback and two parents per call rewrites with the policy; every output is
    accounted for (child, filtered child, or evolver reject); --eva.rewrite_chosen keeps both answers."""
    original, _ = one_rank_run
    out = tmp_path / "evol"
    shutil.copytree(original / "shards", out / "shards")
    summary = main(cli_args(tiny_model, prompt_file, out, "--eva.evolver", "evol_complexity", "--eva.evolve_feedback",
                            "--eva.evolve_parents", "2", "--eva.evolver_options", '{"methods": ["reasoning"]}',
                            "--eva.evolutions_per_prompt", "2", "--eva.evolve_max_new_tokens", "6",
                            "--eva.rewrite_chosen"))
    counts = summary["counts"]
    assert counts["shards/estimated_now"] == 0
    assert counts["evolver/feedback_used"] == 12  # 6 parents x 2 children, each with its rollouts shown
    filtered = sum(value for key, value in counts.items() if key.startswith("filter/"))
    assert counts["children/generated"] + counts.get("evolver/unparsable", 0) == 12
    assert counts["children/generated"] == counts["children/accepted"] + filtered
    assert {f"filter/{name}" for name in DEFAULT_FILTERS} <= set(counts)
    rejects = read_jsonl(out / "rejects.jsonl")
    assert sum(r["stage"] == "evolver" for r in rejects) == counts.get("evolver/unparsable", 0)
    assert sum(r["stage"] == "child" for r in rejects) == filtered
    assert counts["creator_llm/calls"] == 2 and counts["creator_llm/prompts"] == 12 + counts["prompts/pairs"]

    pairs = read_jsonl(out / "pairs.jsonl")
    assert pairs and sum(value for key, value in counts.items() if key.startswith("rewrite/")) == len(pairs)
    for pair in pairs:
        assert pair["chosen_original"][0]["content"] in pair["responses"]
        if pair["chosen_rewritten"]:
            assert pair["chosen"] != pair["chosen_original"] and pair["rewrite_kept_reason"] is None
        else:
            assert pair["chosen"] == pair["chosen_original"] and pair["rewrite_kept_reason"]


def test_tree_bon_scores_candidates_by_informativeness(one_rank_run, tiny_model, prompt_file, tmp_path):
    """tree_bon's "info" scorer samples the policy on each candidate and scores it with the run's reward."""
    original, _ = one_rank_run
    out = tmp_path / "tree"
    shutil.copytree(original / "shards", out / "shards")
    summary = main(cli_args(tiny_model, prompt_file, out, "--eva.evolver", "tree_bon", "--eva.evolver_options",
                            '{"width": 2, "scorer": "info"}', "--eva.evolutions_per_prompt", "1",
                            "--eva.evolve_max_new_tokens", "6", "--eva.filters", "empty"))
    counts = summary["counts"]
    evolved = [r for r in read_jsonl(out / "next_prompts.jsonl") if r["eva_origin"] == "evolved"]
    assert counts["evolver/children"] == counts["children/generated"] == len(evolved) > 0
    assert all(r["tree_level"] == 1 and (r["tree_score"] is None or r["tree_score"] >= 0) for r in evolved)
    losers = [r for r in read_jsonl(out / "rejects.jsonl") if r["stage"] == "evolver" and r["category"] == "tree_bon"]
    assert len(losers) + counts.get("evolver/base_unparsable", 0) == 6  # 6 parents x (2 candidates - 1 winner)



@pytest.mark.slow
def test_two_ranks_under_the_deepspeed_launcher_match_one_rank(one_rank_run, tiny_model, prompt_file, tmp_path):
    original, _ = one_rank_run
    out = tmp_path / "two_ranks"
    launcher = Path(sys.executable).parent / "deepspeed"
    command = [str(launcher), "--num_gpus", "2", "--master_port", str(compat.free_port()), "--module",
               "openrlhf_eva.evolve", *cli_args(tiny_model, prompt_file, out)]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # rank r estimated shards i % 2 == r; rank 0 alone wrote the outputs
    assert sorted(p.name for p in (out / "shards").glob("estimate-*")) == [
        "estimate-0-00000.jsonl", "estimate-0-00002.jsonl", "estimate-1-00001.jsonl"]
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    for name in ("pairs.jsonl", "next_prompts.jsonl", "rejects.jsonl"):
        assert (out / name).read_bytes() == (original / name).read_bytes(), name


def test_reward_errors_and_unscorable_responses_become_rejects(tiny_model, tmp_path):
    reward = tmp_path / "picky_reward.py"
    reward.write_text(
        "import torch\n\n"
        "def reward_func(queries, prompts, labels):\n"
        "    if 'rev 28' in prompts[0]:\n"
        "        raise ValueError('cannot judge reversals of 28')\n"
        "    nan = 'copy' in prompts[0]\n"
        "    return torch.tensor([float('nan') if nan and i else float(i % 3) for i in range(len(queries))])\n")
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": "rev 28", "label": "82"}, {"prompt": "copy 5", "label": "5"},
                          {"prompt": "sort 31", "label": "13"}, {"prompt": "add 1+2", "label": "3"}])
    summary = main(cli_args(tiny_model, prompts, tmp_path / "out", reward=reward, n=3, shard_size=4, chat=False))
    rejects = {r["prompt"]: r for r in read_jsonl(tmp_path / "out" / "rejects.jsonl")}
    assert rejects["rev 28"]["category"] == "reward_error"
    assert str(reward) in rejects["rev 28"]["reason"] and "cannot judge reversals" in rejects["rev 28"]["reason"]
    assert rejects["copy 5"]["category"] == "unscorable" and rejects["copy 5"]["rewards"][1:] == [None, None]
    assert "1 of 3 responses could be scored" in rejects["copy 5"]["reason"]
    pairs = read_jsonl(tmp_path / "out" / "pairs.jsonl")
    # without --data.apply_chat_template the policy saw the bare prompt, and train_dpo reads strings
    assert sorted(p["prompt"] for p in pairs) == ["add 1+2", "sort 31"]
    assert all(p["chosen"] in p["responses"] and p["rejected"] in p["responses"] for p in pairs)
    counts = summary["counts"]
    assert (counts["reject/reward_error"], counts["reject/unscorable"], counts["prompts/pairs"]) == (1, 1, 2)
    assert counts["responses/unscorable"] == 3 + 2 and summary["oracle_stats"]["prompts_failed"] == 1


def write_tiny_classifier(path):
    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, num_labels=1,
                         hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2)
    torch.manual_seed(3)
    model = LlamaForSequenceClassification(config)
    model.score.weight.data *= 50
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_pairwise_model_adds_win_probabilities_for_sppo(tiny_model, prompt_file, tmp_path):
    classifier = write_tiny_classifier(tmp_path / "pairwise")
    out = tmp_path / "out"
    main(cli_args(tiny_model, prompt_file, out, "--reward.pairwise_model", str(classifier), n=3))
    pairs = read_jsonl(out / "pairs.jsonl")
    assert pairs
    for pair in pairs:
        rates = pair["win_rates"]
        assert len(rates) == 3 and abs(sum(rates) / 3 - 0.5) < 1e-6
        assert pair["chosen_win_prob"] == rates[pair["rewards"].index(pair["chosen_reward"])]
        assert pair["rejected_win_prob"] == rates[pair["rewards"].index(pair["rejected_reward"])]

    # alone, the pairwise model is the reward: each response scores its mean win rate
    alone = tmp_path / "alone"
    main(cli_args(tiny_model, prompt_file, alone, "--reward.pairwise_model", str(classifier), reward=None, n=3))
    for pair in read_jsonl(alone / "pairs.jsonl"):
        assert pair["rewards"] == pytest.approx(pair["win_rates"], abs=1e-6)
        assert pair["chosen_win_prob"] == pytest.approx(max(pair["win_rates"]))


# ---------------------------------------------------------------- vLLM glue, with a fake shaped like vLLM's API


class FakeSamplingParams:
    """vllm.SamplingParams' fields that the CLI sets."""

    def __init__(self, n=1, temperature=1.0, top_p=1.0, max_tokens=16, seed=None, **kwargs):
        self.n, self.temperature, self.top_p, self.max_tokens, self.seed = n, temperature, top_p, max_tokens, seed


class FakeCompletionOutput:
    def __init__(self, index, text, token_ids, finish_reason):
        self.index, self.text, self.token_ids, self.finish_reason = index, text, token_ids, finish_reason


class FakeRequestOutput:
    def __init__(self, prompt_token_ids, outputs):
        self.prompt_token_ids, self.outputs = prompt_token_ids, outputs


class FakeLLM:
    """vllm.LLM: generate(prompts, sampling_params) -> one RequestOutput per prompt, n outputs each.

    Samples digit strings from random.Random(params.seed), so a prompt's samples depend on its seed
    only, as vLLM's per-request seeds make them; eos is appended to the token ids of stopped ones.
    """

    created = []

    def __init__(self, model, seed=None, dtype=None, trust_remote_code=False, **kwargs):
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.requests = []
        FakeLLM.created.append(self)

    def generate(self, prompts, sampling_params, use_tqdm=True):
        params_list = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        results = []
        for prompt, params in zip(prompts, params_list):
            self.requests.append((prompt, params))
            rng = random.Random(params.seed)
            outputs = []
            for index in range(params.n):
                text = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 4)))
                finish = "stop" if rng.random() < 0.7 else "length"
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                ids += [self.tokenizer.eos_token_id] if finish == "stop" else []
                outputs.append(FakeCompletionOutput(index, text, ids, finish))
            results.append(FakeRequestOutput(prompt["prompt_token_ids"], outputs))
        return results


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.created = []
    return module


def test_generate_with_vllm_glue(fake_vllm, tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    llm = FakeLLM(tiny_model)
    prompts = ["<|user|>copy 12<|assistant|>", "<|user|>rev 3<|assistant|>"]
    rollouts = generate_with_vllm(llm, tokenizer, prompts, 4, temperature=0.7, top_p=0.9, max_new_tokens=8,
                                  seeds=[100, 101])
    assert rollouts.prompts == prompts
    assert [len(r) for r in rollouts.responses] == [len(r) for r in rollouts.queries] == [4, 4]
    (first_prompt, first_params), (_, second_params) = llm.requests
    assert first_prompt == {"prompt_token_ids": tokenizer(prompts[0], add_special_tokens=False)["input_ids"]}
    assert (first_params.n, first_params.temperature, first_params.top_p, first_params.max_tokens) == (4, 0.7, 0.9, 8)
    assert (first_params.seed, second_params.seed) == (100, 101)
    for k, prompt in enumerate(prompts):
        for response, query, cut in zip(rollouts.responses[k], rollouts.queries[k], rollouts.truncated[k]):
            assert query == prompt + response + ("" if cut else "</s>")


def test_cli_on_the_vllm_path_is_independent_of_shard_size(fake_vllm, tiny_model, prompt_file, tmp_path):
    outs = []
    for shard_size in (2, 13):
        out = tmp_path / f"shards_of_{shard_size}"
        summary = main(cli_args(tiny_model, prompt_file, out, "--generate_backend", "vllm", shard_size=shard_size))
        assert summary["backend"] == "vllm" and summary["counts"]["prompts/pairs"] > 0
        outs.append(out)
    # vLLM seeds each prompt from its global index: the shards do not shape the samples
    seeds = [params.seed for _, params in FakeLLM.created[0].requests]
    assert seeds == [42 + i for i in range(13) if i != 5]  # the too-long prompt is never sent
    for name in ("pairs.jsonl", "next_prompts.jsonl", "rejects.jsonl"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "rev 12", "label": "21"}, {"question": "rev 3", "label": "3"}], "row 2: missing prompt key 'prompt'"),
    ([{"prompt": "  ", "label": "1"}], "row 1: prompt 'prompt' is empty"),
    ([{"prompt": "rev 12"}], "row 1: missing label key 'label'"),
])
def test_bad_prompt_rows_name_the_file_and_row(tiny_model, tmp_path, rows, message):
    prompts = tmp_path / "bad.jsonl"
    write_jsonl(prompts, rows)
    with pytest.raises(PromptFileError, match=f"{prompts}: {message}"):
        main(cli_args(tiny_model, prompts, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, error, message", [
    (["--eva.metric", "A_max"], UnknownNameError, "unknown metric 'A_max'; available: A_avg"),
    (["--eva.evolver", "mutate"], UnknownNameError, "unknown evolver 'mutate'"),
    (["--eva.sample_mode", "best"], UnknownNameError, "unknown sampler 'best'"),
    (["--eva.filters", "empty", "toxic"], UnknownNameError, "unknown filter 'toxic'"),
    (["--eva.evolver_path", ""], ValueError, "--eva.evolver task needs --eva.evolver_path"),
    (["--reward.model_name_or_path", "/nonexistent/rm"], ValueError, "pass one reward"),
    (["--n_samples_per_prompt", "1"], ValueError, "a preference pair needs two responses"),
    (["--eva.sample_fraction", "0"], ValueError, "sample_fraction must be in"),
    (["--eva.evolve_feedback"], ValueError, "evolver 'task' does not take --eva.evolve_feedback"),
    (["--eva.filter_options", '{"length": {"min_tokens": 9, "max_tokens": 1}}'], ValueError, "min_tokens <= max"),
    (["--eva.eval_prompts", "/nonexistent/eval.jsonl"], FileNotFoundError, "/nonexistent/eval.jsonl"),
    (["--eva.evolver_backend", "openai"], ValueError, "needs --eva.evolver_url and --eva.evolver_model"),
])
def test_bad_flags_fail_before_any_model_runs(tiny_model, prompt_file, tmp_path, extra, error, message):
    with pytest.raises(error, match=message):
        main(cli_args(tiny_model, prompt_file, tmp_path / "out", *extra))
    assert not (tmp_path / "out" / "shards").exists()


def test_missing_reward_sources_are_clear_errors(tiny_model, prompt_file, tmp_path):
    with pytest.raises(ValueError, match="no reward: pass --reward.remote_url"):
        main(cli_args(tiny_model, prompt_file, tmp_path / "out", reward=None))
    with pytest.raises(RewardError, match="reward model '/nonexistent/rm' is not a local checkpoint"):
        main(cli_args(tiny_model, prompt_file, tmp_path / "out", "--reward.model_name_or_path", "/nonexistent/rm",
                      reward=None))
    with pytest.raises(RewardError, match=f"reward_func file {tmp_path}/none.py does not exist"):
        main(cli_args(tiny_model, prompt_file, tmp_path / "out", reward=tmp_path / "none.py"))


def test_reward_function_raising_everywhere_names_the_file(tiny_model, tmp_path):
    reward = tmp_path / "broken_reward.py"
    reward.write_text("def reward_func(queries, prompts, labels):\n    raise RuntimeError('model server down')\n")
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": "rev 28", "label": "82"}, {"prompt": "copy 5", "label": "5"}])
    with pytest.raises(RewardError, match=f"every prompt of the batch; first: {reward}: .*model server down"):
        main(cli_args(tiny_model, prompts, tmp_path / "out", reward=reward, n=2))


def test_module_entry_point_reports_bad_input_without_a_traceback(tiny_model, prompt_file, tmp_path):
    command = [sys.executable, "-m", "openrlhf_eva.evolve",
               *cli_args(tiny_model, prompt_file, tmp_path / "out", "--eva.metric", "A_max")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "openrlhf_eva.evolve: error: unknown metric 'A_max'" in result.stderr
    assert "Traceback" not in result.stderr
