"""Which official seams from the upstream patch series (patches/) the installed OpenRLHF has.

Where a seam is present the plugin uses it and skips its own stand-in, guard or wrapper; on
OpenRLHF 0.11.2 as released every check is False and the plugin behaves as before. Each check
looks for the behaviour, not a version number, so it also holds once upstream merges a patch.

The first two run from `compat.install()`, before OpenRLHF is imported (the stand-in and the
guards must be in place first), so they read OpenRLHF's source instead of importing it.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
from pathlib import Path
from types import ModuleType
from typing import Optional

# The CUDA entry points cuda_guards replaces, as upstream's strategy calls them.
CUDA_CALLS = {"set_device", "synchronize", "current_device"}
STRATEGY_FILES = ("utils/deepspeed/deepspeed.py", "utils/deepspeed/deepspeed_utils.py", "utils/distributed_util.py")


def _openrlhf_source(relative: str) -> Optional[ast.Module]:
    """The parsed source of `openrlhf/<relative>`, found without importing openrlhf."""
    spec = importlib.util.find_spec("openrlhf")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return ast.parse(path.read_text()) if path.is_file() else None


def flash_attn_optional() -> bool:
    """0001: `openrlhf.models` imports without flash_attn (no unguarded module-level flash_attn import)."""
    tree = _openrlhf_source("models/ring_attn_utils.py")
    if tree is None:
        return False
    for node in tree.body:  # top level only: an import inside try/except or a function is optional
        if isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        if any(module.split(".")[0] == "flash_attn" for module in modules):
            return False
    return True


def device_agnostic_strategy() -> bool:
    """0002: the DeepSpeed strategy makes none of the CUDA calls cuda_guards replaces."""
    trees = [_openrlhf_source(relative) for relative in STRATEGY_FILES]
    if any(tree is None for tree in trees):
        return False
    for tree in trees:
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if (  # torch.cuda.set_device(...), torch.cuda.synchronize(), torch.cuda.current_device()
                isinstance(func, ast.Attribute)
                and func.attr in CUDA_CALLS
                and ast.unparse(func.value) == "torch.cuda"
            ):
                return False
            if (  # init_device_mesh("cuda", ...)
                isinstance(func, ast.Name)
                and func.id == "init_device_mesh"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == "cuda"
            ):
                return False
    return True


def cli_with_build_parser(module: str) -> Optional[ModuleType]:
    """0003: the imported CLI module when it has build_parser() and finalize_args(), else None.

    Read before importing: without the seam the module runs as `__main__` (runpy), and runpy warns
    when the same module was imported under its own name first.
    """
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    if not {"build_parser", "finalize_args"} <= functions:
        return None
    return importlib.import_module(module)


def dpo_reference_free(parser: argparse.ArgumentParser) -> bool:
    """0006: train_dpo's parser has --model.loss_type; its train() then loads no reference for simpo/orpo."""
    return parser.get_default("model.loss_type") is not None


def ppo_trainer_cls(cli: Optional[ModuleType]) -> bool:
    """0005: `train_ppo_ray.train(args, trainer_cls=...)`, usable where build_parser() is (0003)."""
    return cli is not None and "trainer_cls" in inspect.signature(cli.train).parameters


def ppo_prompt_source(trainer_class: type) -> bool:
    """0004: PPOTrainer.set_prompt_source(), with max_steps taken from the prompt source."""
    return hasattr(trainer_class, "set_prompt_source")


def ray_path_device_agnostic() -> bool:
    """0008: the weight-sync group takes a backend (gloo as well as NCCL) and the replay buffer names no
    CUDA device. Read before import: the Ray modules import vllm."""
    sync = _openrlhf_source("utils/distributed_util.py")
    buffer = _openrlhf_source("trainer/ppo_utils/replay_buffer.py")
    if sync is None or buffer is None:
        return False
    functions = {node.name: node for node in sync.body if isinstance(node, ast.FunctionDef)}
    group = functions.get("stateless_init_process_group")
    takes_backend = group is not None and "backend" in [arg.arg for arg in group.args.args]
    names_cuda = any(isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("cuda:")
                     for node in ast.walk(buffer))
    return takes_backend and not names_cuda
