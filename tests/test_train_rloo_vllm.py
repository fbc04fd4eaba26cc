"""train_rloo with --vllm.num_engines: one colocated engine per rank (openrlhf_eva/solve/vllm_rollout.py).

vLLM needs CUDA, so the engine here is FakeHFLLM (tests/fakes/fake_hf_vllm.py), importable as
`vllm` from tests/fakes/hf_vllm: vLLM 0.29's offline `LLM` surface over an HF model that samples
with the very call HF rollouts make. Everything else is real (DeepSpeed ZeRO-2 on gloo, the
trainer, the checkpoint). So with equal seeds the vLLM path must train exactly like the HF path,
and any difference is in the glue: weights not copied, copied late, or a layout that differs.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from openrlhf_eva import compat
from openrlhf_eva.solve import vllm_rollout
from openrlhf_eva.train_rloo import parse_args

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("test_train_rloo_shared", HERE / "test_train_rloo.py")
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)
tiny_run, run_in_process, read_metrics, without_timings = (
    _shared.tiny_run, _shared.run_in_process, _shared.read_metrics, _shared.without_timings)

# pg with its two micro-batches, ZeRO-2, 3 steps with a checkpoint at step 2 for the resume and an
# eval (the training seeds, 2 samples each) after step 2.
FLAGS = ["--eva.solver", "pg", "--train.batch_size", "16", "--train.micro_batch_size", "8", "--algo.kl.init_coef",
         "0", "--ds.zero_stage", "2", "--eva.total_prompts", "12", "--ckpt.save_steps", "2", "--eval.steps", "2",
         "--eval.n_samples_per_prompt", "2"]
VLLM = ["--vllm.num_engines", "1", "--vllm.enable_sleep", "--vllm.gpu_memory_utilization", "0.5"]
PROBE = torch.tensor([[3, 11, 5, 17, 7, 2, 13]])  # token ids inside the tiny vocabulary


@pytest.fixture(scope="module")
def fake_vllm():
    """`import vllm` finds FakeHFLLM for this module's tests, and nothing of it stays behind."""
    paths = [str(HERE / "fakes" / "hf_vllm"), str(HERE / "fakes")]
    sys.path[:0] = paths
    yield
    del sys.path[:len(paths)]
    for name in [name for name in sys.modules if name.split(".")[0] in ("vllm", "fake_vllm", "fake_hf_vllm")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def runs(tiny_run, fake_vllm, tmp_path_factory):
    """The HF run and the vLLM run of FLAGS, with the engine's logits next to the policy's at every load."""
    root = tmp_path_factory.mktemp("rloo_vllm")
    hf = run_in_process(tiny_run, root / "hf", *FLAGS, "--eval.dataset", tiny_run.seeds)
    loads = []
    load_policy_weights = vllm_rollout.ColocatedVLLMEngine.load_policy_weights

    def checked_load(engine, model, step):
        load_policy_weights(engine, model, step)
        with torch.no_grad():
            loads.append((step, engine.llm.model.hf(PROBE).logits, model(PROBE).logits))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vllm_rollout.ColocatedVLLMEngine, "load_policy_weights", checked_load)
        engine_run = run_in_process(tiny_run, root / "vllm", *FLAGS, *VLLM, "--eval.dataset", tiny_run.seeds)
    return hf, engine_run, loads, root


def test_vllm_rollouts_train_exactly_like_hf_generate(runs):
    hf, engine_run, _, root = runs
    assert hf.engine is None and engine_run.engine is not None
    assert engine_run.engine.llm.init_kwargs["gpu_memory_utilization"] == 0.5
    hf_metrics, vllm_metrics = read_metrics(root / "hf"), read_metrics(root / "vllm")
    assert [m["step"] for m in vllm_metrics] == [1, 2, 3]
    assert [any(key.startswith("eval_") for key in m) for m in vllm_metrics] == [False, True, False]
    assert without_timings(vllm_metrics) == without_timings(hf_metrics)
    assert (root / "vllm" / "model" / "model.safetensors").read_bytes() == \
        (root / "hf" / "model" / "model.safetensors").read_bytes()


def test_the_engine_holds_the_policys_weights_at_every_rollout_and_sleeps_while_it_trains(runs):
    _, engine_run, loads, _ = runs
    # trained batches at each call: rollouts 1, 2 (0, 1 batches), the eval after step 2 (2, in two
    # calls of 4 prompts), rollout 3 (2): only the first of each number copies weights
    assert [step for step, _, _ in loads] == [0, 1, 2, 2, 2]
    for step, engine_logits, policy_logits in loads:
        assert torch.equal(engine_logits, policy_logits), step
    # each new load brought weights the engine did not have: the optimizer steps reached it
    assert not torch.equal(loads[0][1], loads[1][1]) and not torch.equal(loads[1][1], loads[2][1])
    calls = engine_run.engine.llm.calls
    parameters = len(list(engine_run.actor.model.module.parameters()))
    loaded = ["wake_up", *["load_weights"] * parameters, "generate", "sleep"]
    reused = ["wake_up", "generate", "sleep"]
    # asleep from its start, awake only to load and generate
    assert calls == ["sleep", *loaded, *loaded, *loaded, *reused, *reused]


