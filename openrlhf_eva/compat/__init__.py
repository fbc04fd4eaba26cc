"""Make OpenRLHF 0.11.2 importable and runnable without flash_attn or CUDA.

`install()` runs when `openrlhf_eva` is imported. It never imports openrlhf itself and
replaces nothing on a machine that has flash_attn and CUDA, nor where the installed OpenRLHF
carries the upstream fix (patches/0001, patches/0002; see `seams`). `status()` reports what was
replaced, for logs and bug reports.
"""

from __future__ import annotations

import os
import socket
import sys

from . import cuda_guards, flash_attn_standin, seams

_STATUS: dict[str, bool] = {}


def install() -> dict[str, bool]:
    """Apply the flash_attn stand-in and the CUDA guards where needed (idempotent)."""
    if not _STATUS:
        _STATUS["flash_attn_standin"] = not seams.flash_attn_optional() and flash_attn_standin.install()
        _STATUS["cuda_guards"] = not seams.device_agnostic_strategy() and cuda_guards.install()
    return dict(_STATUS)


def status() -> dict[str, bool]:
    return dict(_STATUS)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it): rendezvous never uses a fixed one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_single_process_env() -> None:
    """Fill in the rendezvous variables `python -m` leaves unset.

    Without RANK/WORLD_SIZE/MASTER_* DeepSpeed's init_distributed falls back to MPI discovery
    (and mpi4py). The deepspeed launcher and torchrun set them; a plain `python -m` run is one
    rank on this host, on a free port so that several such runs can share a machine.
    """
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())


RENDEZVOUS_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def leave_no_process_group() -> None:
    """Destroy this process's torch.distributed group, and DeepSpeed's cached clone of it.

    Trainings that share a process (the bench's runs, the in-process tests) each set up a one-rank
    group. DeepSpeed keeps `deepspeed.utils.groups._WORLD_GROUP` past a destroy; left stale, it
    points the next engine's broadcasts at a group torch no longer knows.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    deepspeed_groups = sys.modules.get("deepspeed.utils.groups")  # never import DeepSpeed just for this
    if deepspeed_groups is not None:
        deepspeed_groups._WORLD_GROUP = None


def child_process_env() -> dict[str, str]:
    """This process's environment without its rendezvous variables, for a fresh training subprocess.

    A parent that ran a one-rank DeepSpeed job in-process still listens on its MASTER_PORT; a child
    inheriting it fails with EADDRINUSE. Without them the child picks its own (see above).
    """
    return {k: v for k, v in os.environ.items() if k not in RENDEZVOUS_VARS}
