"""`make gpu-check`: what to run once on a CUDA machine (about 8 minutes on one H100/H200).

1. tests  the CUDA tests (tests/ops: compiled Triton kernels against fp64, int64 offsets past
          2**31, soft cap + vocabulary slices + split rows on the last GPU, no slower-path warning).
2. train  two steps of `train_dpo --eva.fused_logprobs` and of `train_rloo --eva.fused_logprobs`
          on a small random Gemma-2 (soft-capped logits) and Qwen2 (tied embeddings), on CUDA.
3. bench  bf16 log-probs of lm_head(hidden), H 4096, V in 32000 128256 151936 256000 and 50257
          (not divisible by 16), N in 1024 8192 32768, forward and forward+backward, for
          openrlhf (Actor.forward's way: bf16 logits, fp32 copy, OpenRLHF's log_probs_from_logits),
          torch (fp32 log_softmax + gather), liger (LigerFusedLinearCrossEntropyLoss),
          cce (cut_cross_entropy.linear_cross_entropy) and eva (fused_linear_logprobs): median
          time, extra peak memory, max error on 1024 rows against fp64, and the roofline fraction
          (useful FLOPs or minimal HBM bytes over the datasheet peak, whichever binds).
          Shapes run small to large until the time budget is spent; the rest is listed as skipped.
4. rollout  `train_rloo` on a random Qwen2 shaped like Qwen2.5-0.5B, 3 steps with HF generate and 3
          with `--vllm.num_engines 1 --vllm.enable_sleep` (a colocated vLLM engine): rollout
          tokens/s and step time (medians of the steps after the first) for both, written to
          examples/bench/rloo_rollout_cuda.json; the vLLM arm is skipped with one line without vllm.
Writes examples/bench/logprobs_cuda.json and prints the table. A competitor that does not
import is skipped with one line. Without CUDA, step 1 runs (its tests skip) and steps 2-4 are
skipped with one line.

    python examples/gpu/gpu_check.py [--budget-s 480] [--out examples/bench/logprobs_cuda.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "examples"))

import bench_logprobs as bench  # noqa: E402  (its timing, memory and roofline helpers)

from openrlhf_eva.compat import child_process_env  # noqa: E402
from openrlhf_eva.ops import fused_linear_logprobs  # noqa: E402

VOCABS = [32000, 50257, 128256, 151936, 256000]
TOKENS = [1024, 8192, 32768]
HIDDEN = 4096
ERROR_ROWS = 1024
TRAIN_FAMILIES = {  # small random models on the char tokenizer's ids (vocabulary padded to 4096)
    "gemma2": ("Gemma2Config", {"head_dim": 64, "final_logit_softcapping": 30.0, "query_pre_attn_scalar": 64,
                                "sliding_window": 64}),
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": True}),
}


def say(line: str) -> None:
    print(f"[gpu-check] {line}", flush=True)


def run_tests() -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda",
           str(REPO / "tests" / "ops" / "test_logprobs.py")]
    started = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    say(f"CUDA tests: {summary} (exit {proc.returncode})")
    if proc.returncode != 0:
        print(proc.stdout[-6000:], proc.stderr[-3000:])
    return {"command": " ".join(cmd[2:]), "returncode": proc.returncode, "summary": summary,
            "seconds": round(time.time() - started, 1)}


# --- trainings -----------------------------------------------------------------------------------


def build_family(root: Path, name: str) -> str:
    import transformers

    from openrlhf_eva.embedded.model import build_tokenizer

    config_class, overrides = TRAIN_FAMILIES[name]
    config = getattr(transformers, config_class)(
        vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        **overrides,
    )
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(root / name)
    build_tokenizer().save_pretrained(root / name)
    return str(root / name)


def write_data(root: Path) -> tuple[str, str]:
    from openrlhf_eva.creator import write_jsonl
    from openrlhf_eva.embedded.data import make_seeds
    from openrlhf_eva.embedded.tasks import solve

    seeds = make_seeds(8, seed=0)
    write_jsonl(root / "seeds.jsonl", seeds)
    pairs = [{"prompt": [{"role": "user", "content": row["prompt"]}],
              "chosen": [{"role": "assistant", "content": solve(row["prompt"])}],
              "rejected": [{"role": "assistant", "content": solve(row["prompt"])[::-1] + "0"}]} for row in seeds]
    write_jsonl(root / "pairs.jsonl", pairs)
    return str(root / "pairs.jsonl"), str(root / "seeds.jsonl")


def training_commands(model: str, pairs: str, seeds: str, out: Path) -> dict:
    common = ["--ds.zero_stage", "2", "--ds.param_dtype", "bf16", "--ds.attn_implementation", "sdpa",
              "--eva.fused_logprobs"]
    dpo = [sys.executable, "-m", "openrlhf_eva.train_dpo", "--model.model_name_or_path", model,
           "--data.dataset", pairs, "--data.prompt_key", "prompt", "--data.chosen_key", "chosen",
           "--data.rejected_key", "rejected", "--data.apply_chat_template", "--data.max_len", "64",
           "--train.micro_batch_size", "4", "--train.batch_size", "4", "--train.max_epochs", "1",
           "--adam.lr", "1e-4", "--lr_warmup_ratio", "0", "--ckpt.output_dir", str(out / "dpo"),
           "--ckpt.path", str(out / "dpo_ckpt"), *common]  # 8 pairs / 4: two steps
    rloo = [sys.executable, "-m", "openrlhf_eva.train_rloo", "--actor.model_name_or_path", model,
            "--data.prompt_dataset", seeds, "--data.input_key", "prompt", "--data.label_key", "label",
            "--data.apply_chat_template", "--data.max_len", "48",
            "--reward.remote_url", str(REPO / "openrlhf_eva" / "embedded" / "reward_func.py"),
            "--rollout.batch_size", "4", "--rollout.n_samples_per_prompt", "4", "--rollout.max_new_tokens", "8",
            "--train.batch_size", "16", "--train.micro_batch_size", "8", "--actor.adam.lr", "1e-4",
            "--algo.kl.init_coef", "0.01", "--eva.total_prompts", "8", "--ckpt.output_dir", str(out / "rloo"),
            "--ckpt.path", str(out / "rloo_ckpt"), *common]  # 8 prompts / 4: two steps
    return {"train_dpo": dpo, "train_rloo": rloo}


def run_trainings() -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="eva-gpu-check-") as tmp:
        root = Path(tmp)
        pairs, seeds = write_data(root)
        for name in TRAIN_FAMILIES:
            model = build_family(root, name)
            for trainer, cmd in training_commands(model, pairs, seeds, root / name).items():
                started = time.time()
                proc = subprocess.run(cmd, cwd=REPO, env=child_process_env(), capture_output=True, text=True,
                                      timeout=420)
                output = proc.stdout + proc.stderr
                fused = "-> fused lm_head + log-probs" in output
                row = {"family": name, "trainer": trainer, "returncode": proc.returncode, "fused_path": fused,
                       "seconds": round(time.time() - started, 1)}
                if trainer == "train_rloo" and proc.returncode == 0:
                    metrics = (root / name / "rloo" / "eva_metrics.jsonl").read_text().splitlines()
                    row["steps"] = len(metrics)
                    row["last"] = {k: v for k, v in json.loads(metrics[-1]).items()
                                   if k in ("policy_loss", "actor_grad_norm", "kl", "reward")}
                ok = proc.returncode == 0 and fused
                say(f"{trainer} {name}: {'ok' if ok else 'FAILED'} in {row['seconds']} s"
                    f"{'' if fused else ' (the fused path was not taken)'}")
                if proc.returncode != 0:
                    print(output[-4000:])
                results.append(row)
    return results


# --- rollouts: HF generate vs a colocated vLLM engine in train_rloo ------------------------------

ROLLOUT_OUT = REPO / "examples" / "bench" / "rloo_rollout_cuda.json"


def rollout_bench_commands(model: str, seeds: str, out: Path) -> dict:
    """train_rloo with HF generate and with one vLLM engine: 3 batches of 8 prompts x 8, 128 new tokens."""
    hf = [sys.executable, "-m", "openrlhf_eva.train_rloo", "--actor.model_name_or_path", model,
          "--data.prompt_dataset", seeds, "--data.input_key", "prompt", "--data.label_key", "label",
          "--data.apply_chat_template", "--data.max_len", "192",
          "--reward.remote_url", str(REPO / "openrlhf_eva" / "embedded" / "reward_func.py"),
          "--rollout.batch_size", "8", "--rollout.n_samples_per_prompt", "8", "--rollout.max_new_tokens", "128",
          "--rollout.micro_batch_size", "16", "--train.batch_size", "64", "--train.micro_batch_size", "16",
          "--actor.adam.lr", "1e-6", "--algo.kl.init_coef", "0", "--eva.total_prompts", "24",
          "--ds.zero_stage", "2", "--ds.param_dtype", "bf16", "--ds.attn_implementation", "sdpa"]
    vllm = [*hf, "--vllm.num_engines", "1", "--vllm.enable_sleep", "--vllm.gpu_memory_utilization", "0.5"]
    return {arm: [*cmd, "--ckpt.output_dir", str(out / arm), "--ckpt.path", str(out / f"{arm}_ckpt")]
            for arm, cmd in (("hf_generate", hf), ("vllm", vllm))}


def run_rollout_bench() -> dict:
    import importlib.util

    import transformers

    from openrlhf_eva.creator import write_jsonl
    from openrlhf_eva.embedded.data import make_seeds
    from openrlhf_eva.embedded.model import build_tokenizer

    report = {"model": "random Qwen2, Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14/2 heads, vocab 151936)"}
    with tempfile.TemporaryDirectory(prefix="eva-gpu-rollout-") as tmp:
        root = Path(tmp)
        config = transformers.Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                          num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                          max_position_embeddings=4096, tie_word_embeddings=True,
                                          pad_token_id=0, bos_token_id=1, eos_token_id=2)
        torch.manual_seed(0)
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(root / "qwen2_05b")
        build_tokenizer().save_pretrained(root / "qwen2_05b")
        write_jsonl(root / "seeds.jsonl", make_seeds(24, seed=0))
        for arm, cmd in rollout_bench_commands(str(root / "qwen2_05b"), str(root / "seeds.jsonl"), root).items():
            if arm == "vllm" and importlib.util.find_spec("vllm") is None:
                say("rollout bench: vllm is not installed here (pip install 'openrlhf-eva[gpu]'): its arm skipped")
                report[arm] = {"skipped": "vllm not installed"}
                continue
            proc = subprocess.run(cmd, cwd=REPO, env=child_process_env(), capture_output=True, text=True,
                                  timeout=600)
            if proc.returncode != 0:
                print((proc.stdout + proc.stderr)[-4000:])
                report[arm] = {"returncode": proc.returncode}
                continue
            steps = [json.loads(line) for line in (root / arm / "eva_metrics.jsonl").read_text().splitlines()]
            # the first step pays for compilation, CUDA graphs and the allocator's warm-up
            tokens_per_s = [m["response_length_mean"] * 8 * 8 / m["timing/rollout"] for m in steps[1:]]
            report[arm] = {"returncode": 0, "steps": len(steps),
                           "rollout_tokens_per_s": round(statistics.median(tokens_per_s), 1),
                           "step_seconds": round(statistics.median(m["timing/step"] for m in steps[1:]), 3),
                           "rollout_seconds": round(statistics.median(m["timing/rollout"] for m in steps[1:]), 3)}
            say(f"rollout bench {arm}: {report[arm]['rollout_tokens_per_s']} tokens/s, "
                f"{report[arm]['step_seconds']} s a step")
    report["environment"] = bench.environment(torch.device("cuda"))
    ROLLOUT_OUT.write_text(json.dumps(report, indent=1) + "\n")
    say(f"wrote {ROLLOUT_OUT}")
    return report


# --- benchmarks ----------------------------------------------------------------------------------


def competitors() -> dict:
    """name -> fn(hidden, weight, labels) returning per-token log-probs; skipped ones print one line."""
    def logits(h, w):
        return torch.nn.functional.linear(h, w).unsqueeze(0)

    providers = {}
    openrlhf_fn, source = bench.load_openrlhf()
    if openrlhf_fn is None:
        say(f"skip openrlhf: {source}")
    else:
        providers["openrlhf"] = lambda h, w, y: openrlhf_fn(logits(h, w).to(torch.float32), y.unsqueeze(0))[0]
    providers["torch"] = lambda h, w, y: bench.torch_ref_gather(logits(h, w), y.unsqueeze(0))[0]
    liger, source = bench.load_liger()
    if liger is None:
        say(f"skip liger: {source}")
    else:
        providers["liger"] = lambda h, w, y: -liger(w, h, y)  # its backward takes a scalar: summed
    try:
        from cut_cross_entropy import linear_cross_entropy

        providers["cce"] = lambda h, w, y: -linear_cross_entropy(h, w, y, reduction="none")
    except Exception as exc:
        say(f"skip cce: cut_cross_entropy not importable: {exc}")
    providers["eva"] = lambda h, w, y: fused_linear_logprobs(h, w, y)
    return providers


def bench_shape(V: int, N: int, providers: dict, peaks: dict, reps: int, device) -> list[dict]:
    g = torch.Generator(device=device).manual_seed(0)
    h = torch.randn(N, HIDDEN, device=device, generator=g).to(torch.bfloat16)
    w = (torch.randn(V, HIDDEN, device=device, generator=g) / HIDDEN**0.5).to(torch.bfloat16)
    labels = torch.randint(0, V, (N,), device=device, generator=g)
    ref = bench.reference_fused(h[:ERROR_ROWS], w, labels[:ERROR_ROWS])
    rows = []
    for mode in ("fwd", "fwd+bwd"):
        grad = mode != "fwd"
        inputs, grad_inputs = (h.requires_grad_(grad), w.requires_grad_(grad), labels), [h, w] if grad else []
        flops, nbytes = bench.work("fused", mode, N, V, HIDDEN, 2)
        for name, fn in providers.items():
            row = {"V": V, "N": N, "H": HIDDEN, "mode": mode, "provider": name}
            try:
                with torch.no_grad():
                    row["max_abs_err"] = (fn(h[:ERROR_ROWS], w, labels[:ERROR_ROWS]).double() - ref).abs().max().item()
                row["extra_peak_bytes"] = bench.extra_peak_bytes(fn, inputs, grad_inputs, mode, name, device)
                row["ms_median"], row["ms_all"] = bench.time_ms(fn, inputs, grad_inputs, mode, name, device, reps)
                row["hbm_frac"] = nbytes / peaks["bandwidth"] / (row["ms_median"] * 1e-3)
                row["roofline_frac"] = bench.roofline(flops, nbytes, row["ms_median"], peaks)
            except torch.OutOfMemoryError as exc:
                row["error"] = f"OOM: {str(exc).splitlines()[0]}"
            except Exception as exc:  # keep the sweep going; record why
                row["error"] = f"{type(exc).__name__}: {exc}"
            for t in grad_inputs:
                t.grad = None
            gc.collect()
            torch.cuda.empty_cache()
            rows.append(row)
            print_row(row)
    return rows


def print_row(row: dict) -> None:
    head = f"V={row['V']:>6} N={row['N']:>5} {row['mode']:7s} {row['provider']:8s}"
    if "error" in row:
        print(f"{head} {row['error'][:90]}", flush=True)
        return
    print(f"{head} {row['ms_median']:9.2f} ms  peak +{row['extra_peak_bytes'] / 2**30:7.2f} GiB  "
          f"roofline {row['roofline_frac']:5.1%}  HBM {row['hbm_frac']:5.1%}  err {row['max_abs_err']:.1e}",
          flush=True)


def run_benchmarks(deadline: float, reps: int) -> tuple[list[dict], list[dict], dict]:
    device = torch.device("cuda")
    peaks = bench.datasheet_for(device) or bench.measured_peaks(device)
    say(f"roofline peaks: {peaks['source']}")
    providers = competitors()
    rows, skipped = [], []
    for N in TOKENS:  # small to large: the time budget cuts the largest shapes first
        for V in VOCABS:
            if time.time() > deadline:
                skipped.append({"V": V, "N": N, "reason": "time budget"})
                continue
            rows.extend(bench_shape(V, N, providers, peaks, reps, device))
    if skipped:
        say(f"time budget spent: {len(skipped)} shapes skipped: " + ", ".join(f"V={s['V']} N={s['N']}" for s in skipped))
    return rows, skipped, peaks


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-s", type=float, default=480.0, help="total wall-clock budget (the bench takes the rest)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "examples" / "bench" / "logprobs_cuda.json"))
    args = p.parse_args()
    started = time.time()
    report = {"tests": run_tests()}
    if not torch.cuda.is_available():
        say("no CUDA device: the CUDA tests above skipped; the trainings, log-prob benchmarks and the "
            f"train_rloo rollout bench need a GPU and were not run ({args.out}, {ROLLOUT_OUT.name} left as they are)")
        return report["tests"]["returncode"]
    report["trainings"] = run_trainings()
    rollout = run_rollout_bench()
    rows, skipped, peaks = run_benchmarks(started + args.budget_s - 15, args.reps)
    report.update(environment=bench.environment(torch.device("cuda")), peaks=peaks, results=rows,
                  skipped_shapes=skipped, seconds=round(time.time() - started, 1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    say(f"wrote {args.out} after {report['seconds']} s")
    failed = report["tests"]["returncode"] != 0 or any(
        r["returncode"] != 0 or not r["fused_path"] for r in report["trainings"]) or any(
        arm.get("returncode", 0) != 0 for arm in (rollout["hf_generate"], rollout["vllm"]))
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
