"""Rate prompt sets with an LLM judge: complexity and quality 1-5 and a topic (EVA.md, Table 7, Figure 6).

    python -m openrlhf_eva.score_prompts --sets seed=seeds.jsonl round1=runs/r1/next_prompts.jsonl \\
        round2=runs/r2/next_prompts.jsonl --judge_model path/or/model.gguf --output_dir runs/scores
    ... --judge_backend openai --judge_url http://127.0.0.1:8000/v1 --judge_model served-name

Each set is a .jsonl/.json file with a --prompt_key field (chat lists give their user turns) or a
.txt file with one prompt per line; --max_prompts draws a uniform sample of each set (seeded). The
judge answers greedily (``creator/judge.py``); a reply without a readable score counts as unparsed
for that score and is left out of the means, never guessed.

Writes to --output_dir:
  prompt_scores.csv   one row per prompt: set, index, complexity, quality, topic, prompt
  prompt_scores.json  per set (in the order given): prompts, mean/std of complexity and quality,
                      unparsed counts, topic shares; plus the judge and the topic list
  prompt_scores.png   mean complexity and quality per set, and the topic mix per set
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence

from openrlhf_eva.creator.evolve.templates import TOPICS
from openrlhf_eva.creator.filters import read_eval_prompts
from openrlhf_eva.creator.judge import Judgement, judge_prompts
from openrlhf_eva.generation import build_generator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m openrlhf_eva.score_prompts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--sets", nargs="+", required=True, metavar="NAME=FILE", help="prompt sets to compare, e.g. seed=seeds.jsonl")
    add("--judge_model", required=True, help="judge checkpoint folder or .gguf file (hf/vllm), or served model name")
    add("--judge_backend", choices=["hf", "vllm", "openai"], default="hf")
    add("--judge_url", default=None, help="OpenAI-compatible server URL for --judge_backend openai")
    add("--judge_api_key_env", default="OPENAI_API_KEY", help="environment variable holding the server's API key")
    add("--output_dir", required=True)
    add("--prompt_key", default="prompt")
    add("--max_prompts", type=int, default=0, help="score a uniform sample of this many prompts per set (0: all)")
    add("--max_new_tokens", type=int, default=48, help="tokens per judge reply (three short lines)")
    add("--batch_size", type=int, default=16, help="prompts per judge call")
    add("--seed", type=int, default=42)
    return parser


def parse_sets(specs: Sequence[str]) -> list[tuple[str, str]]:
    sets = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--sets takes NAME=FILE, got {spec!r}")
        if name in dict(sets):
            raise ValueError(f"--sets: the name {name!r} is used twice")
        sets.append((name, path))
    return sets


def summarize(judgements: list[Judgement]) -> dict:
    summary: dict = {"prompts": len(judgements)}
    for key in ("complexity", "quality"):
        values = [getattr(j, key) for j in judgements if getattr(j, key) is not None]
        summary[f"{key}_mean"] = statistics.fmean(values) if values else None
        summary[f"{key}_std"] = statistics.pstdev(values) if values else None
        summary[f"{key}_unparsed"] = len(judgements) - len(values)
    topics = Counter(j.topic for j in judgements if j.topic is not None)
    summary["topic_unparsed"] = len(judgements) - sum(topics.values())
    total = sum(topics.values())
    summary["topics"] = {topic: topics[topic] / total for topic in TOPICS if topics[topic]} if total else {}
    return summary


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training machines
    import matplotlib.pyplot as plt

    names = list(summary["sets"])
    sets = [summary["sets"][name] for name in names]
    fig, (scores_ax, topics_ax) = plt.subplots(1, 2, figsize=(5 + 1.6 * len(names), 4.2))
    width = 0.38
    for offset, key, color in ((-width / 2, "complexity", "#4c72b0"), (width / 2, "quality", "#dd8452")):
        means = [s[f"{key}_mean"] or 0.0 for s in sets]
        errors = [s[f"{key}_std"] or 0.0 for s in sets]
        bars = scores_ax.bar([i + offset for i in range(len(names))], means, width, yerr=errors, capsize=3,
                             label=key, color=color)
        scores_ax.bar_label(bars, labels=[f"{m:.2f}" for m in means], fontsize=8, label_type="center", color="white")
    scores_ax.set_xticks(range(len(names)), names)
    scores_ax.set_ylim(0, 5.6)
    scores_ax.set_ylabel("judge score (1-5), mean ± std")
    scores_ax.set_title("Prompt complexity and quality")
    scores_ax.legend(loc="lower right", fontsize=8)
    bottoms = [0.0] * len(names)
    colors = plt.get_cmap("tab10")
    for k, topic in enumerate(TOPICS):
        shares = [s["topics"].get(topic, 0.0) for s in sets]
        if any(shares):
            topics_ax.bar(range(len(names)), shares, 0.6, bottom=bottoms, label=topic, color=colors(k))
            bottoms = [b + v for b, v in zip(bottoms, shares)]
    topics_ax.set_xticks(range(len(names)), names)
    topics_ax.set_ylim(0, 1)
    topics_ax.set_ylabel("share of prompts")
    topics_ax.set_title("Topic mix")
    topics_ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None, generate=None) -> dict:
    """Score every set and write the outputs; returns the summary. ``generate`` replaces the judge
    built from the flags (for callers that already hold one)."""
    args = build_parser().parse_args(argv)
    sets = parse_sets(args.sets)
    rng = random.Random(args.seed)
    loaded = []
    for name, path in sets:
        prompts = read_eval_prompts(path, args.prompt_key)
        if args.max_prompts and len(prompts) > args.max_prompts:
            prompts = rng.sample(prompts, args.max_prompts)
        loaded.append((name, path, prompts))
    if generate is None:
        generate = build_generator(args.judge_backend, args.judge_model, url=args.judge_url,
                                   api_key_env=args.judge_api_key_env, max_new_tokens=args.max_new_tokens,
                                   temperature=0.0, top_p=1.0, seed=args.seed,
                                   **({"batch_size": args.batch_size} if args.judge_backend == "hf" else {}))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"judge": {"backend": args.judge_backend, "model": args.judge_model}, "topics": list(TOPICS),
                     "sets": {}}
    rows = []
    for name, path, prompts in loaded:
        judgements = []
        for start in range(0, len(prompts), args.batch_size):
            judgements += judge_prompts(generate, prompts[start:start + args.batch_size])
        summary["sets"][name] = {"file": str(path), **summarize(judgements)}
        rows += [(name, k, j.complexity, j.quality, j.topic, p) for k, (p, j) in enumerate(zip(prompts, judgements))]
    with open(out / "prompt_scores.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["set", "index", "complexity", "quality", "topic", "prompt"])
        writer.writerows(rows)
    (out / "prompt_scores.json").write_text(json.dumps(summary, indent=2) + "\n")
    try:
        plot(summary, out / "prompt_scores.png")
    except ImportError:
        print("[eva] matplotlib is not installed: no prompt_scores.png (pip install 'openrlhf-eva[plots]')")
    for name, s in summary["sets"].items():
        mean = lambda key: "n/a" if s[f"{key}_mean"] is None else f"{s[f'{key}_mean']:.2f}"  # noqa: E731
        print(f"[eva] {name}: {s['prompts']} prompts, complexity {mean('complexity')}, quality {mean('quality')}, "
              f"unparsed {s['complexity_unparsed']}/{s['quality_unparsed']}")
    print(f"[eva] wrote {out}/prompt_scores.{{csv,json,png}}")
    return summary


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, OSError) as error:
        sys.exit(f"openrlhf_eva.score_prompts: error: {error}")
