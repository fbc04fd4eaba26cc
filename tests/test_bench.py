"""eva-bench: a user's task folder end to end through the real trainers, the results schema, the statistics."""

import dataclasses
import json
import shutil
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, strategies as st

from openrlhf_eva import bench, bench_stats, bench_tasks, evolve, train_rloo
from openrlhf_eva.embedded import letters


@given(st.lists(st.floats(-1, 1), min_size=3, max_size=8), st.floats(-1, 1))
def test_bootstrap_ci_contains_the_mean_and_shifts_with_the_data(values, shift):
    mean, (lo, hi) = bench_stats.bootstrap_ci(values)
    assert lo - 1e-9 <= mean <= hi + 1e-9
    assert min(values) - 1e-9 <= lo and hi <= max(values) + 1e-9
    shifted_mean, (shifted_lo, shifted_hi) = bench_stats.bootstrap_ci([v + shift for v in values])
    assert shifted_mean == pytest.approx(mean + shift, abs=1e-9)
    assert (shifted_lo, shifted_hi) == pytest.approx((lo + shift, hi + shift), abs=1e-9)


def test_fewer_than_three_seeds_give_no_interval():
    assert bench_stats.bootstrap_ci([0.5]) == (0.5, None)
    assert bench_stats.bootstrap_ci([0.2, 0.4]) == (pytest.approx(0.3), None)


@pytest.fixture(scope="module")
def letters_dir(tmp_path_factory):
    return letters.write_task_dir(tmp_path_factory.mktemp("letters"), num_seeds=64, num_sft=64)


def test_the_uniform_target_needs_a_ci_above_zero_on_one_family():
    from openrlhf_eva import bench_report

    def family(lo):
        arm = {"delta_vs_static": {}, "delta_vs_uniform": {"all": {"mean": 0.01, "ci95": [lo, 0.02]}}}
        return {"arms": {"rloo/eva": arm}}

    def joint(*lows):
        results = {"families": {f"f{i}": family(lo) for i, lo in enumerate(lows)}}
        [row] = [r for r in bench_report.targets(results) if r["target"].startswith("rloo: eva - uniform")]
        return row["met"], row["text"]

    # every family's own row has its mean above zero: only the joint row asks for one interval above zero
    assert joint(-0.01, -0.005) == (False, "none")
    assert joint(-0.01, 0.001) == (True, "f1")


def test_a_task_with_its_own_split_names_gets_its_splits_in_the_table_and_no_verdict_on_missing_ones():
    from openrlhf_eva import bench_report

    stat = {"mean": 0.01, "ci95": [0.005, 0.02]}
    test = {s: {"mean": 0.3, "ci95": [0.2, 0.4], "sampled": 0.2} for s in ("easy", "all")}
    arm = {"test": test, "seeds": [0, 1, 2], "steps": 8, "rollouts": 64, "delta_vs_theta0": {"all": stat},
           "delta_vs_static": {"all": stat, "easy": stat}, "delta_vs_uniform": {"all": stat}}
    family = {"splits": ["easy", "all"], "theta_0": {s: {"reward": 0.25, "sampled": 0.2} for s in ("easy", "all")},
              "arms": {"rloo/static": arm, "rloo/eva": arm}}
    results = {"families": {"mine": family}}
    rows = {r["target"]: r for r in bench_report.targets(results)}
    assert rows["mine rloo: eva - static on all, CI low > 0"]["met"] is True
    for target in ("mine rloo: eva - static on harder > 0", "mine rloo: eva in_dist >= static - 0.02",
                   "mine rloo: static - θ0 on in_dist, CI low > 0"):
        assert rows[target]["met"] is None and "has no" in rows[target]["text"], target
    header = next(line for line in bench_report.markdown_table(results).splitlines() if line.startswith("| arm"))
    assert header.split(" | ")[3:] == ["sampled mean@k (all)", "Δ vs static: all", "Δ vs static: easy",
                                       "Δ vs uniform: all", "Δ vs θ0: all", "steps", "rollouts |"]


