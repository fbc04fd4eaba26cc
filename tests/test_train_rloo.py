"""openrlhf_eva.train_rloo: flags, and end-to-end CPU runs through OpenRLHF's DeepSpeed strategy.

The end-to-end runs use the embedded task family and a warm-started tiny Llama:
- one uninterrupted RLOO + eva run (task evolver), which must raise the reward on its training
  prompts and passes all three phases;
- the same run killed with SIGKILL after step 7 and resumed with --ckpt.load_enable, which
  must end with the same buffer and the same metrics (timings aside);
- a 2-rank online-DPO run with the policy itself as evol_instruct creator, whose ranks must hold
  identical buffers after every step and split the evolving between them.

Short runs in this process (one rank, the untrained tiny Llama, a few seconds each) cover the
flags that switch a path inside a step: --eva.fused_logprobs, the LLM evolvers writing with the
policy (and a resume that continues the creator's seeds), and --eva.rewrite_chosen with a creator
served over HTTP.
"""

import ast
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import openrlhf
import openrlhf_eva.embedded as embedded
from openrlhf_eva import compat, train_rloo_trainer
from openrlhf_eva.creator import DEFAULT_FILTERS, read_prompts, write_jsonl
from openrlhf_eva.embedded.data import make_seeds
from openrlhf_eva.embedded.model import build_tiny
from openrlhf_eva.embedded.reward import score
from openrlhf_eva.rollout import sample_responses
from openrlhf_eva.solve import fused_actor, online
from openrlhf_eva.solve.online import best_and_worst
from openrlhf_eva.train_rloo import build_parser, parse_args
from openrlhf_eva.train_rloo_trainer import CreatorLoadError, build_creator, total_prompts
from openrlhf_eva.train_rloo_flags import REFUSED, REFUSED_GROUPS

EMBEDDED = Path(embedded.__file__).parent
UNCOMPARABLE = object()


def upstream_ppo_flags() -> dict:
    """Flag -> (dest, default) of OpenRLHF's train_ppo_ray parser, read from its source (it cannot be
    imported: Ray and vLLM at the top). The default is what argparse would put in the namespace:
    store_true without one is False, and a dest two flags share keeps the first one's."""
    tree = ast.parse((Path(openrlhf.__file__).parent / "cli" / "train_ppo_ray.py").read_text())
    flags, first_default = {}, {}

    def evaluate(node, env):
        try:
            return eval(compile(ast.Expression(node), "train_ppo_ray", "eval"), {"float": float, "int": int}, env)
        except Exception:
            return UNCOMPARABLE  # e.g. a default built from datetime.now()

    def visit(node, env):
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name):  # for prefix in ("actor", "critic")
            for value in ast.literal_eval(node.iter):
                for child in node.body:
                    visit(child, {**env, node.target.id: value})
            return
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            keywords = {k.arg: k.value for k in node.keywords}
            flag = evaluate(node.args[0], env)
            dest = evaluate(keywords["dest"], env) if "dest" in keywords else flag[2:]
            action = evaluate(keywords["action"], env) if "action" in keywords else "store"
            default = (evaluate(keywords["default"], env) if "default" in keywords
                       else {"store_true": False, "store_false": True}.get(action))
            flags[flag] = (dest, first_default.setdefault(dest, default))
        for child in ast.iter_child_nodes(node):
            visit(child, env)

    visit(tree, {})
    return flags


# The lead's: train_rloo implements upstream's dynamic filtering. Until those flags are in its
# parser, they are the only upstream flags the contract lets it lack.
RESERVED = {"--algo.dynamic_filtering_enable", "--algo.dynamic_filtering_range"}


def comparable(value):
    return list(value) if isinstance(value, tuple) else value


