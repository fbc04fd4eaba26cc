"""openrlhf_eva.iterate: T offline iterations, and a SIGKILL between stages resumed to the same outputs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from openrlhf_eva import compat
from openrlhf_eva.creator import write_jsonl
from openrlhf_eva.embedded.data import make_seeds, make_test_set
from openrlhf_eva.iterate import main, split_argv, training_pairs

EMBEDDED = Path(__file__).resolve().parents[1] / "openrlhf_eva" / "embedded"


def argv(model_dir, data_dir, out):
    return [
        "--pretrain", str(model_dir), "--prompt_data", str(data_dir / "seeds.jsonl"), "--output_dir", str(out),
        "--iterations", "1", "--eval_data", str(data_dir / "test.jsonl"),
        "--eval_reward", str(EMBEDDED / "reward_func.py"), "--eval_max_new_tokens", "8",
        "--evolve-args", "--reward.remote_url", str(EMBEDDED / "reward_func.py"), "--data.label_key", "label",
        "--data.apply_chat_template", "--eva.evolver", "task", "--eva.evolver_path", str(EMBEDDED / "evolve_func.py"),
        "--rollout.n_samples_per_prompt", "4", "--rollout.max_new_tokens", "8", "--train.seed", "0",
        "--dpo-args", "--train.micro_batch_size", "4", "--train.batch_size", "4", "--train.max_epochs", "1",
        "--adam.lr", "1e-4", "--ds.zero_stage", "0", "--train.seed", "0",
    ]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("iterate_data")
    write_jsonl(d / "seeds.jsonl", make_seeds(n=24, seed=3))
    write_jsonl(d / "test.jsonl", [r for r in make_test_set() if r["difficulty"] == 1][:24])
    return d


def test_split_argv_sections():
    own, evolve_args, dpo_args = split_argv(["--a", "1", "--evolve-args", "--x", "--dpo-args", "--y", "2"])
    assert own == ["--a", "1"] and evolve_args == ["--x"] and dpo_args == ["--y", "2"]


def test_training_pairs_put_the_most_informative_first_and_keep_the_file_order_among_equals(tmp_path):
    def write(name, infos, first):
        rows = [{"index": first + i, "info": {"A_min": a, "uniform": 1.0}} for i, a in enumerate(infos)]
        write_jsonl(tmp_path / name, rows)
        return tmp_path / name

    pool = {"pairs": write("next.jsonl", [0.2, 0.9, 0.2, 0.0], 0), "creator": write("creator.jsonl", [0.9, 0.5], 4)}
    out = tmp_path / "out.jsonl"
    indices = lambda: [json.loads(line)["index"] for line in out.open()]  # noqa: E731
    pools = training_pairs(pool, out, "A_min")
    assert indices() == [1, 4, 5, 0, 2, 3]
    assert pools == [json.loads(line)["pool"] for line in out.open()] == ["pairs", "creator", "creator", "pairs",
                                                                         "pairs", "pairs"]
    # the uniform arm's metric ranks nothing, and no metric keeps the sources' order
    training_pairs(pool, out, "uniform")
    assert indices() == list(range(6))
    training_pairs(pool, out, None)
    assert indices() == list(range(6))


def outputs(out: Path) -> dict:
    it = out / "iter_1"
    files = {name: (it / name).read_bytes() for name in (
        "creator/next_prompts.jsonl", "creator/pairs.jsonl", "pairs/pairs.jsonl", "eval/DONE.json")}
    from safetensors.torch import load_file

    files["weights"] = load_file(it / "model" / "model.safetensors")
    return files


@pytest.mark.slow
def test_killed_between_stages_then_rerun_equals_uninterrupted(warm_tiny_model, data_dir, tmp_path):
    _, model_dir = warm_tiny_model
    clean = tmp_path / "clean"
    table = main(argv(model_dir, data_dir, clean))
    assert table[0]["pairs"] > 0 and set(table[0]["eval"]) >= {"all"}
    assert json.loads((clean / "iterations.json").read_text())[0]["iteration"] == 1
    # the solver trained on the creator's set: every pair prompt comes from next_prompts
    next_prompts = {json.loads(line)["prompt"] for line in (clean / "iter_1/creator/next_prompts.jsonl").open()}
    pair_prompts = [json.loads(line)["prompt"][0]["content"] for line in (clean / "iter_1/pairs/pairs.jsonl").open()]
    assert pair_prompts and set(pair_prompts) <= next_prompts

    # Same run in a subprocess, SIGKILLed as soon as the pairs stage is done (before the solver).
    crashed = tmp_path / "crashed"
    proc = subprocess.Popen([sys.executable, "-m", "openrlhf_eva.iterate", *argv(model_dir, data_dir, crashed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=compat.child_process_env())  # the in-process run above set RANK, MASTER_PORT, ...
    marker = crashed / "iter_1" / "pairs" / "DONE.json"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists() and not (crashed / "iter_1" / "model" / "DONE.json").exists()

    main(argv(model_dir, data_dir, crashed))  # resume: skips creator and pairs, runs the solver and eval
    a, b = outputs(clean), outputs(crashed)
    for name in ("creator/next_prompts.jsonl", "creator/pairs.jsonl", "pairs/pairs.jsonl", "eval/DONE.json"):
        assert a[name] == b[name], name
    # CONTRIBUTING.md, "Determinism": stage outputs are bitwise equal; weights trained in another
    # process are equal within 2 bf16 steps (in every run measured so far they were bitwise equal).
    assert a["weights"].keys() == b["weights"].keys()
    differing = {key: (a["weights"][key].float() - b["weights"][key].float()).abs().max().item()
                 for key in a["weights"] if not torch.equal(a["weights"][key], b["weights"][key])}
    print(f"weights not bitwise equal: {len(differing)} of {len(a['weights'])} tensors, {differing}")
    for key in a["weights"]:
        torch.testing.assert_close(b["weights"][key], a["weights"][key], rtol=2 ** -7, atol=1e-6, msg=key)


def test_a_round_with_fewer_pairs_than_one_batch_keeps_its_policy_and_the_run_goes_on(
        warm_tiny_model, data_dir, tmp_path, capsys):
    """Upstream train_dpo refuses a dataset smaller than --train.batch_size (seen on a task where most
    responses tie); iterate then skips that round's solver instead of stopping."""
    _, model_dir = warm_tiny_model
    args = argv(model_dir, data_dir, tmp_path / "run")
    args[args.index("--iterations") + 1] = "2"
    args += ["--train.batch_size", "100000"]  # the last value is the one upstream reads
    table = main(args)
    assert [row["trained"] for row in table] == [False, False]
    assert all(row["pairs"] > 0 and row["policy_out"] == str(model_dir) for row in table)
    assert not (tmp_path / "run" / "iter_1" / "model" / "DONE.json").exists()
    assert table[0]["eval"] == table[1]["eval"]  # the same policy, evaluated greedily twice
    assert "no DPO step this round" in capsys.readouterr().out
    saved = json.loads((tmp_path / "run" / "iterations.json").read_text())
    assert [row["trained"] for row in saved] == [False, False]
    # the second creator step evolved from the first one's set, as when both rounds train
    assert table[1]["prompts_in"] == str(tmp_path / "run" / "iter_1" / "creator" / "next_prompts.jsonl")


