"""The eva creator core: estimate prompt informativeness, sample, evolve, filter and buffer prompts.

Framework-free (plain Python, torch and numpy); the OpenRLHF integration builds on this package.
"""

from .registry import (
    EVOLVERS,
    FILTERS,
    METRICS,
    REWARDS,
    SAMPLERS,
    PluginError,
    Registry,
    UnknownNameError,
    load_plugin,
    register_evolver,
    register_filter,
    register_metric,
    register_reward,
    register_sampler,
)
from .data import PromptFileError, read_prompts, write_jsonl
from .estimate import PAPER_METRICS, informativeness
from .sample import sample_informative
from .buffer import BufferEntry, OnlineSchedule, PromptBuffer
from .filters import DEFAULT_FILTERS, Filter, apply_filters, build_filter, build_filters, normalize_text
from .evolve import (
    Child,
    DistilabelEvolver,
    EvolComplexityEvolver,
    EvolQualityEvolver,
    Evolver,
    Parent,
    SelfInstructEvolver,
    TreeBestOfNEvolver,
    build_evolver,
)
from .evolve.evol_instruct import METHODS as EVOLVE_METHODS, EvolInstructEvolver, parse_output
from .evolve.task import TaskEvolveError, TaskEvolver
from .judge import Judgement, judge_prompts, parse_judgement

__all__ = [
    "DEFAULT_FILTERS", "EVOLVERS", "FILTERS", "METRICS", "PAPER_METRICS", "REWARDS", "SAMPLERS", "EVOLVE_METHODS",
    "BufferEntry", "Child", "DistilabelEvolver", "EvolComplexityEvolver", "EvolInstructEvolver", "EvolQualityEvolver",
    "Evolver", "Filter", "Judgement", "OnlineSchedule", "Parent", "PluginError", "PromptBuffer", "PromptFileError",
    "Registry", "SelfInstructEvolver", "TaskEvolveError", "TaskEvolver", "TreeBestOfNEvolver", "UnknownNameError",
    "apply_filters", "build_evolver", "build_filter", "build_filters", "informativeness", "judge_prompts",
    "load_plugin", "normalize_text", "parse_judgement", "parse_output",
    "read_prompts", "register_evolver", "register_filter", "register_metric", "register_reward",
    "register_sampler", "sample_informative", "write_jsonl",
]
