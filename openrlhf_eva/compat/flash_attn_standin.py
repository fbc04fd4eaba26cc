"""A pure-torch stand-in for the five flash_attn helpers OpenRLHF 0.11.2 imports.

`openrlhf/models/ring_attn_utils.py` imports `flash_attn.bert_padding` and
`flash_attn.utils.distributed` at module top, so without flash_attn nothing under
`openrlhf.models` (Actor, DPOTrainer, train_dpo) imports. Only `index_first_axis`,
`pad_input`, `unpad_input`, `rearrange` and `all_gather` are used (sample packing and
ring attention). Upstream patch: patches/0001-models-make-flash_attn-imports-optional.patch;
where the installed OpenRLHF has it, `compat.install()` registers no stand-in
(`seams.flash_attn_optional`).

Deliberately absent: `flash_attn.ops`. `openrlhf/models/utils.py::log_probs_from_logits`
does `try: from flash_attn.ops.triton.cross_entropy import ...` and must keep getting an
ImportError so it falls back to its torch path.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

import torch
import torch.nn.functional as F
from einops import rearrange

STANDIN_ATTR = "__openrlhf_eva_standin__"


def index_first_axis(tensor: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Rows `indices` of `tensor` along dim 0 (flash_attn's version is a memory-lean autograd.Function)."""
    return tensor[indices]


def unpad_input(hidden_states: torch.Tensor, attention_mask: torch.Tensor, unused_mask=None):
    """Drop padded positions: [B, S, ...] -> [total, ...], with flash_attn 2.8's 5-tuple return."""
    mask = attention_mask if unused_mask is None else attention_mask + unused_mask
    seqlens = mask.sum(dim=-1, dtype=torch.int32)
    used_seqlens = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()
    max_seqlen = int(seqlens.max().item()) if seqlens.numel() else 0
    cu_seqlens = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    flat = rearrange(hidden_states, "b s ... -> (b s) ...")
    return index_first_axis(flat, indices), indices, cu_seqlens, max_seqlen, used_seqlens


def pad_input(hidden_states: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """Inverse of `unpad_input`: scatter [total, ...] back into zeros of [B, S, ...]."""
    out = hidden_states.new_zeros((batch * seqlen, *hidden_states.shape[1:]))
    out = out.index_put((indices,), hidden_states)
    return rearrange(out, "(b s) ... -> b s ...", b=batch)


def all_gather(tensor: torch.Tensor, process_group) -> torch.Tensor:
    """Concatenate `tensor` from every rank of `process_group` along dim 0, differentiably."""
    from torch.distributed.nn.functional import all_gather as differentiable_all_gather

    return torch.cat(differentiable_all_gather(tensor.contiguous(), group=process_group), dim=0)


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    # A spec with no loader lets importlib.util.find_spec() answer for the stand-in without
    # pretending a distribution is installed: transformers' is_flash_attn_2_available()
    # also checks package metadata, which stays absent, so it keeps reporting False.
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
    module.__path__ = []
    module.__dict__.update(attrs)
    setattr(module, STANDIN_ATTR, True)
    return module


def install() -> bool:
    """Register the stand-in in sys.modules if, and only if, no real flash_attn is installed."""
    if "flash_attn" in sys.modules:
        return getattr(sys.modules["flash_attn"], STANDIN_ATTR, False)
    if importlib.util.find_spec("flash_attn") is not None:
        return False  # never shadow a real flash_attn
    bert_padding = _module(
        "flash_attn.bert_padding",
        index_first_axis=index_first_axis,
        pad_input=pad_input,
        unpad_input=unpad_input,
        rearrange=rearrange,
    )
    distributed = _module("flash_attn.utils.distributed", all_gather=all_gather)
    utils = _module("flash_attn.utils", distributed=distributed)
    root = _module("flash_attn", bert_padding=bert_padding, utils=utils)
    sys.modules.update(
        {
            "flash_attn": root,
            "flash_attn.bert_padding": bert_padding,
            "flash_attn.utils": utils,
            "flash_attn.utils.distributed": distributed,
        }
    )
    return True