def test_every_upstream_flag_is_implemented_with_its_default_or_refused_by_name():
    """The parity contract with upstream's train_ppo_ray: every flag parses here, with upstream's
    default, and either works or is one of train_rloo_flags.REFUSED. A flag upstream adds fails
    this test until it is decided."""
    upstream = upstream_ppo_flags()
    assert len(upstream) > 150 and upstream["--rollout.n_samples_per_prompt"] == ("rollout.n_samples_per_prompt", 1)
    ours = {}
    for action in build_parser()._actions:
        ours.setdefault(action.dest, action.default)  # argparse: the first action of a dest sets its default
    options = {option for action in build_parser()._actions for option in action.option_strings}
    missing = sorted(flag for flag in upstream if flag not in options and flag not in RESERVED)
    assert missing == [], "decide each: implement it in train_rloo, or refuse it in train_rloo_flags.REFUSED"
    differs = {flag: (ours[dest], default) for flag, (dest, default) in upstream.items()
               if flag in options and default is not UNCOMPARABLE and comparable(ours[dest]) != comparable(default)}
    assert differs == {"--algo.advantage.estimator": ("rloo", "gae")}  # documented: gae needs a critic
    not_upstream = sorted(option for option in options if option not in upstream and not option.startswith("--eva.")
                          and option not in ("-h", "--help"))
    assert not_upstream == []
    assert set(REFUSED) <= set(upstream)
    implemented = [flag for flag in upstream if flag in options and flag not in REFUSED]
    print(f"upstream train_ppo_ray flags: {len(upstream)}; implemented {len(implemented)}, refused {len(REFUSED)}, "
          f"reserved {len(RESERVED - options)}")


def non_default(default, kind, nargs):
    if kind is bool:
        return []
    if nargs is not None:
        return ["1", "2"]
    if kind is str:
        return ["something-else"]
    return [str((default or 0) + 3)]


@pytest.mark.parametrize("flag, reason, spec", [(spec[0], reason, spec) for reason, specs in REFUSED_GROUPS
                                                for spec in specs], ids=lambda value: str(value)[:40])
def test_a_refused_flag_parses_at_its_default_and_names_itself_and_the_reason_otherwise(flag, reason, spec, capsys):
    base = ["--actor.model_name_or_path", "m", "--data.prompt_dataset", "p.jsonl", "--reward.remote_url", "r.py",
            "--rollout.n_samples_per_prompt", "2", "--train.batch_size", "2"]
    _, default, kind, nargs = spec
    at_default = [] if kind is bool or default is None else \
        [flag, *map(str, default if nargs is not None else [default])]
    parse_args(base + at_default)
    # upstream's critic nesterov is on by default, and only its --no_ twin turns it off
    changed = (["--critic.muon.no_nesterov"] if flag == "--critic.muon.nesterov"
               else [flag, *non_default(default, kind, nargs)])
    with pytest.raises(SystemExit):
        parse_args(base + changed)
    error = capsys.readouterr().err
    assert f"{changed[0]} " in error and reason in error and "use openrlhf_eva.train_ppo_ray" in error


def test_flag_checks_and_the_prompt_budget():
    base = ["--actor.model_name_or_path", "m", "--data.prompt_dataset", "p.jsonl", "--reward.remote_url", "r.py",
            "--rollout.batch_size", "8", "--rollout.n_samples_per_prompt", "4", "--train.batch_size", "8"]
    args = parse_args(base)
    assert args.algo.advantage.estimator == "rloo" and args.actor.eps_clip_low_high == (0.2, 0.2)
    assert args.eva.buffer_size == 3200 and args.eva.n_new == 4 and args.eva.metric == "A_avg"
    assert args.eva.filters == list(DEFAULT_FILTERS) and not args.eva.fused_logprobs and not args.eva.rewrite_chosen
    for bad in (["--rollout.n_samples_per_prompt", "1"], ["--train.batch_size", "12"], ["--eva.evolver", "task"],
                ["--algo.advantage.estimator", "gae"], ["--eva.rewrite_chosen"],
                ["--eva.evolver_url", "http://127.0.0.1:8000/v1"]):
        with pytest.raises(SystemExit):
            parse_args(base + bad)
    assert total_prompts(None, 64) is None
    assert total_prompts("2x", 64) == 128 and total_prompts("1.5x", 64) == 96 and total_prompts("100", 64) == 100
    with pytest.raises(ValueError, match="prompt count"):
        total_prompts("lots", 64)


