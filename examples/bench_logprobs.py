"""Benchmark per-token log-prob gathering: time, extra peak memory, error, roofline fraction.

Two sections, bf16 unless noted:
  gather  input = logits [1, N, V] (what Actor.forward holds before its fp32 cast)
          providers: torch_ref (fp32 log_softmax + gather), openrlhf_actor (Actor's
          `.to(float32)` then OpenRLHF's function), openrlhf_fn (OpenRLHF's function on the
          input as-is), ours (logprobs_from_logits). On CPU also fp32 input.
  fused   input = hidden [N, H] and lm_head weight [V, H]
          providers: torch_ref, openrlhf_actor (matmul, cast, function), ours_logits (matmul +
          logprobs_from_logits), ours_fused (fused_linear_logprobs), liger (fused linear CE,
          reduction="none"; its backward takes a scalar upstream grad, so sum() there).
Modes: fwd (no grad) and fwd+bwd (a per-token upstream gradient of 0.5).

Extra peak memory = peak allocated during the op minus what was allocated before it:
  CUDA: torch.cuda.max_memory_allocated() delta.
  CPU:  every allocation and free recorded by the torch profiler (profile_memory=True; the
        c10 CPU allocator reports each one, including temporaries inside aten kernels), replayed
        in time order; the maximum running total is the peak. Outputs count; inputs do not.
Roofline fraction = max(useful_flops / peak_flops, min_bytes / peak_bandwidth) / time, against
datasheet peaks (H100 SXM / H200) and peaks measured here (big bf16 matmul, big copy).

  python examples/bench_logprobs.py               # --cpu-small (1 thread) on a machine without CUDA
  python examples/bench_logprobs.py --H 4096 --V 128256 --N 16384   # a GPU subset
Writes examples/bench/logprobs_cpu.json or examples/bench/logprobs_<gpu>.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openrlhf_eva.ops import fused_linear_logprobs, logprobs_from_logits, resolve_backend  # noqa: E402

DATASHEET = {  # bf16 dense FLOP/s, HBM bytes/s
    "H100": {"flops": 989e12, "bandwidth": 3.35e12, "source": "H100 SXM datasheet"},
    "H200": {"flops": 989e12, "bandwidth": 4.8e12, "source": "H200 datasheet"},
}
MEMORY_TARGET = {"N": 4096, "V": 32000, "max_ratio": 0.25}


# ------------------------------------------------------------------------------------------
# providers


def load_openrlhf():
    """OpenRLHF's function, or (None, reason). Needs flash_attn, or openrlhf_eva.compat."""
    try:
        from openrlhf.models.utils import log_probs_from_logits

        return log_probs_from_logits, "openrlhf.models.utils"
    except ImportError as first:
        try:
            import openrlhf_eva.compat  # noqa: F401  (flash_attn stand-in)
        except ImportError:
            return None, f"import failed ({first}) and openrlhf_eva.compat does not exist"
        try:
            from openrlhf.models.utils import log_probs_from_logits

            return log_probs_from_logits, "openrlhf.models.utils via openrlhf_eva.compat"
        except ImportError as second:
            return None, f"import failed even with openrlhf_eva.compat: {second}"


def load_liger():
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        return LigerFusedLinearCrossEntropyLoss(reduction="none"), "liger_kernel"
    except Exception as exc:  # not installed, or no GPU build
        return None, f"liger_kernel not importable: {exc}"


def torch_ref_gather(logits, labels):
    lp = torch.log_softmax(logits.float(), dim=-1)
    return lp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def gather_providers(openrlhf_fn, dtype):
    providers = {"torch_ref": torch_ref_gather}
    if openrlhf_fn is not None:
        if dtype != torch.float32:  # for fp32 input the Actor's cast is a no-op
            providers["openrlhf_actor"] = lambda x, y: openrlhf_fn(x.to(torch.float32), y)
        providers["openrlhf_fn"] = lambda x, y: openrlhf_fn(x, y)
    providers["ours"] = lambda x, y: logprobs_from_logits(x, y)
    return providers


