"""OpenRLHF's Ray PPO/RLOO path with eva, really run on CPU: `python -m openrlhf_eva.train_ppo_ray`.

Real: a local Ray cluster with logical GPUs and placement groups (openrlhf_eva.compat.ray_cpu),
upstream's PolicyModelActor and ReferenceModelActor (DeepSpeed ZeRO-2 on gloo), EvaPPOTrainer as a
Ray actor, RolloutRayActors from create_vllm_engines, the weight sync from DeepSpeed rank 0 to
every engine after each step, the embedded reward_func inside the rollout actors. Fake: only the
engine inside RolloutRayActor, FakeHFAsyncLLMEngine (tests/fakes/fake_hf_vllm.py, the tiny model in
transformers on CPU), which every process imports as `vllm` through PYTHONPATH.

Each case is one subprocess with its own Ray cluster under its own short temp dir (Ray's unix
sockets must fit in 107 bytes). They do not share one cluster: Ray workers take their environment
from the raylet, so the engines' record folder and the fake `vllm` on PYTHONPATH could not differ
per case, and a case that dies cannot leave actors or placement groups behind for the next.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from openrlhf_eva import compat
from openrlhf_eva.creator.evolve.templates import CREATOR_FRAME, REWRITER_FRAME
from openrlhf_eva.embedded.data import make_seeds

HERE = Path(__file__).resolve().parent
EMBEDDED = HERE.parent / "openrlhf_eva" / "embedded"
FAKE_VLLM_PATH = [str(HERE / "fakes" / "hf_vllm"), str(HERE / "fakes")]
RUN_TIMEOUT = 600  # seconds; a run takes 40-90 s on a loaded 2-core machine

# 4 seeds, 4 prompts per rollout batch, n = 2: a budget of 12 prompts is 3 steps, the third and
# second from the buffer the task evolver fills. 8 samples per optimizer step: max_steps is 3 from
# the budget (12 x 2 / 8), where upstream would size it from the seeds (4 x 2 / 8 = 1).
NUM_SEEDS, BATCH, N, TRAIN_BATCH, BUDGET = 4, 4, 2, 8, 12


@pytest.fixture(scope="module")
def inputs(warm_tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_cpu")
    seeds = root / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(row) + "\n" for row in make_seeds(NUM_SEEDS, seed=3)))
    return SimpleNamespace(policy=str(warm_tiny_model[1]), seeds=str(seeds))


def base_argv(inputs, out: Path) -> list[str]:
    return [
        "--actor.model_name_or_path", inputs.policy, "--data.prompt_dataset", inputs.seeds,
        "--data.input_key", "prompt", "--data.label_key", "label", "--data.apply_chat_template",
        "--data.max_len", "64", "--rollout.max_new_tokens", "12",
        "--reward.remote_url", str(EMBEDDED / "reward_func.py"), "--algo.advantage.estimator", "rloo",
        "--rollout.n_samples_per_prompt", str(N), "--rollout.batch_size", str(BATCH),
        "--rollout.micro_batch_size", "4", "--train.batch_size", str(TRAIN_BATCH), "--train.micro_batch_size", "4",
        "--actor.num_nodes", "1", "--actor.num_gpus_per_node", "1", "--ref.num_nodes", "1", "--ref.num_gpus_per_node",
        "1", "--train.seed", "0",
        "--ckpt.output_dir", str(out / "model"), "--ckpt.path", str(out / "ckpt"), "--logger.tensorboard_dir",
        str(out / "tb"),
        "--eva.enable", "--eva.total_prompts", str(BUDGET), "--eva.buffer_size", "8", "--eva.n_new", "2",
    ]


TASK_EVOLVER = ["--eva.evolver", "task", "--eva.evolver_path", str(EMBEDDED / "evolve_func.py")]
COLOCATED = ["--train.colocate_all", "--vllm.enable_sleep", "--vllm.sync_backend", "gloo", "--vllm.num_engines", "1"]


def run_train_ppo_ray(argv: list[str], out: Path) -> SimpleNamespace:
    """The entry point in a subprocess (its own session, so nothing it starts can outlive the test)."""
    records = out / "engines"
    records.mkdir(parents=True)
    ray_tmp = tempfile.mkdtemp(prefix="ev", dir="/tmp")
    env = compat.child_process_env()
    env.pop("RAY_ADDRESS", None)
    env.update(PYTHONPATH=os.pathsep.join([*FAKE_VLLM_PATH, env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               RAY_TMPDIR=ray_tmp, FAKE_HF_VLLM_RECORD_DIR=str(records), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    log_path = out / "run.log"
    started = time.time()
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "openrlhf_eva.train_ppo_ray", *argv], cwd=out, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode = process.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            try:  # the driver, and any Ray process of its session that did not go with it
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
            shutil.rmtree(ray_tmp, ignore_errors=True)
    log_text = log_path.read_text(errors="replace")
    assert returncode == 0, f"train_ppo_ray exited with {returncode}:\n{log_text[-6000:]}"
    print(f"{out.name}: {time.time() - started:.0f} s")
    return SimpleNamespace(out=out, records=records, log=log_text)


def tensorboard_scalars(log_root: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run_dir,) = [path for path in log_root.iterdir() if path.is_dir()]
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [event.value for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def engine_calls(run) -> dict[str, list[dict]]:
    return {path.stem: [json.loads(line) for line in path.read_text().splitlines()]
            for path in sorted(run.records.glob("engine-*.jsonl"))}


def assert_engines_hold_the_saved_policy(run, inputs, num_engines: int, steps: int) -> None:
    """After the last sync every engine's weights are bit-identical to the model train() saved."""
    import torch
    from safetensors.torch import load_file

    saved = load_file(run.out / "model" / "model.safetensors")
    initial = load_file(Path(inputs.policy) / "model.safetensors")
    assert any(not torch.equal(saved[name], initial[name]) for name in saved)  # training moved the policy
    calls = engine_calls(run)
    assert len(calls) == num_engines
    for name, log in calls.items():
        synced = [call for call in log if call["call"] == "synced"]
        assert len(synced) == steps and all(call["parameters"] == len(saved) for call in synced)
        weights = load_file(run.records / f"{name}.safetensors")
        assert weights.keys() == saved.keys()
        assert all(weights[key].dtype == saved[key].dtype and torch.equal(weights[key], saved[key]) for key in saved)