def test_a_creator_model_that_cannot_load_is_a_clear_error(tmp_path):
    args = parse_args(["--actor.model_name_or_path", "m", "--data.prompt_dataset", "p", "--reward.remote_url", "r.py",
                       "--rollout.n_samples_per_prompt", "2", "--train.batch_size", "2", "--eva.evolver",
                       "evol_instruct", "--eva.evolver_model", str(tmp_path / "no-such-model")])
    with pytest.raises(CreatorLoadError, match="--eva.evolver_model .*no-such-model.* could not be loaded"):
        build_creator(args, None, None)


# --- end-to-end runs ---------------------------------------------------------------------------------

STEPS = 12  # 48 seeds, batches of 8, "2x": warm-up 1 step, mix-up 10, bootstrap 1


@pytest.fixture(scope="module")
def task(tmp_path_factory, warm_tiny_model):
    root = tmp_path_factory.mktemp("train_rloo")
    model = warm_tiny_model[1]  # read only: every run writes under root
    seeds = root / "seeds.jsonl"
    write_jsonl(seeds, make_seeds(48, seed=0))
    return root, str(model), str(seeds)


def rloo_command(task, out: Path, *extra: str) -> list[str]:
    _, model, seeds = task
    return [
        sys.executable, "-m", "openrlhf_eva.train_rloo",
        "--actor.model_name_or_path", model, "--data.prompt_dataset", seeds, "--data.input_key", "prompt",
        "--data.label_key", "label", "--data.apply_chat_template", "--data.max_len", "64",
        "--reward.remote_url", str(EMBEDDED / "reward_func.py"),
        "--rollout.batch_size", "8", "--rollout.n_samples_per_prompt", "4", "--rollout.max_new_tokens", "8",
        "--rollout.micro_batch_size", "32", "--train.batch_size", "8", "--train.micro_batch_size", "8",
        "--actor.adam.lr", "1e-2", "--algo.kl.init_coef", "0", "--ds.zero_stage", "2",
        "--eva.evolver", "task", "--eva.evolver_path", str(EMBEDDED / "evolve_func.py"),
        "--eva.buffer_size", "16", "--eva.total_prompts", "2x",
        "--ckpt.output_dir", str(out / "model"), "--ckpt.path", str(out / "ckpt"), "--ckpt.save_steps", "3",
        *extra,
    ]


def run_env(port: int) -> dict:
    return dict(os.environ, MASTER_PORT=str(port), TOKENIZERS_PARALLELISM="false")


def check_run(cmd, log: Path, port: int, timeout: int = 600) -> None:
    with open(log, "w") as file:
        proc = subprocess.run(cmd, stdout=file, stderr=subprocess.STDOUT, env=run_env(port), timeout=timeout)
    assert proc.returncode == 0, log.read_text()[-4000:]


def read_metrics(out: Path) -> list[dict]:
    with open(out / "model" / "eva_metrics.jsonl") as file:
        return [json.loads(line) for line in file]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_timings(rows: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if not key.startswith("timing/")} for row in rows]


@pytest.fixture(scope="module")
def reference_run(task):
    root = task[0]
    out = root / "reference"
    check_run(rloo_command(task, out, "--logger.tensorboard_dir", str(out / "tb")), root / "reference.log",
              compat.free_port())
    return out


def mean_reward_on(model_dir, rows) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    out = sample_responses(model, tokenizer, [r["prompt"] for r in rows], n=8, max_new_tokens=8, seed=123,
                           progress=False)
    rewards = [score(text, row["label"]) for row, texts in zip(rows, out.responses) for text in texts]
    return sum(rewards) / len(rewards)