def test_every_arm_is_a_valid_train_rloo_command_with_the_same_budget(tmp_path, letters_dir):
    config = bench.SCALES["full"]
    task = bench_tasks.load_task_dir(letters_dir)
    defaults = train_rloo.parse_args(["--actor.model_name_or_path", "m", "--data.prompt_dataset", "d",
                                      "--reward.remote_url", "r.py", "--rollout.n_samples_per_prompt", "2"])
    for arm in (a for a in bench.ARMS if a not in bench.DPO_ONLY):
        args = train_rloo.parse_args(bench.rloo_flags(config, task, arm, tmp_path, tmp_path / "seeds.jsonl",
                                                      tmp_path, 0))
        # every arm keeps the shipped KL penalty: with none, the policy stops emitting EOS (bench.py)
        assert args.algo.kl.init_coef == defaults.algo.kl.init_coef == 0.01
        assert (args.eva.evolver is None) == (arm in ("static", "dynamic_filtering"))
        assert args.algo.dynamic_filtering_enable == (arm == "dynamic_filtering")
        assert tuple(args.algo.dynamic_filtering_range) == (0, 1)  # upstream's default band
        if args.eva.evolver is not None:
            assert args.eva.total_prompts == f"{config.rloo_budget}x"
            assert args.eva.metric == (bench.arm_metric(arm, "rloo") or "A_avg")
            # eva is the shipped defaults: curriculum, filters and sampling untouched (no_evolve keeps the
            # copies its replay evolver returns, which the default filters reject)
            for name in ("seed_replay", "frontier_quantile", "sample_mode", "filters", "top_frac", "n_new"):
                expected = ["empty"] if (arm, name) == ("no_evolve", "filters") else getattr(defaults.eva, name)
                assert getattr(args.eva, name) == expected, (arm, name)
        else:
            assert args.train.num_episodes == int(config.rloo_budget)


def test_the_no_evolve_arm_replays_informative_prompts_instead_of_training_like_static(tmp_path, letters_dir):
    """The replay evolver's children are their parents unchanged: with the default filters the buffer
    stayed empty and the arm was static, bitwise (RESULTS.md before the fix). The arm's own flags,
    through the real prompt source, must put the informative prompts back in the buffer."""
    import torch

    from openrlhf_eva.creator import build_evolver
    from openrlhf_eva.creator.online import OnlinePromptSource
    from openrlhf_eva.creator.flags import build_creator_filters, curriculum_options

    task = bench_tasks.load_task_dir(letters_dir)
    args = train_rloo.parse_args(bench.rloo_flags(bench.SCALES["full"], task, "no_evolve", tmp_path,
                                                  tmp_path / "seeds.jsonl", tmp_path, 0))
    assert args.eva.evolver == "replay"
    source = OnlinePromptSource(task.seeds[:16], 8, build_evolver(args.eva.evolver), capacity=32,
                                n_new=args.eva.n_new, metric=args.eva.metric,
                                filters=build_creator_filters(args.eva), **curriculum_options(args.eva))
    batch = source.next_batch()
    rewards = torch.tensor([[0.0, 1.0, 0.5, 0.5]] * len(batch))  # every prompt informative, none below the bar
    metrics = source.observe(rewards, step=1)
    assert metrics["eva/children_accepted"] == metrics["eva/children_generated"] > 0
    assert {entry.text for entry in source.buffer} <= {p.prompt for p in batch}


