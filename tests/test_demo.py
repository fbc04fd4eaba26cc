"""The embedded CPU default end to end: OpenRLHF SFT warm start on CPU, rollouts, and the demo's creator step."""

import json

import pytest
import torch

from openrlhf_eva.embedded.warm_start import DONE_FILE, WarmStartConfig, warm_start

SMALL = WarmStartConfig(seed=0, sft_samples=256, epochs=1)  # what the warm_tiny_model fixture builds


@pytest.fixture
def warm_model(warm_tiny_model):
    return warm_tiny_model


@pytest.mark.slow
def test_warm_start_trains_through_openrlhf_sft_and_is_cached(warm_model):
    out, model_dir = warm_model
    record = json.loads((out / DONE_FILE).read_text())
    assert record["config"]["sft_samples"] == 256
    assert set(record["held_out_greedy"]) == {"in_dist", "harder", "new_kind", "all"}
    assert record["held_out_greedy"]["all"]["n"] == 336
    # upstream's SFT trainer ran and logged falling loss
    log = (out / "sft.log").read_text()
    assert "Train step of epoch 0" in log
    # the trained weights differ from the initial ones
    from transformers import AutoModelForCausalLM

    init = AutoModelForCausalLM.from_pretrained(out / "init")
    trained = AutoModelForCausalLM.from_pretrained(model_dir)
    assert not torch.equal(init.lm_head.weight, trained.lm_head.weight)
    # a second call is a cache hit: no new training
    mtime = (out / DONE_FILE).stat().st_mtime
    assert warm_start(out, SMALL, verbose=False) == model_dir
    assert (out / DONE_FILE).stat().st_mtime == mtime


@pytest.mark.slow
def test_rollouts_are_deterministic_per_seed(warm_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openrlhf_eva.rollout import sample_responses

    _, model_dir = warm_model
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompts = ["rev 123", "copy 45", "add 1+2"]
    a = sample_responses(model, tokenizer, prompts, n=3, max_new_tokens=6, seed=1, progress=False)
    b = sample_responses(model, tokenizer, prompts, n=3, max_new_tokens=6, seed=1, progress=False)
    assert a.responses == b.responses and len(a.responses) == 3 and all(len(r) == 3 for r in a.responses)
    assert a.prompts[0] == "<|user|>rev 123<|assistant|>"
    for prompt, queries, truncated in zip(a.prompts, a.queries, a.truncated):
        for q, cut in zip(queries, truncated):
            # a query ends where its response ends (an RM reads its score there): no trailing pads
            assert q.startswith(prompt) and "<pad>" not in q
            assert q.endswith("</s>") != cut and q.count("</s>") <= 1
    assert tokenizer.padding_side == "right"  # restored


@pytest.mark.slow
def test_demo_runs_one_creator_step(warm_model, tmp_path, capsys):
    from openrlhf_eva import demo

    out, _ = warm_model
    # reuse the cached small model: the demo's model folder is <out>/model
    (tmp_path / "model").symlink_to(out, target_is_directory=True)
    demo.main(["--out", str(tmp_path), "--num-seeds", "16", "--n", "4", "--seed", "0",
               "--sft-samples", "256", "--sft-epochs", "1", "--bench-scale", "smoke", "--workers", "1"])
    text = capsys.readouterr().out
    assert "Most informative seed prompts" in text and "Evolved children beside their parents" in text
    for metric in ("A_min", "A_avg", "A_dis", "var", "avg", "inv_avg", "inv_A_min", "uniform"):
        assert f"{metric}  " in text
    step_dir = tmp_path / "creator_step"
    estimates = [json.loads(line) for line in (step_dir / "estimates.jsonl").read_text().splitlines()]
    assert len(estimates) == 16 and sum(e["selected"] for e in estimates) == 4
    for e in estimates:
        assert len(e["rewards"]) == 4 and all(0.0 <= r <= 1.0 for r in e["rewards"])
        assert abs(e["info"]["A_min"] - (max(e["rewards"]) - min(e["rewards"]))) < 1e-6
    children = [json.loads(line) for line in (step_dir / "children.jsonl").read_text().splitlines()]
    assert children and all(c["parent"] and c["method"] for c in children)
    next_set = [json.loads(line) for line in (step_dir / "next_prompts.jsonl").read_text().splitlines()]
    assert len(next_set) == 16
    # static vs eva for both solvers (the bench's smoke settings), the table, and the HTML report
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert set(results["families"]["digits"]["arms"]) == {"rloo/static", "rloo/eva", "dpo/static", "dpo/eva"}
    assert text.count("Held-out greedy reward after") == 2 and "eva (shipped defaults)" in text
    assert text.count("1 seed: no CI") == 2 and "[" not in text.split("eva - static")[1].splitlines()[0]
    report = tmp_path / "report.html"
    assert report.exists() and f"HTML report (creator step, runs, buffers, evolved and rejected prompts): {report}" in text
    summary = json.loads((step_dir / "summary.json").read_text())
    assert summary["counts"]["children/generated"] == len(children) + summary["counts"].get("filter/duplicate", 0) \
        + summary["counts"].get("filter/empty", 0) + summary["counts"].get("filter/unchanged", 0)
