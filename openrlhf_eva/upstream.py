"""Run an OpenRLHF CLI module as `__main__`, reusing its own argparse parser.

OpenRLHF 0.11.2 builds each parser inside `if __name__ == "__main__":` (no `build_parser()`
to import), so a plugin that wants every upstream flag to keep working has to execute that
block. `run_upstream_cli` does so with `runpy`, after hooking `ArgumentParser.parse_args`
once: the hook adds eva's `--eva.*` flags to the upstream parser (so they show in `--help`
next to every upstream flag) and hands the parsed namespace to a `prepare` callback, which
validates eva's flags and swaps in eva's classes before upstream's `train(args)` runs.
Upstream patch: patches/0003-cli-build-parser-per-entry-point.patch.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from typing import Callable, Optional, Sequence

from openrlhf_eva import compat


def cpu_friendly_defaults(args: argparse.Namespace) -> None:
    """Where flash_attn is our stand-in, the default `flash_attention_2` kernel cannot run: use sdpa."""
    attn = getattr(args, "ds.attn_implementation", None)
    if compat.status().get("flash_attn_standin") and attn and attn.startswith("flash_attention"):
        print(f"[openrlhf_eva] flash_attn is not installed: --ds.attn_implementation {attn} -> sdpa")
        setattr(args, "ds.attn_implementation", "sdpa")


def run_upstream_cli(
    module: str,
    argv: Optional[Sequence[str]] = None,
    add_flags: Optional[Callable[[argparse.ArgumentParser], None]] = None,
    prepare: Optional[Callable[[argparse.Namespace], None]] = None,
    prog: Optional[str] = None,
    single_process_env: bool = True,
) -> None:
    """Execute `module`'s `__main__` block with `argv`, eva flags added and `prepare` applied.

    `single_process_env` fills in RANK/WORLD_SIZE/MASTER_* for DeepSpeed CLIs started with plain
    `python -m`; the Ray entry point turns it off, since Ray places its own workers.
    """
    if single_process_env:
        compat.default_single_process_env()
    original_parse_args = argparse.ArgumentParser.parse_args

    def parse_args(parser, args=None, namespace=None):
        # Only the first parser built is upstream's CLI parser; restore at once so parsers
        # created later (by a library, by `prepare`) behave normally.
        argparse.ArgumentParser.parse_args = original_parse_args
        if prog:
            parser.prog = prog
        if add_flags is not None:
            add_flags(parser)
        namespace = original_parse_args(parser, args, namespace)
        cpu_friendly_defaults(namespace)
        if prepare is not None:
            prepare(namespace)
        return namespace

    saved_argv = sys.argv
    sys.argv = [prog or module, *(sys.argv[1:] if argv is None else argv)]
    argparse.ArgumentParser.parse_args = parse_args
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=False)
    finally:
        argparse.ArgumentParser.parse_args = original_parse_args
        sys.argv = saved_argv