def assert_lr_follows_the_budget(scalars: dict, steps: int) -> None:
    """actor_lr per step is upstream's scheduler (cosine_with_min_lr, lr 1e-6, 3% warm-up) sized by
    eva's max_steps: one optimizer step per rollout step here."""
    import torch
    from transformers import get_scheduler

    def schedule(max_steps: int) -> list[float]:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-6)
        scheduler = get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=math.ceil(max_steps * 0.03),
                                  num_training_steps=max_steps, scheduler_specific_kwargs={"min_lr_rate": 0.1})
        rates = []
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
            rates.append(scheduler.get_last_lr()[0])
        return rates

    eva_max_steps, seed_max_steps = BUDGET * N // TRAIN_BATCH, NUM_SEEDS * N // TRAIN_BATCH
    assert scalars["train/actor_lr"] == pytest.approx(schedule(eva_max_steps), rel=1e-5)
    assert schedule(eva_max_steps) != pytest.approx(schedule(seed_max_steps), rel=1e-5)


def eva_buffer_rows(run, scalars: dict, steps: int) -> list[dict]:
    """The final buffer (eva_buffer.jsonl, always written), once every step logged eva's scalars to
    tensorboard and to eva_metrics.jsonl."""
    for key in ("eva/phase_index", "eva/batch_from_buffer", "eva/buffer_size", "eva/children_accepted",
                "timing/eva_evolve"):
        assert len(scalars[f"train/{key}"]) == steps, key
    lines = [json.loads(line) for line in (run.out / "model" / "eva_metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, steps + 1))
    assert [line["eva/phase_index"] for line in lines] == scalars["train/eva/phase_index"]
    return [json.loads(line) for line in (run.out / "model" / "eva_buffer.jsonl").read_text().splitlines()]


def prepared(inputs, tmp_path, name: str, *extra: str) -> tuple[list[str], Path]:
    out = tmp_path / name
    out.mkdir()
    return [*base_argv(inputs, out), *extra], out


@pytest.mark.slow
def test_separate_engines_and_actors(inputs, tmp_path):
    """Two engines, policy and reference on their own logical GPUs; nccl is switched to gloo on CPU."""
    argv, out = prepared(inputs, tmp_path, "separate", *TASK_EVOLVER, "--vllm.num_engines", "2")
    run = run_train_ppo_ray(argv, out)
    steps = BUDGET // BATCH
    assert "--vllm.sync_backend nccl -> gloo" in run.log
    assert_engines_hold_the_saved_policy(run, inputs, num_engines=2, steps=steps)
    scalars = tensorboard_scalars(out / "tb")
    assert_lr_follows_the_budget(scalars, steps)
    rows = eva_buffer_rows(run, scalars, steps)
    assert scalars["train/eva/batch_from_buffer"][0] == 0 and sum(scalars["train/eva/batch_from_buffer"]) > 0
    assert rows and all(row["depth"] >= 1 and row["label"] for row in rows)  # the task evolver's children
    # Every seed's n samples and every buffer prompt's went through the engines' real rollout path.
    generated = [call for log in engine_calls(run).values() for call in log if call["call"] == "generate"]
    assert len(generated) == BUDGET * N


@pytest.mark.slow
def test_colocated_sleeping_engine_rolls_out_and_evolves(inputs, tmp_path):
    """--train.colocate_all --vllm.enable_sleep: one placement group, the engine asleep except to generate
    and to take the weights (the stand-in refuses anything else). evol_instruct rewrites the step's
    parents with that engine after each weight sync. No reference model (KL 0): one process less.
    One cluster for both (each costs ~40 s); task evolving on Ray is the separate-engines case."""
    # Meta-prompts are the frames around a parent (~1000 characters), hence the longer --data.max_len.
    argv, out = prepared(inputs, tmp_path, "colocated", *COLOCATED, "--algo.kl.init_coef", "0",
                         "--eva.evolver", "evol_instruct", "--eva.evolve_max_new_tokens", "24", "--data.max_len", "2048")
    run = run_train_ppo_ray(argv, out)
    steps = BUDGET // BATCH
    assert_engines_hold_the_saved_policy(run, inputs, num_engines=1, steps=steps)
    scalars = tensorboard_scalars(out / "tb")
    assert_lr_follows_the_budget(scalars, steps)
    eva_buffer_rows(run, scalars, steps)
    parents = [int(count) for count in scalars["train/eva/parents"]]
    assert parents[0] == BATCH // 2  # the batch's top half (later steps' frontier checks may drop tied groups)
    (log,) = engine_calls(run).values()
    # Meta-prompts are ~1000 characters, rollout prompts ~30. The char-level tokenizer decodes the
    # frames' characters outside its alphabet as <unk>, so the record cannot be matched to the frame.
    shortest_frame = min(len(REWRITER_FRAME), len(CREATOR_FRAME)) // 2

    def label(call: dict) -> str:
        if call["call"] == "generate":
            return "meta" if len(call["prompt"]) > shortest_frame else "rollout"
        return "wake " + "+".join(call["tags"]) if call["call"] == "wake_up" else call["call"]

    calls = [label(call) for call in log]
    # Asleep from create_vllm_engines on (vllm_engine.py:308). A rollout wakes both tags, one call each
    # (vllm_engine.py:148-151), and sleeps after; the sync wakes only the weights (ppo_trainer.py:314).
    # The evolver then wakes both, writes two children per parent with the updated policy (--eva.n_new
    # 2, and n_new_bootstrap's default 2), and puts the engine back to sleep; a step without parents
    # leaves it asleep. Upstream's loop draws once more after the last batch, finds no prompt, and
    # wakes and sleeps the engine for nothing.
    expected = ["sleep"]
    for count in parents:
        expected += ["wake weights", "wake kv_cache", *["rollout"] * (BATCH * N), "sleep", "wake weights", "synced"]
        expected += ["wake weights", "wake kv_cache", *["meta"] * (count * 2), "sleep"] if count else []
    assert calls == expected + ["wake weights", "wake kv_cache", "sleep"]


def load_fake(name: str, monkeypatch):
    spec = importlib.util.spec_from_file_location(name, HERE / "fakes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # by name, as `from fake_vllm import ...` finds it
    spec.loader.exec_module(module)
    return module


def test_engine_stand_in_refuses_what_a_real_engine_cannot_do(tmp_path, monkeypatch):
    """Asleep (either tag), over max_model_len, or a sleep without sleep mode: loud errors, not outputs."""
    from openrlhf_eva.embedded.model import build_model, build_tokenizer

    fake_vllm = load_fake("fake_vllm", monkeypatch)
    fake_hf_vllm = load_fake("fake_hf_vllm", monkeypatch)
    tokenizer = build_tokenizer()
    build_model(tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    def engine(**options):
        args = fake_hf_vllm.FakeHFEngineArgs(model=str(tmp_path), worker_extension_cls=fake_hf_vllm.WORKER_EXTENSION,
                                             dtype="bfloat16", max_model_len=16, **options)
        return fake_hf_vllm.FakeHFAsyncLLMEngine.from_engine_args(args)

    def generate(llm, prompt_ids):
        async def outputs():
            return [out async for out in llm.generate({"prompt_token_ids": prompt_ids},
                                                      fake_vllm.FakeSamplingParams(max_tokens=4), "request-0")]
        return asyncio.run(outputs())

    sleepy = engine(enable_sleep_mode=True)
    asyncio.run(sleepy.sleep(level=1))
    with pytest.raises(RuntimeError, match=r"while the engine sleeps \(\['kv_cache', 'weights'\] not woken\)"):
        generate(sleepy, [3, 4, 5])
    asyncio.run(sleepy.wake_up(tags=["weights"]))  # what the weight sync wakes
    with pytest.raises(RuntimeError, match=r"\['kv_cache'\] not woken"):
        generate(sleepy, [3, 4, 5])
    asyncio.run(sleepy.wake_up(tags=["kv_cache"]))
    (output,) = generate(sleepy, [3, 4, 5])
    assert output.finished and 1 <= len(output.outputs[0].token_ids) <= 4
    assert output.outputs[0].finish_reason in ("stop", "length")
    with pytest.raises(ValueError, match="longer than the maximum model length of 16"):
        generate(sleepy, list(range(3, 19)))
    with pytest.raises(ValueError, match="Sleep mode is not enabled"):
        asyncio.run(engine().sleep())