def test_candidate_eva_flags_reach_every_evolving_arm_and_no_static_one(tmp_path, letters_dir):
    """--set rloo_eva_flags=...: a candidate default tried on a dev set, recorded in the cache key."""
    args = bench.build_parser().parse_args(["--set", "rloo_eva_flags=--eva.seed_replay 0.75 --eva.n_new 2"])
    config = bench.configure(args)
    assert bench.config_key(config, solver="rloo") != bench.config_key(bench.SCALES["full"], solver="rloo")
    task = bench_tasks.load_task_dir(letters_dir)
    for arm in ("static", "dynamic_filtering", "eva", "uniform", "no_evolve", "A_min"):
        parsed = train_rloo.parse_args(bench.rloo_flags(config, task, arm, tmp_path, tmp_path / "seeds.jsonl",
                                                        tmp_path, 0))
        evolving = arm not in ("static", "dynamic_filtering")
        assert (parsed.eva.seed_replay, parsed.eva.n_new) == ((0.75, 2) if evolving else (0.5, 4)), arm


def test_dpo_candidate_flags_reach_every_creator_arm_and_only_the_dpo_cache_key(tmp_path, letters_dir):
    """--set dpo_eva_flags=...: evolve flags for the DPO arms that run a creator. A solver's cache key
    leaves out the other solver's fields, so a DPO candidate keeps every cached RLOO run."""
    args = bench.build_parser().parse_args(["--set", "dpo_eva_flags=--eva.evolved_fraction 0.5"])
    config, full = bench.configure(args), bench.SCALES["full"]
    assert bench.config_key(config, tmp_path, "rloo") == bench.config_key(full, tmp_path, "rloo")
    assert bench.config_key(config, tmp_path, "dpo") != bench.config_key(full, tmp_path, "dpo")
    assert bench.config_key(config) == bench.config_key(full)  # theta_0's evaluation is shared
    # the static arm reads no eva flag: the candidate keeps its cached runs, and eva's are redone
    assert bench.config_key(config, tmp_path, "dpo", "static") == bench.config_key(full, tmp_path, "dpo", "static")
    assert bench.config_key(config, tmp_path, "dpo", "eva") != bench.config_key(full, tmp_path, "dpo", "eva")
    # at the pair options' former values no flag reaches eva: it has static's key
    former = bench.configure(bench.build_parser().parse_args(["--set", "dpo_pair_order=file",
                                                              "--set", "dpo_pair_pool=next"]))
    assert bench.config_key(former, tmp_path, "dpo", "static") == bench.config_key(former, tmp_path, "dpo", "eva")
    rloo_change = bench.configure(bench.build_parser().parse_args(["--set", "rloo_lr=1e-3"]))
    assert bench.config_key(rloo_change, tmp_path, "dpo") == bench.config_key(full, tmp_path, "dpo")
    shared_change = bench.configure(bench.build_parser().parse_args(["--set", "max_new_tokens=8"]))
    for solver in ("rloo", "dpo", None):
        assert bench.config_key(shared_change, tmp_path, solver) != bench.config_key(full, tmp_path, solver)
    # iterate's schedule options reach only the creator arms' DPO key; at their former values (the
    # behaviour before the fields existed) they are left out of the key, so older caches stay valid
    for item in ("dpo_seed_rounds=1", "dpo_replay=seeds", "dpo_pair_order=file", "dpo_pair_pool=next"):
        schedule = bench.configure(bench.build_parser().parse_args(["--set", item]))
        assert bench.config_key(schedule, tmp_path, "dpo", "eva") != bench.config_key(full, tmp_path, "dpo", "eva")
        for solver, arm in (("dpo", "static"), ("rloo", "eva"), (None, None)):
            assert bench.config_key(schedule, tmp_path, solver, arm) == bench.config_key(full, tmp_path, solver, arm)
    assert set(bench.ADDED_LATER) <= {f.name for f in dataclasses.fields(bench.BenchConfig)}
    assert bench.config_key(former, tmp_path, "dpo", "eva") == bench.config_key(
        dataclasses.replace(full, **{name: bench.ADDED_LATER[name] for name in bench.CREATOR_SCHEDULE}),
        tmp_path, "dpo", "eva")
    task = bench_tasks.load_task_dir(letters_dir)
    for arm in ("static", "static_ranked", "eva", "uniform", "no_evolve", "inv_A_min"):
        parsed = evolve.build_parser().parse_args(["--pretrain", "m", "--prompt_data", "p", "--output_dir", "o",
                                                   *bench.dpo_evolve_flags(config, task, arm, 0)])
        assert getattr(parsed, "eva.evolved_fraction") == (0.8 if arm.startswith("static") else 0.5), arm