@pytest.mark.slow
def test_rloo_with_eva_raises_the_reward_on_its_training_prompts(task, reference_run):
    metrics = read_metrics(reference_run)
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    assert [m["eva/phase"] for m in metrics] == ["warmup"] + ["mixup"] * 10 + ["bootstrap"]
    assert metrics[-1]["optimizer_steps"] == STEPS * 4  # 32 samples per batch / 8 per step: exact schedule
    assert metrics[-1]["actor_lr"] == pytest.approx(1e-3)  # cosine_with_min_lr ends at min_lr_ratio * lr
    assert metrics[-1]["eva/total_children_accepted"] > 0 and metrics[-1]["eva/buffer_depth_mean"] > 1
    rows = read_prompts(task[2], "prompt", "label")
    before, after = mean_reward_on(task[1], rows), mean_reward_on(reference_run / "model", rows)
    print(f"mean reward on the 48 training prompts (8 samples each): {before:.4f} -> {after:.4f}")
    assert after > before + 0.02
    buffer = [json.loads(line) for line in open(reference_run / "model" / "eva_buffer.jsonl")]
    assert len(buffer) == metrics[-1]["eva/buffer_size"] and all(row["label"] for row in buffer)
    assert list((reference_run / "tb").rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_a_run_killed_mid_run_resumes_to_the_same_buffer_and_metrics(task, reference_run):
    root = task[0]
    out = root / "killed"
    kill_after = 7  # checkpoints every 3 steps: the resumed run reruns step 7 from step 6's checkpoint
    metrics_file = out / "model" / "eva_metrics.jsonl"
    with open(root / "killed.log", "w") as log:
        proc = subprocess.Popen(rloo_command(task, out), stdout=log, stderr=subprocess.STDOUT, env=run_env(29662))
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            if metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= kill_after:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (root / "killed.log").read_text()[-3000:]
    assert not (out / "model" / "eva_buffer.jsonl").exists()

    check_run(rloo_command(task, out, "--ckpt.load_enable"), root / "resumed.log", compat.free_port())
    assert "resumed from" in (root / "resumed.log").read_text()

    assert without_timings(read_metrics(out)) == without_timings(read_metrics(reference_run))
    buffer_file = Path("model") / "eva_buffer.jsonl"
    assert (out / buffer_file).read_text() == (reference_run / buffer_file).read_text()


@pytest.mark.slow
def test_two_ranks_hold_identical_buffers_after_every_step(task):
    root, model, seeds = task
    out = root / "two_ranks"
    port = compat.free_port()
    deepspeed = Path(sys.executable).with_name("deepspeed")
    cmd = [
        str(deepspeed), "--num_gpus", "2", "--master_port", str(port), "--module", "openrlhf_eva.train_rloo",
        "--actor.model_name_or_path", model, "--data.prompt_dataset", seeds, "--data.input_key", "prompt",
        "--data.label_key", "label", "--data.apply_chat_template", "--data.max_len", "64",
        "--reward.remote_url", str(EMBEDDED / "reward_func.py"),
        "--rollout.batch_size", "8", "--rollout.n_samples_per_prompt", "4", "--rollout.max_new_tokens", "8",
        "--rollout.micro_batch_size", "16", "--train.batch_size", "8", "--train.micro_batch_size", "4",
        "--actor.adam.lr", "1e-3", "--actor.lr_warmup_ratio", "0",
        "--eva.solver", "online_dpo", "--eva.evolver", "evol_instruct", "--eva.evolve_max_new_tokens", "12",
        "--eva.buffer_size", "16", "--eva.total_prompts", "40",
        "--ckpt.output_dir", str(out / "model"), "--ckpt.path", str(out / "ckpt"),
    ]
    check_run(cmd, root / "two_ranks.log", port)
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
    hashes = [m["eva/buffer_hashes"] for m in metrics]
    assert all(len(pair) == 2 and pair[0] == pair[1] for pair in hashes)
    assert len({pair[0] for pair in hashes}) == 5  # the buffer changed every step
    assert all(m["eva/parents_per_rank"] == [2, 2] for m in metrics)  # 4 parents, 2 evolved on each rank
    assert all(m["eva/children_generated"] > 0 for m in metrics) and metrics[-1]["eva/phase"] == "mixup"
    assert all(0 <= m["dpo_pairs"] <= 8 for m in metrics) and sum(m["dpo_pairs"] for m in metrics) > 0
    # the first pairs meet policy == reference; later ones a policy DPO has moved
    assert metrics[0]["dpo_reward_margin"] == 0 and any(m["dpo_reward_margin"] != 0 for m in metrics[1:])


# --- short runs in this process ------------------------------------------------------------------



@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The untrained tiny Llama, 8 task seeds, and one rank in this process.

    The rendezvous variables (a free port) are put back afterwards and the gloo group is destroyed.
    DeepSpeed keeps its clone of the world group (deepspeed.utils.groups._WORLD_GROUP) past a
    destroy; a stale clone makes the next engine broadcast over a group torch no longer knows, so
    it is dropped before this module's first run (another module may have destroyed its group)
    and after its last.
    """
    from deepspeed.utils import groups as deepspeed_groups

    root = tmp_path_factory.mktemp("train_rloo_in_process")
    seeds = root / "seeds.jsonl"
    write_jsonl(seeds, make_seeds(8, seed=0))
    if not torch.distributed.is_initialized():
        deepspeed_groups._WORLD_GROUP = None
    with pytest.MonkeyPatch.context() as patch:
        for name, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                                MASTER_PORT=str(compat.free_port())).items():
            patch.setenv(name, value)
        yield SimpleNamespace(model=build_tiny(root / "tiny", seed=0), seeds=str(seeds))
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        deepspeed_groups._WORLD_GROUP = None


def run_in_process(run, out: Path, *extra: str) -> "train_rloo_trainer.OnlineTrainer":
    """What train_rloo's main() runs, in this process: batches of 4 prompts x 4 samples, 8-token
    responses; returns the trainer for a look at its parts."""
    argv = [
        "--actor.model_name_or_path", run.model, "--data.prompt_dataset", run.seeds, "--data.input_key", "prompt",
        "--data.label_key", "label", "--data.apply_chat_template", "--data.max_len", "48",
        "--reward.remote_url", str(EMBEDDED / "reward_func.py"),
        "--rollout.batch_size", "4", "--rollout.n_samples_per_prompt", "4", "--rollout.max_new_tokens", "8",
        "--rollout.micro_batch_size", "16", "--actor.adam.lr", "1e-3", "--actor.lr_warmup_ratio", "0",
        "--ckpt.output_dir", str(out / "model"), "--ckpt.path", str(out / "ckpt"),
        *extra,
    ]
    trainer = train_rloo_trainer.OnlineTrainer(parse_args(argv))
    trainer.fit()
    return trainer


# Forwards a step: pg takes old log-probs, the reference's and 2 training micro-batches; online
# DPO the reference's and 2 training micro-batches (of pairs).
@pytest.mark.parametrize("solver, compared, forwards_per_step", [
    (["--eva.solver", "pg", "--algo.kl.init_coef", "0.01", "--train.batch_size", "16", "--train.micro_batch_size",
      "8"], ("policy_loss", "actor_grad_norm", "ppo_kl", "kl"), 4),
    (["--eva.solver", "online_dpo", "--train.batch_size", "4", "--train.micro_batch_size", "2"],
     ("dpo_loss", "actor_grad_norm", "dpo_reward_margin"), 3),
], ids=["pg_with_kl", "online_dpo"])
def test_fused_logprobs_give_the_same_training_steps(tiny_run, tmp_path, monkeypatch, solver, compared,
                                                     forwards_per_step):
    fused_calls = []

    def counted(*args, **kwargs):
        fused_calls.append(args[0].shape)
        return fused_linear_logprobs(*args, **kwargs)

    fused_linear_logprobs = fused_actor.fused_linear_logprobs
    monkeypatch.setattr(fused_actor, "fused_linear_logprobs", counted)
    flags = [*solver, "--ds.zero_stage", "0", "--eva.total_prompts", "8"]  # 2 steps: the second has kl != 0
    run_in_process(tiny_run, tmp_path / "upstream", *flags)
    assert fused_calls == []
    trainer = run_in_process(tiny_run, tmp_path / "fused", *flags, "--eva.fused_logprobs")
    # Policy and reference (the pg run loads one for its KL): every forward took the fused path.
    assert trainer.actor.forward.__func__ is trainer.reference.forward.__func__ is fused_actor.fused_forward
    assert len(fused_calls) == 2 * forwards_per_step

    upstream, fused = read_metrics(tmp_path / "upstream"), read_metrics(tmp_path / "fused")
    assert len(upstream) == len(fused) == 2
    assert any(step[compared[-1]] != 0 for step in upstream)  # kl, margin: the policy moved off the reference
    for before, after in zip(upstream, fused):
        for key in compared:
            assert after[key] == pytest.approx(before[key], rel=1e-5, abs=1e-7), (before["step"], key)
    upstream_weights = load_file(tmp_path / "upstream" / "model" / "model.safetensors")
    fused_weights = load_file(tmp_path / "fused" / "model" / "model.safetensors")
    for name, weight in upstream_weights.items():
        torch.testing.assert_close(fused_weights[name], weight, rtol=1e-3, atol=1e-5, msg=name)


def test_the_policy_writes_evol_instruct_children_and_a_resumed_run_writes_the_same(tiny_run, tmp_path):
    """Online DPO with the policy as creator of children (with feedback) and of rewrites. Resumed
    from its step-2 checkpoint, the run repeats step 3 exactly: the creator's seeds count on."""
    flags = ["--eva.solver", "online_dpo", "--train.batch_size", "4", "--train.micro_batch_size", "4",
             "--ds.zero_stage", "2", "--eva.evolver", "evol_instruct", "--eva.evolve_feedback",
             "--eva.evolve_max_new_tokens", "8", "--eva.top_frac", "0.25", "--eva.n_new", "2",
             "--eva.buffer_size", "16", "--eva.total_prompts", "12", "--eva.rewrite_chosen", "--ckpt.save_steps", "2"]
    out = tmp_path / "run"
    trainer = run_in_process(tiny_run, out, *flags)
    metrics, children = read_metrics(out), read_jsonl(out / "model" / "eva_children.jsonl")
    weights = (out / "model" / "model.safetensors").read_bytes()

    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(m["eva/children_generated"] > 0 for m in metrics)
    assert len(children) == sum(m["eva/children_generated"] for m in metrics)
    assert {row["method"] for row in children} <= set(trainer.evolver.methods)
    assert all(row["accepted"] == (row["reason"] is None) for row in children)
    assert sum(row["accepted"] for row in children) == metrics[-1]["eva/total_children_accepted"]
    assert all(m["eva/evolver_feedback_used"] > 0 for m in metrics)  # the parents' responses reached the creator
    assert all(m["eva/rewrites_kept"] + m["eva/rewrites_rejected"] == m["dpo_pairs"] for m in metrics)
    # one batched call a step to evolve, and one to rewrite where the step had pairs
    assert trainer.creator.stats["calls"] == 3 + sum(m["dpo_pairs"] > 0 for m in metrics)

    resumed = run_in_process(tiny_run, out, *flags, "--ckpt.load_enable")
    assert resumed.creator.stats["calls"] == trainer.creator.stats["calls"]
    assert without_timings(read_metrics(out)) == without_timings(metrics)
    assert read_jsonl(out / "model" / "eva_children.jsonl") == children
    assert (out / "model" / "model.safetensors").read_bytes() == weights


def test_the_distilabel_evolver_writes_with_the_policy(tiny_run, tmp_path):
    pytest.importorskip("distilabel", reason="the distilabel extra is not installed")
    out = tmp_path / "run"
    run_in_process(tiny_run, out, "--train.batch_size", "16", "--train.micro_batch_size", "16",
                   "--algo.kl.init_coef", "0", "--ds.zero_stage", "0", "--eva.evolver", "distilabel",
                   "--eva.evolver_options", '{"task": "EvolInstruct"}', "--eva.evolve_max_new_tokens", "8",
                   "--eva.top_frac", "0.25", "--eva.n_new", "2", "--eva.total_prompts", "8")
    metrics, children = read_metrics(out), read_jsonl(out / "model" / "eva_children.jsonl")
    assert [m["step"] for m in metrics] == [1, 2] and all(m["eva/children_generated"] > 0 for m in metrics)
    assert len(children) == sum(m["eva/children_generated"] for m in metrics)
    assert all(row["method"] == "distilabel/EvolInstruct" and row["parent"] for row in children)
    assert "eva/evolve_error" not in metrics[-1]


def load_test_helper(name: str):
    """A helper module beside this file, by path: tests/ is not a package (see CONTRIBUTING.md)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rewrite_chosen_trains_on_the_served_rewrite(tiny_run, tmp_path, monkeypatch):
    """--eva.rewrite_chosen with the creator on an OpenAI-compatible server that always answers
    one rewrite: every pair the DPO update trains on has it as its chosen response, eos-terminated."""
    scripted_server = load_test_helper("scripted_server")
    rewrite = "12 34"  # two words: within the rewriter's 0.5x-2x of any 8-token sample
    trained = []

    def recorded_update(actor, reference, optimizer, scheduler, strategy, experience, rewards, *args):
        trained.append((experience.sequences.clone(), experience.action_mask.clone(), rewards.clone()))
        return online_dpo_update(actor, reference, optimizer, scheduler, strategy, experience, rewards, *args)

    online_dpo_update = online.online_dpo_update
    monkeypatch.setattr(online, "online_dpo_update", recorded_update)
    with scripted_server.ScriptedServer(lambda body, n: (200, scripted_server.chat_reply(rewrite), 0.0)) as server:
        trainer = run_in_process(
            tiny_run, tmp_path, "--eva.solver", "online_dpo", "--train.batch_size", "4", "--train.micro_batch_size",
            "4", "--ds.zero_stage", "0", "--eva.total_prompts", "8", "--eva.rewrite_chosen",
            "--eva.evolver_url", server.url, "--eva.evolver_model", "served-creator")

    metrics = read_metrics(tmp_path)
    assert sum(m["dpo_pairs"] for m in metrics) > 0
    assert [m["eva/rewrites_kept"] for m in metrics] == [m["dpo_pairs"] for m in metrics]
    assert all(m["eva/rewrites_rejected"] == 0 for m in metrics)
    assert len(server.requests) == sum(m["dpo_pairs"] for m in metrics)
    assert {body["model"] for _, _, body in server.requests} == {"served-creator"}

    tokenizer = trainer.tokenizer
    for sequences, action_mask, rewards in trained:
        chosen, _, has_pair = best_and_worst(rewards)
        for prompt in has_pair.nonzero().flatten().tolist():
            row = prompt * 4 + int(chosen[prompt])
            response = sequences[row, -action_mask.shape[1]:][action_mask[row]]
            assert tokenizer.decode(response, skip_special_tokens=False) == rewrite + tokenizer.eos_token


ZERO_FOR_COPY = '''
from openrlhf_eva.embedded.reward_func import reward_func as graded


def reward_func(queries, prompts, labels, **kwargs):
    """The embedded reward, but 0 for every "copy" prompt: their groups' mean is 0, outside (0, 1)."""
    out = graded(queries, prompts, labels)
    for i, prompt in enumerate(prompts):
        if "copy " in prompt:
            out["rewards"][i] = 0.0
    out["scores"] = out["rewards"].clone()
    return out
'''


def test_dynamic_filtering_drops_groups_outside_the_range_and_refills_from_the_next_prompts(tiny_run, tmp_path):
    reward = tmp_path / "zero_for_copy.py"
    reward.write_text(ZERO_FOR_COPY)
    seeds = [json.loads(line) for line in Path(tiny_run.seeds).read_text().splitlines()]
    copies = sum(row["prompt"].startswith("copy ") for row in seeds)
    assert 0 < copies < len(seeds) - 4  # some groups to drop, enough others to fill a batch
    out = tmp_path / "df"
    run_in_process(tiny_run, out, "--reward.remote_url", str(reward), "--algo.dynamic_filtering_enable",
                   "--train.num_episodes", "3", "--train.batch_size", "16", "--train.micro_batch_size", "16",
                   "--ds.zero_stage", "0", "--algo.kl.init_coef", "0")
    metrics = read_metrics(out)
    assert metrics, "no step trained"
    consumed = sum(m["prompts_consumed"] for m in metrics)
    assert consumed <= 3 * 8 and any(m["prompts_consumed"] > 4 for m in metrics)  # refills, within the budget
    for m in metrics:
        kept = 4
        assert m["dynamic_filtering_pass_rate"] == pytest.approx(100 * kept / m["prompts_consumed"])
        assert m["optimizer_steps"] == m["step"]  # every trained batch is full: 16 samples, one step
        assert m["reward_mean"] > 0  # no all-zero ("copy") group reached the update

    with pytest.raises(SystemExit):
        parse_args(["--actor.model_name_or_path", "m", "--data.prompt_dataset", "d", "--reward.remote_url", "r.py",
                    "--rollout.n_samples_per_prompt", "4", "--algo.dynamic_filtering_enable",
                    "--algo.dynamic_filtering_range", "0.5", "0.2"])


def test_merged_groups_keep_each_rollouts_prompt_and_response_columns():
    from openrlhf.trainer.ppo_utils import Experience

    from openrlhf_eva.solve.online import merge_groups

    def rollout(prompt_width, response_width, value):
        rows = 2 * 2  # 2 groups of n=2
        sequences = torch.full((rows, prompt_width + response_width), value)
        sequences[:, :1] = 0  # one left pad
        action = torch.ones(rows, response_width, dtype=torch.bool)
        action[:, -1] = False  # one right pad
        return Experience(sequences=sequences, attention_mask=(sequences != 0).long(), action_mask=action,
                          response_length=action.sum(1).float(), truncated=torch.zeros(rows, dtype=torch.bool),
                          total_length=torch.full((rows,), 9.0), prompts=[f"p{value}{i // 2}" for i in range(rows)])

    a, b = rollout(3, 4, 5), rollout(5, 2, 7)
    merged = merge_groups([(a, [1]), (b, [0, 1])], n=2, pad_token_id=0)
    assert merged.sequences.shape == (6, 5 + 4) and merged.action_mask.shape == (6, 4)
    assert merged.prompts == ["p51", "p51", "p70", "p70", "p71", "p71"]
    # a's rows: 2 more left pads before its prompt; b's rows: 2 more right pads after its response
    assert merged.sequences[0].tolist() == [0, 0, 0, 5, 5, 5, 5, 5, 5]
    assert merged.action_mask[0].tolist() == [True, True, True, False]
    assert merged.sequences[2].tolist() == [0, 7, 7, 7, 7, 7, 7, 0, 0]
    assert merged.action_mask[2].tolist() == [True, False, False, False]
    assert (merged.attention_mask == (merged.sequences != 0).long()).all()
    assert merged.response_length.tolist() == [3, 3, 1, 1, 1, 1]


def metrics_line(step: int, truncated_rate: float, kl_coef: float = 0.0) -> dict:
    return {"step": step, "truncated_rate": truncated_rate, "kl_coef": kl_coef, "reward_mean": 0.5,
            "response_length_mean": 6.0, "actor_lr": 1e-3, "timing/step": 0.1}


def test_truncation_warns_only_when_it_climbs_and_names_the_kl_penalty_when_it_is_off():
    assert train_rloo_trainer.truncation_warning(0.02, metrics_line(5, 0.15)) is None  # below the bar
    # never stopped: a token budget too small, not a drift
    assert train_rloo_trainer.truncation_warning(0.9, metrics_line(5, 1.0)) is None
    warning = train_rloo_trainer.truncation_warning(0.02, metrics_line(8, 0.44))
    assert "step 8: 44% of responses" in warning and "(first step: 2%" in warning
    assert "--algo.kl.init_coef 0.01" in warning
    with_kl = train_rloo_trainer.truncation_warning(0.02, metrics_line(8, 0.44, kl_coef=0.01))
    assert "--algo.kl.init_coef" not in with_kl and "--reward.stop_properly_penalty_coef" in with_kl


def test_the_trainer_prints_the_truncation_warning_once(tiny_run, tmp_path, capsys):
    out = tmp_path / "warn"
    trainer = train_rloo_trainer.OnlineTrainer(parse_args([
        "--actor.model_name_or_path", tiny_run.model, "--data.prompt_dataset", tiny_run.seeds,
        "--data.input_key", "prompt", "--reward.remote_url", str(EMBEDDED / "reward_func.py"),
        "--rollout.batch_size", "4", "--rollout.n_samples_per_prompt", "4", "--train.batch_size", "16",
        "--algo.kl.init_coef", "0", "--ckpt.output_dir", str(out / "model"), "--ckpt.path", str(out / "ckpt")]))
    os.makedirs(out / "model")
    for step, rate in enumerate([0.05, 0.1, 0.3, 0.5], start=1):
        trainer.log(metrics_line(step, rate))
    printed = capsys.readouterr().out
    assert printed.count("[eva] warning: step 3: 30% of responses reached the token budget") == 1
    assert "warning: step 4" not in printed
    logged = (out / "model" / "eva_metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in logged] == [1, 2, 3, 4]