def test_a_resumed_vllm_run_repeats_its_last_step_exactly(runs, tiny_run):
    """Resumed from the step-2 checkpoint, the engine (built from the initial model) must take the
    checkpoint's weights before step 3, or step 3 samples with the wrong policy."""
    _, _, _, root = runs
    out = root / "vllm"
    metrics, weights = read_metrics(out), (out / "model" / "model.safetensors").read_bytes()
    resumed = run_in_process(tiny_run, out, *FLAGS, *VLLM, "--ckpt.load_enable")
    assert resumed.engine.llm.calls.count("generate") == 1
    assert without_timings(read_metrics(out)) == without_timings(metrics)
    assert (out / "model" / "model.safetensors").read_bytes() == weights


def test_vllm_flags_refused_with_their_reason(tiny_run, fake_vllm, capsys):
    base = ["--actor.model_name_or_path", tiny_run.model, "--data.prompt_dataset", tiny_run.seeds,
            "--reward.remote_url", "r.py", "--rollout.n_samples_per_prompt", "2", "--train.batch_size", "2"]
    assert parse_args([*base, *VLLM]).vllm.num_engines == 1
    for flags, reason in ((["--vllm.tensor_parallel_size", "2"], "holds the whole model"),
                          (["--vllm.num_engines", "1", "--ds.lora.rank", "4"], "copies full weights")):
        with pytest.raises(SystemExit):
            parse_args([*base, *flags])
        assert reason in capsys.readouterr().err


def test_vllm_missing_is_one_line_naming_the_extra(tiny_run, monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find_spec(name, *a))
    base = ["--actor.model_name_or_path", tiny_run.model, "--data.prompt_dataset", tiny_run.seeds,
            "--reward.remote_url", "r.py", "--rollout.n_samples_per_prompt", "2", "--train.batch_size", "2"]
    with pytest.raises(SystemExit):
        parse_args([*base, "--vllm.num_engines", "1"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "needs vLLM, which is not installed" in error and "openrlhf-eva[gpu]" in error


def test_the_gpu_recipe_passes_train_rloos_parser(fake_vllm):
    """Every flag of examples/gpu/train_rloo_vllm.sh exists and passes train_rloo's checks."""
    script = HERE.parent / "examples" / "gpu" / "train_rloo_vllm.sh"
    for gpus in ("8", "1"):
        printed = subprocess.run(["bash", str(script)], env={**os.environ, "DRY_RUN": "1", "GPUS": gpus}, check=True,
                                 capture_output=True, text=True).stdout.splitlines()
        args = parse_args(printed)
        assert args.vllm.num_engines == int(gpus) and args.vllm.enable_sleep and args.vllm.tensor_parallel_size == 1
        assert args.rollout.batch_size == 8 * int(gpus) and args.eva.evolver == "evol_instruct"
        assert args.eva.metric == "A_avg" and args.ds.zero_stage == 2


@pytest.mark.slow
def test_two_ranks_with_an_engine_each_hold_identical_buffers(tiny_run, tmp_path):
    """deepspeed --num_gpus 2 on gloo, each rank with its own FakeHFLLM (vllm from PYTHONPATH) and the
    programmatic evolver: every step both ranks' prompt buffers hash the same, and the buffer moves."""
    port = compat.free_port()
    out = tmp_path / "two_ranks"
    deepspeed = Path(sys.executable).with_name("deepspeed")
    cmd = [
        str(deepspeed), "--num_gpus", "2", "--master_port", str(port), "--module", "openrlhf_eva.train_rloo",
        "--actor.model_name_or_path", tiny_run.model, "--data.prompt_dataset", tiny_run.seeds,
        "--data.input_key", "prompt", "--data.label_key", "label", "--data.apply_chat_template",
        "--data.max_len", "48", "--reward.remote_url", str(_shared.EMBEDDED / "reward_func.py"),
        "--rollout.batch_size", "4", "--rollout.n_samples_per_prompt", "4", "--rollout.max_new_tokens", "8",
        "--rollout.micro_batch_size", "16", "--train.batch_size", "16", "--train.micro_batch_size", "8",
        "--actor.adam.lr", "1e-3", "--algo.kl.init_coef", "0", "--ds.zero_stage", "2",
        "--eva.evolver", "task", "--eva.evolver_path", str(_shared.EMBEDDED / "evolve_func.py"),
        "--eva.buffer_size", "16", "--eva.total_prompts", "12",
        "--vllm.num_engines", "2", "--vllm.enable_sleep",
        "--ckpt.output_dir", str(out / "model"), "--ckpt.path", str(out / "ckpt"),
    ]
    env = {**_shared.run_env(port),
           "PYTHONPATH": os.pathsep.join([str(HERE / "fakes" / "hf_vllm"), str(HERE / "fakes"),
                                          os.environ.get("PYTHONPATH", "")])}
    log = tmp_path / "two_ranks.log"
    with open(log, "w") as file:
        proc = subprocess.run(cmd, stdout=file, stderr=subprocess.STDOUT, env=env, timeout=600)
    assert proc.returncode == 0, log.read_text()[-4000:]
    hashes = [m["eva/buffer_hashes"] for m in read_metrics(out)]
    assert len(hashes) == 3 and all(len(pair) == 2 and pair[0] == pair[1] for pair in hashes)
    assert len({pair[0] for pair in hashes}) == 3