def test_seed_rounds_train_on_the_seeds_then_the_creator_starts_from_them_with_the_trained_policy(
        warm_tiny_model, data_dir, tmp_path):
    """--seed_rounds 1, the paper's order: theta_0 --DPO on X_1--> theta_1, then the creator on X_1 with theta_1."""
    _, model_dir = warm_tiny_model
    args = argv(model_dir, data_dir, tmp_path / "run")
    args[args.index("--iterations") + 1] = "2"
    args[args.index("--eval_data"):args.index("--eval_data") + 4] = []  # the schedule is under test, not the model
    table = main([*args[:args.index("--evolve-args")], "--seed_rounds", "1", *args[args.index("--evolve-args"):]])
    first, second = table
    seeds = {json.loads(line)["prompt"] for line in (data_dir / "seeds.jsonl").open()}
    pairs = tmp_path / "run" / "iter_1" / "pairs" / "pairs.jsonl"
    pair_prompts = {json.loads(line)["prompt"][0]["content"] for line in pairs.open()}
    assert not (tmp_path / "run" / "iter_1" / "creator").exists() and "creator" not in first
    assert first["trained"] and pair_prompts and pair_prompts <= seeds
    # round 2: the creator reads X_1 with theta_1 and the solver trains theta_1 on its set
    assert second["prompts_in"] == str(data_dir / "seeds.jsonl") and "creator" in second
    assert second["policy_in"] == first["policy_out"] == str(tmp_path / "run" / "iter_1" / "model")
    summary = json.loads((tmp_path / "run/iter_2/creator/summary.json").read_text())
    assert Path(summary["args"]["actor.model_name_or_path"]) == tmp_path / "run" / "iter_1" / "model"
    with pytest.raises(ValueError, match="--seed_rounds 2 must be in"):
        main([*args[:args.index("--evolve-args")], "--seed_rounds", "2", *args[args.index("--evolve-args"):]])


