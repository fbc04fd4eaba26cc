"""CPU-safe replacements for the CUDA calls OpenRLHF 0.11.2 makes unconditionally.

Applied only when `torch.cuda.is_available()` is False: on such a machine each of these
calls raises, so replacing them changes nothing that used to work. On a CUDA machine
nothing is touched. Upstream patch: patches/0002-strategy-make-device-calls-device-agnostic.patch,
after which OpenRLHF asks DeepSpeed's accelerator for the device; `compat.install()` then skips
these guards (`seams.device_agnostic_strategy`).
"""

from __future__ import annotations

import torch
import torch.distributed.device_mesh as device_mesh

_PATCHED = False


# One function object per replaced entry point: torch._dynamo keys its trace rules by
# function identity and refuses one object registered under two different rules.
def set_device(device) -> None:
    return None


def synchronize(device=None) -> None:
    return None


def current_device() -> torch.device:
    return torch.device("cpu")


def install() -> bool:
    """Patch the CUDA entry points OpenRLHF calls; returns True if anything was patched."""
    global _PATCHED
    if _PATCHED:
        return True
    if torch.cuda.is_available():
        return False

    # utils/deepspeed/deepspeed.py:97 `torch.cuda.set_device(local_rank)` in setup_distributed.
    torch.cuda.set_device = set_device
    # utils/distributed_util.py:10 `torch.cuda.synchronize()` after every barrier
    # (save_ckpt, save_model) and deepspeed_utils.py:189/211 (state offload).
    torch.cuda.synchronize = synchronize
    # utils/deepspeed/deepspeed.py:614,633,634 `.to(torch.cuda.current_device())` in
    # all_reduce/all_gather, and ring_attn_utils.py:43 as a `device=` argument: a
    # torch.device("cpu") is valid in both places where an int index is not.
    torch.cuda.current_device = current_device

    # utils/deepspeed/deepspeed.py:105 `init_device_mesh("cuda", ...)`; deepspeed.py binds the
    # name at import time, so the wrapper must be in place before openrlhf is imported.
    original_init_device_mesh = device_mesh.init_device_mesh

    def init_device_mesh(device_type, *args, **kwargs):
        if device_type == "cuda":
            device_type = "cpu"
        return original_init_device_mesh(device_type, *args, **kwargs)

    device_mesh.init_device_mesh = init_device_mesh
    _PATCHED = True
    return True