def test_a_task_folder_runs_the_four_arms_a_user_compares_by_default(letters_dir):
    config = bench.configure(bench.build_parser().parse_args(["--task-dir", str(letters_dir)]))
    assert config.arms == ("static", "eva", "uniform", "dynamic_filtering")
    assert config.dpo_arms == ("static", "eva", "uniform")
    # each solver runs only the arms it has
    config = bench.configure(bench.build_parser().parse_args(["--arms", "static", "static_ranked", "eva",
                                                              "dynamic_filtering"]))
    assert config.arms == ("static", "eva", "dynamic_filtering")
    assert config.dpo_arms == ("static", "static_ranked", "eva")


def test_limits_grow_to_a_tasks_longest_answer_and_refuse_what_the_model_cannot_hold(tmp_path, letters_dir):
    """A task with answers longer than max_new_tokens (16): the bench raises it, and train_rloo's
    --data.max_len with it, to fit (plus a quarter for evolved rows) for every run and theta_0. An
    embedded family's limits and cache keys stay as they were. The warm start's cut of long SFT rows
    is checked end to end (test below)."""
    full = bench.SCALES["full"]
    fits, lengths = bench.fit_lengths(full, bench_tasks.load_task_dir(letters_dir), None)
    assert fits == full and lengths["raised"] == {}
    assert bench.config_key(fits, tmp_path, "rloo") == bench.config_key(full, tmp_path, "rloo")

    long = tmp_path / "long"
    shutil.copytree(letters_dir, long)
    payload = "abcdefghijklmnopqrstuvwxyz" * 2  # 52 characters: one token each for the tiny Llama
    with open(long / "test.jsonl", "a") as file:
        file.write(json.dumps({"prompt": f"rev {payload[:30]}", "label": payload[:30][::-1], "split": "harder"}) + "\n")
    with open(long / "sft.jsonl", "a") as file:
        file.write(json.dumps({"prompt": f"dbl {payload}", "response": payload[:20] * 2}) + "\n")
    task = bench_tasks.load_task_dir(long)
    config, lengths = bench.fit_lengths(full, task, None)
    # the longest answer is the SFT response, 40 tokens + EOS; prompts are measured on seed, test and dev rows
    assert lengths["answer"] == 41 and config.max_new_tokens == 41 + 10
    # --data.max_len holds prompt and answer: the longest prompt (36 tokens) and a quarter, then the answer
    assert lengths["prompt"] == 36 and config.rloo_max_len == 36 + 9 + 51
    assert lengths["raised"] == {"max_new_tokens": 51, "rloo_max_len": 96}
    args = train_rloo.parse_args(bench.rloo_flags(config, task, "eva", tmp_path, tmp_path / "seeds.jsonl",
                                                  tmp_path, 0))
    assert (args.rollout.max_new_tokens, args.data.max_len) == (51, 96)
    flags = bench.dpo_evolve_flags(config, task, "eva", 0)  # the DPO arms' creator and pairs stages
    assert flags[flags.index("--rollout.max_new_tokens") + 1] == "51"
    assert bench.config_key(config, tmp_path, "rloo") != bench.config_key(full, tmp_path, "rloo")

    # Prompts the tiny Llama cannot hold with their answers: refused, naming the way out.
    with open(long / "seeds.jsonl", "a") as file:
        file.write(json.dumps({"prompt": "rev " + payload * 2, "label": "x"}) + "\n")
    with pytest.raises(bench_tasks.TaskError, match=r"positions; the model has 128 \(the tiny Llama; pass --model\)"):
        bench.fit_lengths(full, bench_tasks.load_task_dir(long), None)


