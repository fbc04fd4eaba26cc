"""examples/gpu/gpu_check.py (`make gpu-check`) stays runnable: on a machine without CUDA it runs
the CUDA test selection (which skips), says in one line what it did not run, and exits 0; its
training commands are valid train_rloo command lines."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "gpu" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine `make gpu-check` runs it for real")
def test_gpu_check_on_cpu_runs_the_tests_and_names_what_it_skips(tmp_path):
    out = tmp_path / "logprobs_cuda.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[gpu-check]")]
    assert len(lines) == 2 and "CUDA tests:" in lines[0] and "skipped" in lines[0] and "(exit 0)" in lines[0]
    assert lines[1].startswith("[gpu-check] no CUDA device:") and "were not run" in lines[1]
    assert not out.exists()


def test_gpu_check_training_commands_parse(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    from openrlhf_eva.train_rloo import parse_args

    commands = gpu_check.training_commands("model-dir", "pairs.jsonl", "seeds.jsonl", tmp_path)
    assert set(commands) == {"train_dpo", "train_rloo"}
    args = parse_args(commands["train_rloo"][3:])
    assert args.eva.fused_logprobs and args.rollout.batch_size * 2 == int(args.eva.total_prompts)
    assert "--eva.fused_logprobs" in commands["train_dpo"] and commands["train_dpo"][2] == "openrlhf_eva.train_dpo"


def test_gpu_check_rollout_bench_commands_parse_with_and_without_vllm(tmp_path, monkeypatch):
    """Both arms of the rollout bench are valid train_rloo command lines; the vLLM one asks for one
    colocated engine (vllm itself: the FakeHFLLM package, so that the parser's install check passes)."""
    monkeypatch.syspath_prepend(str(REPO / "tests" / "fakes"))
    monkeypatch.syspath_prepend(str(REPO / "tests" / "fakes" / "hf_vllm"))
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import gpu_check

    from openrlhf_eva.train_rloo import parse_args

    commands = gpu_check.rollout_bench_commands("model-dir", "seeds.jsonl", tmp_path)
    hf, vllm = (parse_args(commands[arm][3:]) for arm in ("hf_generate", "vllm"))
    assert hf.vllm.num_engines is None and vllm.vllm.num_engines == 1 and vllm.vllm.enable_sleep
    assert hf.rollout.max_new_tokens == vllm.rollout.max_new_tokens == 128
    assert hf.ckpt.output_dir != vllm.ckpt.output_dir
