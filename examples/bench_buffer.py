"""Benchmark the PromptBuffer: weighted draws and batch push/pop against buffer size N.

For N in {1e3, 1e4, 1e5, 1e6} a full buffer is built with one bulk push (the sum-trees are then
rebuilt level by level, O(N) numpy work), and we time, as medians over repeats:
  sample_k     buffer.sample(k) for k in {8, 64, 256}: sum-tree descents, O(k log N)
  pop_64       popping 64 random live ids
  push_64      pushing 64 entries into the freed slots
  evict_64     pushing 64 entries into a full buffer (evicts the 64 oldest)
  multinomial  torch.multinomial over all N weights (k=64): the O(N) way, for contrast
Ratios are against N=1e3; log2(N)/log2(1e3) is what pure O(log N) growth would give.

  python examples/bench_buffer.py          # writes examples/bench/buffer_sampling.json
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openrlhf_eva.creator import PromptBuffer  # noqa: E402

SIZES = [10**3, 10**4, 10**5, 10**6]
KS = [8, 64, 256]
BATCH = 64
REPEATS = 200
OUTPUT = Path(__file__).resolve().parent / "bench" / "buffer_sampling.json"


def median_us(fn, repeats: int = REPEATS) -> float:
    """Median wall time of ``fn()`` in microseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def bench_size(n: int, rng: np.random.Generator) -> dict:
    infos = rng.exponential(size=n).tolist()
    items = [{"text": f"prompt {i}", "info": info} for i, info in enumerate(infos)]
    buffer = PromptBuffer(capacity=n, seed=0)
    start = time.perf_counter()
    buffer.push(items, step=0)
    result = {"build_s": time.perf_counter() - start}

    for k in KS:
        result[f"sample_{k}_us"] = median_us(lambda: buffer.sample(k))

    # pop 64 random live ids, then refill the freed slots; both timed separately.
    live_ids = np.array([entry.id for entry in buffer])
    pop_times, push_times = [], []
    batch = [{"text": "new prompt", "info": 1.0}] * BATCH
    for _ in range(REPEATS):
        ids = rng.choice(live_ids, size=BATCH, replace=False).tolist()
        start = time.perf_counter()
        buffer.pop(ids)
        pop_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        added = buffer.push(batch, step=1)
        push_times.append(time.perf_counter() - start)
        live_ids[np.isin(live_ids, ids)] = [entry.id for entry in added]
    result["pop_64_us"] = statistics.median(pop_times) * 1e6
    result["push_64_us"] = statistics.median(push_times) * 1e6
    result["evict_64_us"] = median_us(lambda: buffer.push(batch, step=2))

    weights = torch.as_tensor(rng.exponential(size=n))
    result["multinomial_64_us"] = median_us(lambda: torch.multinomial(weights, 64), repeats=50)
    return result


def main() -> None:
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    results = {}
    for n in SIZES:
        results[str(n)] = bench_size(n, rng)
        print(f"N={n:>8}: built in {results[str(n)]['build_s']:.2f}s", flush=True)

    base = results[str(SIZES[0])]
    timed = [key for key in base if key.endswith("_us")]
    ratios = {str(n): {key: results[str(n)][key] / base[key] for key in timed} for n in SIZES}
    log_ratio = {str(n): math.log2(n) / math.log2(SIZES[0]) for n in SIZES}

    print(f"\nmedian microseconds over {REPEATS} repeats (ratio vs N=1e3 in brackets)")
    print(f"{'N':>8} {'log2 ratio':>10} " + " ".join(f"{key[:-3]:>19}" for key in timed))
    for n in SIZES:
        cells = " ".join(f"{results[str(n)][key]:>10.1f} [{ratios[str(n)][key]:>5.2f}]" for key in timed)
        print(f"{n:>8} {log_ratio[str(n)]:>10.2f} {cells}")

    report = {
        "what": "PromptBuffer sum-tree: median wall time of sample(k), pop/push/evict of 64 entries",
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__},
        "repeats": REPEATS,
        "results": results,
        "ratio_vs_1e3": ratios,
        "log2_ratio_vs_1e3": log_ratio,
        "total_s": time.perf_counter() - start,
    }
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {OUTPUT} ({report['total_s']:.0f}s)")


if __name__ == "__main__":
    main()