def test_task_folders_are_checked_with_the_file_and_row(tmp_path, letters_dir):
    with pytest.raises(bench_tasks.TaskError, match="missing sft.jsonl"):
        broken = tmp_path / "no_sft"
        shutil.copytree(letters_dir, broken)
        (broken / "sft.jsonl").unlink()
        bench_tasks.load_task_dir(broken)
    assert bench_tasks.load_task_dir(broken, need_sft=False).sft is None  # fine with --model
    bad = tmp_path / "bad_row"
    shutil.copytree(letters_dir, bad)
    with open(bad / "test.jsonl", "a") as file:
        file.write('{"prompt": "dbl ab"}\n')
    with pytest.raises(bench_tasks.TaskError, match=r"test.jsonl, row \d+: missing 'label'"):
        bench_tasks.load_task_dir(bad)
    leak = tmp_path / "leak"
    shutil.copytree(letters_dir, leak)
    with open(leak / "test.jsonl", "a") as file:
        file.write(json.dumps(json.loads((leak / "seeds.jsonl").read_text().splitlines()[0])) + "\n")
    with pytest.raises(bench_tasks.TaskError, match="also seed prompts"):
        bench_tasks.load_task_dir(leak)
    task = bench_tasks.load_task_dir(letters_dir)
    assert task.splits == ["harder", "in_dist", "new_kind", "all"]
    assert set(task.alphabet()) == set("abcdefghijklmnopqrstuvwxyz ")  # every character the data uses


