"""Run an OpenRLHF CLI with its own argparse parser, eva's `--eva.*` flags added.

Where the installed OpenRLHF has `build_parser()` and `finalize_args()` per CLI (upstream patch
patches/0003-cli-add-build_parser-and-finalize_args.patch), `run_upstream_cli` uses them: build
the parser, add eva's flags, parse, let `prepare` validate eva's flags and swap in eva's classes,
then `train(finalize_args(args), **train_kwargs)`. OpenRLHF 0.11.2 as released builds each parser
inside `if __name__ == "__main__":`, so there the module's `__main__` block runs with `runpy`
after `ArgumentParser.parse_args` is hooked once: the hook adds eva's flags (so they show in
`--help` next to every upstream flag) and hands the parsed namespace to `prepare`.
"""

from __future__ import annotations

import argparse
import importlib.util
import runpy
import sys
from typing import Callable, Optional, Sequence

from openrlhf_eva import compat
from openrlhf_eva.compat import seams


def cpu_friendly_defaults(args: argparse.Namespace) -> None:
    """Where flash_attn is missing (or our stand-in), the default `flash_attention_2` kernel cannot run: use sdpa."""
    attn = getattr(args, "ds.attn_implementation", None)
    flash_attn_missing = compat.status().get("flash_attn_standin") or importlib.util.find_spec("flash_attn") is None
    if flash_attn_missing and attn and attn.startswith("flash_attention"):
        print(f"[openrlhf_eva] flash_attn is not installed: --ds.attn_implementation {attn} -> sdpa")
        setattr(args, "ds.attn_implementation", "sdpa")


def run_upstream_cli(
    module: str,
    argv: Optional[Sequence[str]] = None,
    add_flags: Optional[Callable[[argparse.ArgumentParser], None]] = None,
    prepare: Optional[Callable[[argparse.Namespace], None]] = None,
    prog: Optional[str] = None,
    single_process_env: bool = True,
    train_kwargs: Optional[dict] = None,
) -> None:
    """Run `module` with `argv`, eva flags added and `prepare` applied to the parsed flat namespace.

    `single_process_env` fills in RANK/WORLD_SIZE/MASTER_* for DeepSpeed CLIs started with plain
    `python -m`; the Ray entry point turns it off, since Ray places its own workers. `train_kwargs`
    (read after `prepare`, which may fill it) go to upstream's `train()`: only the build_parser
    path can pass them, so callers fill it only where `seams` reports the matching seam.
    """
    if single_process_env:
        compat.default_single_process_env()
    cli = seams.cli_with_build_parser(module)
    if cli is not None:
        parser = cli.build_parser()
        if prog:
            parser.prog = prog
        if add_flags is not None:
            add_flags(parser)
        namespace = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
        cpu_friendly_defaults(namespace)
        if prepare is not None:
            prepare(namespace)
        cli.train(cli.finalize_args(namespace), **(train_kwargs or {}))
        return

    if train_kwargs:
        raise RuntimeError(f"{module} runs as __main__ here (no build_parser()): cannot pass {sorted(train_kwargs)}")
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
