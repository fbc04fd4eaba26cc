"""eva-bench: the smoke scale end to end through the real trainers, the results schema, the statistics."""

import json

import numpy as np
import pytest
from hypothesis import given, strategies as st

from openrlhf_eva import bench, train_rloo
from openrlhf_eva.embedded.data import SPLITS


@given(st.lists(st.floats(-1, 1), min_size=2, max_size=8), st.floats(-1, 1))
def test_bootstrap_ci_contains_the_mean_and_shifts_with_the_data(values, shift):
    mean, (lo, hi) = bench.bootstrap_ci(values)
    assert lo - 1e-9 <= mean <= hi + 1e-9
    assert min(values) - 1e-9 <= lo and hi <= max(values) + 1e-9
    shifted_mean, (shifted_lo, shifted_hi) = bench.bootstrap_ci([v + shift for v in values])
    assert shifted_mean == pytest.approx(mean + shift, abs=1e-9)
    assert (shifted_lo, shifted_hi) == pytest.approx((lo + shift, hi + shift), abs=1e-9)


def test_every_arm_is_a_valid_train_rloo_command(tmp_path):
    config = bench.SCALES["full"]
    for arm in bench.ARMS:
        args = train_rloo.parse_args(bench.rloo_flags(config, arm, tmp_path, tmp_path / "seeds.jsonl", tmp_path, 0))
        assert (args.eva.evolver is None) == (arm == "static")
        if arm not in ("static", "no_evolve"):
            assert args.eva.metric == ("A_min" if arm == "A_min_greedy" else arm)
            assert args.eva.sample_mode == ("greedy" if arm == "A_min_greedy" else "weighted")
        # equal budgets: every arm serves budget x seeds prompts
        assert args.eva.total_prompts in (None, f"{config.rloo_budget}x")
        assert arm != "static" or args.train.num_episodes == int(config.rloo_budget)


def test_smoke_bench_writes_the_results_schema_plots_and_resumes(warm_tiny_model, tmp_path):
    _, model_dir = warm_tiny_model
    argv = ["--scale", "smoke", "--out", str(tmp_path / "bench"), "--warm-start", str(model_dir), "--workers", "1",
            "--publish", str(tmp_path / "published")]
    results = bench.main(argv)

    assert set(results["arms"]) == {f"{s}/{a}" for s in ("rloo", "dpo") for a in ("static", "no_evolve", "A_min")}
    for key, arm in results["arms"].items():
        assert arm["seeds"] == [0]
        for split in SPLITS:
            stat = arm["test"][split]
            assert 0 <= stat["mean"] <= 1 and stat["ci95"][0] <= stat["mean"] <= stat["ci95"][1]
        if not key.endswith("/static"):
            deltas = arm["delta_vs_static"]
            for split in SPLITS:
                assert deltas[split]["mean"] == pytest.approx(
                    arm["test"][split]["mean"] - results["arms"][key.split("/")[0] + "/static"]["test"][split]["mean"])
        assert arm["curve"][0]["step"] == 0 and arm["curve"][-1]["step"] >= 1
    # the online arms log their curve and, with eva on, the buffer's composition
    run = tmp_path / "bench" / "rloo" / "A_min" / "seed_0" / "model"
    composition = [json.loads(line) for line in open(run / "buffer_composition.jsonl")]
    assert composition and sum(composition[-1]["kinds"].values()) > 0
    assert len(open(run / "bench_curve.jsonl").readlines()) >= 2
    # no_evolve never writes a new prompt: its buffer holds copies of seed prompts only
    seeds = {json.loads(line)["prompt"] for line in open(tmp_path / "bench" / "rloo" / "no_evolve" / "seed_0" /
                                                           "seeds.jsonl")}
    buffer = [json.loads(line)["text"] for line in open(tmp_path / "bench" / "rloo" / "no_evolve" / "seed_0" /
                                                        "model" / "eva_buffer.jsonl")]
    assert buffer and set(buffer) <= seeds

    published = {p.name for p in (tmp_path / "published").iterdir()}
    assert {"results.json", "RESULTS.md", "rloo_curves.png", "dpo_curves.png", "info_by_metric.png",
            "rloo_buffer_drift.png"} <= published
    assert "| A_min |" in (tmp_path / "published" / "RESULTS.md").read_text()
    saved = json.loads((tmp_path / "published" / "results.json").read_text())
    assert saved["arms"].keys() == results["arms"].keys() and np.isfinite(saved["config"]["minutes"])

    # a rerun finds every run's result.json and trains nothing
    logs = sorted((tmp_path / "bench").glob("*/*/seed_0/run.log"))
    sizes = [p.stat().st_size for p in logs]
    again = bench.main(argv)
    assert len(logs) == 6 and [p.stat().st_size for p in logs] == sizes
    assert again["arms"]["rloo/A_min"]["test"] == results["arms"]["rloo/A_min"]["test"]