@pytest.mark.slow
def test_a_users_task_folder_is_benchmarked_end_to_end_and_resumes(letters_dir, tmp_path):
    """--task-dir with no --model: the tiny Llama on the task's own characters, warm-started on its
    sft.jsonl, then RLOO (static, eva, dynamic_filtering) and iterated DPO (static, eva)."""
    # One SFT row longer than the warm start's default cut (48 tokens): the warm start keeps it whole.
    task_dir = tmp_path / letters_dir.name
    shutil.copytree(letters_dir, task_dir)
    with open(task_dir / "sft.jsonl", "a") as file:
        file.write(json.dumps({"prompt": "dbl " + "abcdefghij" * 5, "response": "ab"}) + "\n")
    argv = ["--scale", "smoke", "--task-dir", str(task_dir), "--out", str(tmp_path / "bench"), "--workers", "1",
            "--arms", "static", "eva", "dynamic_filtering",
            "--set", "eval_rows=24", "--set", "eval_samples=2", "--set", "dpo_rounds=2",
            "--publish", str(tmp_path / "published")]
    results = bench.main(argv)

    family = results["families"][letters_dir.name]
    assert set(family["arms"]) == {"rloo/static", "rloo/eva", "rloo/dynamic_filtering", "dpo/static", "dpo/eva"}
    splits = family["splits"]
    for key, arm in family["arms"].items():
        assert arm["seeds"] == [0]
        for split in splits:
            stat = arm["test"][split]
            assert 0 <= stat["mean"] <= 1 and stat["ci95"] is None  # one seed: no interval
            assert 0 <= stat["sampled"] <= 1
            assert arm["delta_vs_theta0"][split]["mean"] == pytest.approx(stat["mean"] - family["theta_0"][split]["reward"])
        if not key.endswith("/static"):
            for split in splits:
                assert arm["delta_vs_static"][split]["mean"] == pytest.approx(
                    arm["test"][split]["mean"] - family["arms"][key.split("/")[0] + "/static"]["test"][split]["mean"])
        assert arm["curve"][0]["step"] == 0 and arm["curve"][-1]["step"] >= 1
        model = tmp_path / "bench" / letters_dir.name / key / "seed_0" / "model"
        assert (model / "config.json").exists() and list(model.glob("*.safetensors"))  # the run's final model
    # equal rollout budgets; dynamic filtering spends them on fewer steps
    rloo = {arm: family["arms"][f"rloo/{arm}"] for arm in ("static", "eva", "dynamic_filtering")}
    assert rloo["static"]["rollouts"] == rloo["eva"]["rollouts"] and rloo["static"]["steps"] == rloo["eva"]["steps"]
    assert rloo["dynamic_filtering"]["rollouts"] <= rloo["static"]["rollouts"]
    assert family["arms"]["dpo/eva"]["steps"] == 2 and len(family["arms"]["dpo/eva"]["curve"]) == 3
    # DPO: static trains on its pairs as sampled (upstream); each eva round on the most informative
    # pairs of the creator's set and its next set together
    dpo = tmp_path / "bench" / letters_dir.name / "dpo"
    assert not list((dpo / "static" / "seed_0" / "iterate").glob("iter_*/pairs/train_pairs.jsonl"))
    rounds = json.loads((dpo / "eva" / "seed_0" / "iterate" / "iterations.json").read_text())
    for t in (1, 2):
        it = dpo / "eva" / "seed_0" / "iterate" / f"iter_{t}"
        pool = sorted(json.dumps({**json.loads(line), "pool": stage}) for stage in ("pairs", "creator")
                      for line in (it / stage / "pairs.jsonl").read_text().splitlines())
        trained = [json.loads(line) for line in (it / "pairs" / "train_pairs.jsonl").read_text().splitlines()]
        assert sorted(json.dumps(row) for row in trained) == pool
        infos = [row["info"]["A_min"] for row in trained]
        assert infos == sorted(infos, reverse=True)
        assert str(it / "pairs" / "train_pairs.jsonl") in json.loads((it / "model" / "DONE.json").read_text())["argv"]
        # iterations.json counts the trained pairs (the first dpo_pairs) by the stage they came from
        assert rounds[t - 1]["trained_from"] == dict(Counter(row["pool"] for row in trained[:4]))
    # the warm start used the task's own characters
    warm = tmp_path / "bench" / letters_dir.name / "warm_start_e1_r2048"
    vocab = json.loads((warm / "sft" / "tokenizer.json").read_text())
    assert "+" not in vocab["model"]["vocab"] and "z" in vocab["model"]["vocab"]
    # ... and kept the long SFT row whole; the held-out and seed rows fit the default limits
    assert family["lengths"]["sft"] == 1 + 54 + 1 + 2 + 1 > 48  # <|user|>, prompt, <|assistant|>, response, EOS
    assert json.loads((warm / "warm_start.json").read_text())["config"]["max_len"] == family["lengths"]["sft"]
    assert family["lengths"]["raised"] == {}

    published = {p.name for p in (tmp_path / "published").iterdir()}
    assert {"results.json", "RESULTS.md", f"{letters_dir.name}_rloo_curves.png", f"{letters_dir.name}_dpo_curves.png",
            f"{letters_dir.name}_rloo_buffer_drift.png"} <= published
    markdown = (tmp_path / "published" / "RESULTS.md").read_text()
    assert "| eva (n=1) |" in markdown and "(no CI)" in markdown and "] **" not in markdown  # no CI, no mark
    saved = json.loads((tmp_path / "published" / "results.json").read_text())
    assert saved["families"].keys() == results["families"].keys() and np.isfinite(saved["config"]["minutes"])

    # a rerun finds every run's result.json and trains nothing
    logs = sorted((tmp_path / "bench").glob("*/*/*/seed_0/run.log"))
    sizes = [p.stat().st_size for p in logs]
    again = bench.main(argv)
    assert len(logs) == 5 and [p.stat().st_size for p in logs] == sizes
    assert again["families"][letters_dir.name]["arms"]["rloo/eva"]["test"] == family["arms"]["rloo/eva"]["test"]
    # and keeps what the runs cost when they ran, not this invocation's seconds
    assert results["config"]["cached_runs"] == 0 and again["config"]["cached_runs"] == 5
    assert again["config"]["run_minutes"] == pytest.approx(results["config"]["run_minutes"])
    assert "5 runs reused from an earlier invocation's cache" in (tmp_path / "bench" / "RESULTS.md").read_text()