def fused_providers(openrlhf_fn, liger):
    def linear(h, w):
        return torch.nn.functional.linear(h, w).unsqueeze(0)

    providers = {"torch_ref": lambda h, w, y: torch_ref_gather(linear(h, w), y.unsqueeze(0))[0]}
    if openrlhf_fn is not None:
        providers["openrlhf_actor"] = lambda h, w, y: openrlhf_fn(linear(h, w).to(torch.float32), y.unsqueeze(0))[0]
    providers["ours_logits"] = lambda h, w, y: logprobs_from_logits(linear(h, w), y.unsqueeze(0))[0]
    providers["ours_fused"] = lambda h, w, y: fused_linear_logprobs(h, w, y)
    if liger is not None:
        providers["liger"] = lambda h, w, y: -liger(w, h, y)
    return providers


# ------------------------------------------------------------------------------------------
# measurement


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_once(fn, inputs, grad_inputs, mode, provider):
    for t in grad_inputs:
        t.grad = None
    if mode == "fwd":
        with torch.no_grad():
            return fn(*inputs)
    out = fn(*inputs)
    if provider == "liger":
        out.float().sum().backward()
    else:
        out.float().backward(torch.ones_like(out, dtype=torch.float32) * 0.5)
    return out


def time_ms(fn, inputs, grad_inputs, mode, provider, device, reps):
    if device.type == "cuda":
        run_once(fn, inputs, grad_inputs, mode, provider)  # warm-up: Triton compile, allocator
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        out = run_once(fn, inputs, grad_inputs, mode, provider)
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
        del out
    return statistics.median(times), times


def cpu_peak_bytes(thunk) -> int:
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = thunk()
        del out
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        if e.tag == _EventType.Allocation and e.extra_fields.device.type == "cpu":
            events.append((e.start_time_ns, e.extra_fields.alloc_size))
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak


def extra_peak_bytes(fn, inputs, grad_inputs, mode, provider, device) -> int:
    for t in grad_inputs:
        t.grad = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = run_once(fn, inputs, grad_inputs, mode, provider)
        del out
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return cpu_peak_bytes(lambda: run_once(fn, inputs, grad_inputs, mode, provider))


def reference_gather(logits, labels, chunk=256):
    """fp64 log_softmax on the same (already rounded) input values, in row chunks."""
    x2, y = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    out = torch.empty(y.shape, dtype=torch.float64, device=logits.device)
    for s in range(0, x2.shape[0], chunk):
        lp = torch.log_softmax(x2[s : s + chunk].double(), -1)
        out[s : s + chunk] = lp.gather(-1, y[s : s + chunk, None])[:, 0]
    return out.view(labels.shape)


def reference_fused(h, w, y, chunk=256):
    out = torch.empty(y.shape, dtype=torch.float64, device=h.device)
    wd = w.double()
    for s in range(0, h.shape[0], chunk):
        lp = torch.log_softmax(h[s : s + chunk].double() @ wd.t(), -1)
        out[s : s + chunk] = lp.gather(-1, y[s : s + chunk, None])[:, 0]
    return out


def measured_peaks(device):
    """(flop/s of a big bf16 matmul, bytes/s of a big device copy) on this machine."""
    n, reps = (8192, 20) if device.type == "cuda" else (1024, 3)
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    torch.mm(a, b)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    sync(device)
    flops = 2 * n**3 * reps / (time.perf_counter() - t0)
    numel = (1 << 29) if device.type == "cuda" else (1 << 26)  # 1 GiB / 128 MiB of bf16
    src = torch.empty(numel, dtype=torch.bfloat16, device=device).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    sync(device)
    bandwidth = 2 * src.numel() * src.element_size() * reps / (time.perf_counter() - t0)
    return {"flops": flops, "bandwidth": bandwidth, "source": f"measured: {n}^3 bf16 mm, {numel * 2 >> 20} MiB copy"}


def work(section, mode, N, V, H, esize):
    """(useful FLOPs, minimal bytes moved) of one call."""
    if section == "gather":  # elementwise: read logits; bwd reads them again and writes grad
        return 0.0, (1 if mode == "fwd" else 3) * N * V * esize + 12 * N
    mm = 2 * N * H * V
    io = (N * H + V * H) * esize + 12 * N
    return (mm, io) if mode == "fwd" else (3 * mm, 2 * io)


def roofline(flops, nbytes, ms, peaks):
    if peaks is None or ms is None:
        return None
    return max(flops / peaks["flops"], nbytes / peaks["bandwidth"]) / (ms * 1e-3)


# ------------------------------------------------------------------------------------------
# driver