def test_replay_seeds_keeps_the_seed_prompts_as_every_rounds_original_share(warm_tiny_model, data_dir, tmp_path):
    _, model_dir = warm_tiny_model
    args = argv(model_dir, data_dir, tmp_path / "run")
    args[args.index("--iterations") + 1] = "2"
    args[args.index("--eval_data"):args.index("--eval_data") + 4] = []
    args += ["--train.batch_size", "100000"]  # no DPO step: the prompt sets are under test
    main([*args[:args.index("--evolve-args")], "--replay", "seeds", *args[args.index("--evolve-args"):]])
    seeds = {json.loads(line)["prompt"] for line in (data_dir / "seeds.jsonl").open()}
    round_2 = [json.loads(line) for line in (tmp_path / "run/iter_2/creator/next_prompts.jsonl").open()]
    originals = [r["prompt"] for r in round_2 if r["eva_origin"] == "seed"]
    # 20% of 24; with --replay current they would come from round 1's set, 80% of it evolved
    assert len(originals) == 5 and set(originals) <= seeds
    assert sum(r["eva_origin"] == "evolved" for r in round_2) == 19


def test_bad_input_is_reported_with_the_flag(tmp_path, data_dir):
    with pytest.raises(ValueError, match="--eval_data and --eval_reward go together"):
        main(["--pretrain", "x", "--prompt_data", str(data_dir / "seeds.jsonl"), "--output_dir", str(tmp_path),
              "--eval_data", "x.jsonl"])
    with pytest.raises(ValueError, match="--pretrain is set by iterate"):
        main(["--pretrain", "x", "--prompt_data", str(data_dir / "seeds.jsonl"), "--output_dir", str(tmp_path),
              "--evolve-args", "--pretrain", "y"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "rev 12"}\n{"text": "no prompt key"}\n')
    with pytest.raises(ValueError, match="bad.jsonl.*row 2"):
        main(["--pretrain", "x", "--prompt_data", str(bad), "--output_dir", str(tmp_path)])


class StopAfterParse(Exception):
    pass


def test_gpu_offline_recipe_passes_every_parser(monkeypatch):
    """Every flag of examples/gpu/offline_eva.sh exists: iterate's, evolve's, and upstream train_dpo's + eva's."""
    import openrlhf.utils

    from openrlhf_eva import evolve, iterate, train_dpo

    script = Path(__file__).resolve().parents[1] / "examples" / "gpu" / "offline_eva.sh"
    for loss in ("dpo", "orpo", "simpo", "sppo"):
        env = {**os.environ, "DRY_RUN": "1", "LOSS": loss, "PAIRWISE_MODEL": "pm"}
        printed = subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True,
                                 text=True).stdout.splitlines()
        own, evolve_args, dpo_args = split_argv(printed)
        iterate.build_parser().parse_args(own)
        evolve_ns = evolve.build_parser().parse_args(["--pretrain", "p", "--prompt_data", "d", "--output_dir", "o",
                                                      *evolve_args])
        assert getattr(evolve_ns, "rollout.n_samples_per_prompt") == 6 and getattr(evolve_ns, "eva.metric") == "A_min"

        seen = {}

        def stop(args):
            seen["args"] = args
            raise StopAfterParse

        monkeypatch.setattr(openrlhf.utils, "get_strategy", stop)
        with pytest.raises(StopAfterParse):
            train_dpo.main(["--model.model_name_or_path", "p", "--data.dataset", "d", *dpo_args])
        assert seen["args"].eva.loss == loss
