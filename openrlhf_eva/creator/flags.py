"""The creator's ``--eva.*`` flags that every entry point shares, and how they become evolver and filter options.

``openrlhf_eva.evolve``, ``train_ppo_ray`` and ``train_rloo`` call ``add_creator_flags(add)`` with
their parser's ``add_argument`` (each keeps its own ``--eva.evolver`` and ``--eva.filters``). The
creator LLM flags (``--eva.evolver_model``, ``--eva.evolver_url``, ``--eva.evolver_api_key_env``) mean
the same everywhere; each entry point builds its ``openrlhf_eva.generation`` backend from them. Then,
with the parsed ``args.eva``:
    evolver_options(args.eva)        keyword options for ``build_evolver(args.eva.evolver, generate=...)``
    build_creator_filters(args.eva)  the built filters to pass as ``filters=`` to ``creator_step`` /
                                     ``OnlinePromptSource`` (kept for the run: embedding caches persist)
"""

from __future__ import annotations

import inspect
import json
from typing import Any, Callable

from .filters import build_filters
from .registry import EVOLVERS


def json_object(text: str) -> dict:
    """A JSON object such as '{"width": 3}', parsed; ValueError otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {text!r}")
    return value


def json_object_text(text: str) -> str:
    """argparse type: checks the JSON at parse time but keeps the text, since OpenRLHF's
    ``hierarchize`` would turn a dict value into a namespace."""
    json_object(text)
    return text


json_object_text.__name__ = "JSON object"  # argparse names the type in its error message


def add_curriculum_flags(add: Callable[..., Any]) -> None:
    """The online buffer's curriculum control (``OnlinePromptSource``), for train_rloo and train_ppo_ray;
    pass them on with ``curriculum_options(args.eva)``."""
    add("--eva.seed_replay", type=float, default=0.5,
        help="after the first pass over the seeds, this share of every batch still comes from the seeds "
             "(0: the paper's buffer-only bootstrap)")
    # "info" did not help on either dev set (digits -0.002, marks -0.005 on all, 5 seeds; bench NOTES.md,
    # session 30): online, RLOO already weights each group by its spread. So the passes stay shuffled.
    add("--eva.seed_replay_order", default="shuffled", choices=["shuffled", "info"],
        help="which seeds the replay share takes: fresh shuffled passes, or drawn by --eva.sample_mode over "
             "each seed's informativeness when last served")
    add("--eva.frontier_quantile", type=float, default=0.25,
        help="evolve a prompt only if its mean reward is at least this quantile of the recent seed prompts' "
             "mean rewards (and its rewards do not all tie); 0: no bar")
    add("--eva.frontier_window", type=int, default=8, help="batches of seed rewards the frontier bar looks back on")


def curriculum_options(eva) -> dict:
    return {"seed_replay": eva.seed_replay, "seed_replay_order": eva.seed_replay_order,
            "frontier_quantile": eva.frontier_quantile,
            "frontier_window": eva.frontier_window}


def add_creator_flags(add: Callable[..., Any]) -> None:
    add("--eva.evolver_model", default=None,
        help="the creator LLM: a checkpoint or .gguf file, or the served model's name with --eva.evolver_url "
             "(default: the policy)")
    add("--eva.evolver_url", default=None, help="an OpenAI-compatible server for the creator LLM")
    add("--eva.evolver_api_key_env", default="OPENAI_API_KEY", help="environment variable holding its API key")
    add("--eva.evolver_options", type=json_object_text, default="{}",
        help='keyword options of the evolver as JSON, e.g. \'{"methods": ["constraints", "reasoning"]}\', '
             '\'{"width": 4, "scorer": "judge"}\' for tree_bon, \'{"task": "EvolComplexity"}\' for distilabel')
    add("--eva.evolve_feedback", action="store_true", default=False,
        help="show the creator each parent's best and worst response with their rewards (LLM evolvers)")
    add("--eva.evolve_parents", type=int, default=1,
        help="parents per meta-prompt: >1 asks for one child drawing on several informative parents")
    add("--eva.filter_options", type=json_object_text, default="{}",
        help='options of the filters as JSON, e.g. \'{"near_duplicate": {"method": "embedding", "threshold": 0.9}, '
             '"length": {"max_tokens": 512}}\'')
    add("--eva.eval_prompts", nargs="*", default=[],
        help="evaluation prompt files (.jsonl/.json with 'prompt', or .txt) the contamination filter guards")


def evolver_options(eva) -> dict:
    """``--eva.evolver_options`` plus the feedback and multi-parent flags, refused where the evolver lacks them."""
    options = json_object(eva.evolver_options)
    wanted = {}
    if eva.evolve_feedback:
        wanted["feedback"] = True
    if eva.evolve_parents != 1:
        wanted["parents_per_call"] = eva.evolve_parents
    if wanted:
        parameters = inspect.signature(EVOLVERS.get(eva.evolver)).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        refused = [key for key in wanted if key not in parameters and not takes_any]
        if refused:
            flags = {"feedback": "--eva.evolve_feedback", "parents_per_call": "--eva.evolve_parents"}
            raise ValueError(f"evolver {eva.evolver!r} does not take {', '.join(flags[k] for k in refused)}")
        options.update(wanted)
    return options


def build_creator_filters(eva, tokenizer: Any = None, max_tokens: int | None = None) -> list:
    """The filters of ``--eva.filters`` with ``--eva.filter_options``; the length filter counts
    ``tokenizer`` tokens (up to ``max_tokens``) unless its options say otherwise, and the
    contamination filter guards ``--eva.eval_prompts``."""
    names = list(eva.filters)
    options = json_object(eva.filter_options)
    if eva.eval_prompts:
        if "contamination" not in names:
            raise ValueError("--eva.eval_prompts needs the contamination filter in --eva.filters")
        options.setdefault("contamination", {}).setdefault("paths", list(eva.eval_prompts))
    if "length" in names and tokenizer is not None:
        options.setdefault("length", {}).setdefault("tokenizer", tokenizer)
        if max_tokens is not None:
            options["length"].setdefault("max_tokens", max_tokens)
    return build_filters(names, options)