def environment(device):
    env = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "backend_ours": resolve_backend(device),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        try:
            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30,
            ).stdout.strip()
        except Exception as exc:
            env["driver"] = f"unknown ({exc})"
    return env


def datasheet_for(device):
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in DATASHEET.items():
        if key in name:
            return peaks
    return None


def main():
    has_cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-small", action="store_true", default=not has_cuda, help="small CPU shapes")
    p.add_argument("--H", type=int, nargs="*", help="hidden sizes (default 2048 4096)")
    p.add_argument("--V", type=int, nargs="*", help="vocab sizes (default 32000 128256 151936)")
    p.add_argument("--N", type=int, nargs="*", help="token counts (default 1024 4096 16384 32768)")
    p.add_argument("--sections", nargs="*", default=["gather", "fused"])
    p.add_argument("--modes", nargs="*", default=["fwd", "fwd+bwd"])
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--out", type=str, default=None)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: stable numbers on a shared machine)")
    args = p.parse_args()

    device = torch.device("cuda" if has_cuda and not args.cpu_small else "cpu")
    if device.type == "cpu":
        # Two OpenMP threads on an oversubscribed 2-core box stall on every parallel region
        # (10x swings between runs); one thread gives comparable numbers for all providers.
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.cpu_small:
        grid = {"gather": [(None, 32000, 4096)], "fused": [(256, 32000, 1024)]}
        dtypes = {"gather": [torch.bfloat16, torch.float32], "fused": [torch.bfloat16]}
        reps = args.reps or 3
    else:
        Hs, Vs, Ns = args.H or [2048, 4096], args.V or [32000, 128256, 151936], args.N or [1024, 4096, 16384, 32768]
        grid = {
            "gather": [(None, V, N) for V in Vs for N in Ns],
            "fused": [(H, V, N) for H in Hs for V in Vs for N in Ns],
        }
        dtypes = {"gather": [torch.bfloat16], "fused": [torch.bfloat16]}
        reps = args.reps or 10

    openrlhf_fn, openrlhf_source = load_openrlhf()
    if openrlhf_fn is None:
        print(f"[skip] OpenRLHF providers: {openrlhf_source}")
    liger, liger_source = load_liger() if device.type == "cuda" else (None, "CPU run: Triton-only provider")
    if liger is None:
        print(f"[skip] liger: {liger_source}")

    peaks = {"datasheet": datasheet_for(device), "measured": measured_peaks(device)}
    env = environment(device)
    print(json.dumps(env))
    rows = []
    for section in args.sections:
        for dtype in dtypes[section]:
            for H, V, N in grid[section]:
                rows.extend(bench_shape(section, dtype, H, V, N, device, args.modes, reps, openrlhf_fn, liger, peaks))

    report = {
        "environment": env,
        "openrlhf_provider": openrlhf_source,
        "liger_provider": liger_source,
        "memory_method": (
            "cuda max_memory_allocated delta" if device.type == "cuda"
            else "torch.profiler profile_memory allocation events replayed in time order "
            "(includes aten-internal temporaries)"
        ),
        "peaks": peaks,
        "results": rows,
        "memory_target": memory_target(rows),
    }
    gpu_tag = re.sub(r"[^a-z0-9]+", "_", env.get("gpu", "cpu").lower()).strip("_")
    default_out = Path(__file__).parent / "bench" / f"logprobs_{'cpu' if device.type == 'cpu' else gpu_tag}.json"
    out = Path(args.out) if args.out else default_out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["memory_target"], indent=1))
    print(f"wrote {out}")


def bench_shape(section, dtype, H, V, N, device, modes, reps, openrlhf_fn, liger, peaks):
    labels = torch.randint(0, V, (N,), device=device)
    if section == "gather":
        x = (torch.randn(1, N, V, device=device) * 2).to(dtype)

        def inputs_of(grad):
            return (x.requires_grad_(grad), labels.unsqueeze(0)), [x] if grad else []

        providers = gather_providers(openrlhf_fn, dtype)
        ref = reference_gather(x.detach(), labels.unsqueeze(0))
    else:
        h = torch.randn(N, H, device=device).to(dtype)
        w = (torch.randn(V, H, device=device) / math.sqrt(H)).to(dtype)

        def inputs_of(grad):
            return (h.requires_grad_(grad), w.requires_grad_(grad), labels), [h, w] if grad else []

        providers = fused_providers(openrlhf_fn, liger)
        ref = reference_fused(h.detach(), w.detach(), labels)
    esize = torch.empty((), dtype=dtype).element_size()
    rows = []
    for mode in modes:
        inputs, grad_inputs = inputs_of(mode != "fwd")
        flops, nbytes = work(section, mode, N, V, H or 0, esize)
        for name, fn in providers.items():
            row = {"section": section, "dtype": str(dtype).replace("torch.", ""), "H": H, "V": V, "N": N}
            row.update(mode=mode, provider=name)
            try:
                with torch.no_grad():
                    out = fn(*inputs)
                row["max_abs_err"] = (out.double().reshape(ref.shape) - ref).abs().max().item()
                del out
                row["extra_peak_bytes"] = extra_peak_bytes(fn, inputs, grad_inputs, mode, name, device)
                row["ms_median"], row["ms_all"] = time_ms(fn, inputs, grad_inputs, mode, name, device, reps)
                row["ms_per_row"] = row["ms_median"] / N
                row["useful_flops"], row["min_bytes"] = flops, nbytes
                row["roofline_frac_datasheet"] = roofline(flops, nbytes, row["ms_median"], peaks["datasheet"])
                row["roofline_frac_measured"] = roofline(flops, nbytes, row["ms_median"], peaks["measured"])
            except torch.OutOfMemoryError as exc:
                row["error"] = f"OOM: {str(exc).splitlines()[0]}"
            except Exception as exc:  # keep the sweep going; record why
                row["error"] = f"{type(exc).__name__}: {exc}"
            for t in grad_inputs:
                t.grad = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            rows.append(row)
            print(
                f"{section:6s} {row['dtype']:8s} H={H} V={V} N={N} {mode:7s} {name:15s} "
                + (f"{row['ms_median']:9.2f} ms  extra {row['extra_peak_bytes'] / 2**20:9.1f} MiB  "
                   f"err {row['max_abs_err']:.2e}"
                   if "error" not in row else row["error"])
            )
    return rows


def memory_target(rows):
    """Ours vs OpenRLHF at N=4096, V=32000 (gather section), per input dtype and mode.

    fwd+bwd peaks include the [N, V] logits gradient every provider must return; the
    `*_excl_grad` fields subtract it (N * V * input element size) to show the overhead alone.
    The 1/4 target is judged on fwd, and on fwd+bwd excluding the gradient.
    """
    N, V = MEMORY_TARGET["N"], MEMORY_TARGET["V"]
    target = {"shape": {"N": N, "V": V}, "max_ratio": MEMORY_TARGET["max_ratio"], "cases": []}
    sel = [r for r in rows if r["section"] == "gather" and (r["N"], r["V"]) == (N, V) and "error" not in r]
    for dtype in sorted({r["dtype"] for r in sel}):
        grad_bytes = N * V * torch.empty((), dtype=getattr(torch, dtype)).element_size()
        for mode in sorted({r["mode"] for r in sel}):
            by = {r["provider"]: r for r in sel if r["dtype"] == dtype and r["mode"] == mode}
            if "ours" not in by:
                continue
            for other in ("openrlhf_fn", "openrlhf_actor"):
                if other not in by:
                    continue
                ours_b, theirs_b = by["ours"]["extra_peak_bytes"], by[other]["extra_peak_bytes"]
                case = {
                    "input_dtype": dtype, "mode": mode, "vs": other,
                    "ours_bytes": ours_b, "openrlhf_bytes": theirs_b, "ratio": ours_b / max(theirs_b, 1),
                    "ours_max_abs_err": by["ours"]["max_abs_err"], "openrlhf_max_abs_err": by[other]["max_abs_err"],
                    "ours_ms": by["ours"]["ms_median"], "openrlhf_ms": by[other]["ms_median"],
                }
                if mode == "fwd":
                    case["pass"] = case["ratio"] <= MEMORY_TARGET["max_ratio"]
                else:
                    case["ours_bytes_excl_grad"] = ours_b - grad_bytes
                    case["openrlhf_bytes_excl_grad"] = theirs_b - grad_bytes
                    case["ratio_excl_grad"] = (ours_b - grad_bytes) / max(theirs_b - grad_bytes, 1)
                    case["pass_excl_grad"] = case["ratio_excl_grad"] <= MEMORY_TARGET["max_ratio"]
                target["cases"].append(case)
    return target


if __name__ == "__main__":
    main()
