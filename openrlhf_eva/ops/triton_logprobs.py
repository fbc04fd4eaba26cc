"""Triton kernels for per-token log-probs.

Only imported by `logprobs.py` when the Triton backend is selected, so the package imports
without triton. The kernels are wrapped with `triton.jit` on first use and cached per
interpreter mode: `triton.jit` decides at decoration time whether to build an
`InterpretedFunction`, so wrapping lazily lets a test flip TRITON_INTERPRET=1 at run time.

Launch grid: (rows, splits). Each program streams one vocabulary span of one row; with few rows
the vocabulary is split over several programs so that every SM has work (the forward's partial
(max, sum) pairs are merged in torch, a [rows, splits] operation). Rows with the ignore label
read nothing. On CUDA BLOCK_V and num_warps are autotuned per vocabulary size.

Statistics saved for backward are the same as in `torch_logprobs`: the row max `m` of the
(soft-capped) logits and `logs = log(sum exp((z - m) / T))`, both in the accumulation dtype
(fp32, fp64 for fp64 input).
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl


def _max_combine_impl(a, b):
    return tl.maximum(a, b)


def _add_combine_impl(a, b):
    return a + b


def _softcap_impl(x, cap, pre_scale):
    # cap * tanh(pre_scale * x) from one exp (libdevice.tanh does not run in the interpreter);
    # exp(-2|y|) never overflows. Absolute error ~1 ulp of cap, as torch.tanh.
    y = x * pre_scale
    e = tl.exp(-2.0 * tl.abs(y))
    t = (1.0 - e) / (1.0 + e)
    return cap * tl.where(y < 0, -t, t)


def _logprob_fwd(
    x_ptr,
    labels_ptr,
    params_ptr,
    part_max_ptr,
    part_sum_ptr,
    T,
    V,
    stride_xb,
    stride_xt,
    stride_xv,
    ignore_index,
    n_splits,
    BLOCK_V: tl.constexpr,
    VOCAB_CONTIGUOUS: tl.constexpr,
    SOFTCAP: tl.constexpr,
):
    # int64 before any multiply: N * V passes 2**31 at ~16.7k tokens for a 128k vocab.
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    b = row // T
    t = row - b * T
    x_row = x_ptr + b * stride_xb + t * stride_xt
    inv_t = tl.load(params_ptr)
    acc_ty = inv_t.dtype
    offs = tl.arange(0, BLOCK_V)

    span = ((V + n_splits - 1) // n_splits + BLOCK_V - 1) // BLOCK_V * BLOCK_V  # tl.cdiv is a jit function
    lo = split * span
    hi = tl.minimum(lo + span, V)
    # Early exit for ignored rows: an empty loop, so their logits are never read.
    label = tl.load(labels_ptr + row)
    hi = tl.where(label == ignore_index, lo, hi)

    # Online logsumexp with one exp per element: the running max is a scalar per block, so
    # the rescale exp((m_old - m_new) / T) is paid once per block, not per element.
    m = tl.full((), float("-inf"), acc_ty)
    s = tl.full((), 0.0, acc_ty)
    for start in range(lo, hi, BLOCK_V):
        cols = start + offs
        in_row = cols < hi
        if VOCAB_CONTIGUOUS:
            ptrs = x_row + cols
        else:
            ptrs = x_row + cols.to(tl.int64) * stride_xv
        x = tl.load(ptrs, mask=in_row, other=float("-inf")).to(acc_ty)
        if SOFTCAP:
            x = tl.where(in_row, _softcap(x, tl.load(params_ptr + 1), tl.load(params_ptr + 2)), float("-inf"))
        m_new = tl.maximum(m, tl.reduce(x, 0, _max_combine))
        # A block of only -inf (legitimately masked vocab) would give -inf - -inf = NaN.
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp((m - m_ref) * inv_t) + tl.reduce(tl.exp((x - m_ref) * inv_t), 0, _add_combine)
        m = m_new
    tl.store(part_max_ptr + row * n_splits + split, m)
    tl.store(part_sum_ptr + row * n_splits + split, s)


def _logprob_bwd(
    x_ptr,
    labels_ptr,
    params_ptr,
    max_ptr,
    logsum_ptr,
    grad_out_ptr,
    grad_x_ptr,
    T,
    V,
    col0,
    vocab_full,
    stride_xb,
    stride_xt,
    stride_xv,
    stride_gb,
    stride_gt,
    ignore_index,
    n_splits,
    BLOCK_V: tl.constexpr,
    VOCAB_CONTIGUOUS: tl.constexpr,
    SOFTCAP: tl.constexpr,
):
    # grad_x may alias x (fused path writes into its logits chunk): each element is read
    # before it is written by the same program, so in place is safe. x holds vocabulary
    # columns [col0, col0 + V) of rows with vocab_full entries.
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    b = row // T
    t = row - b * T
    x_row = x_ptr + b * stride_xb + t * stride_xt
    g_row = grad_x_ptr + b * stride_gb + t * stride_gt
    inv_t = tl.load(params_ptr)
    acc_ty = inv_t.dtype
    offs = tl.arange(0, BLOCK_V)

    label = tl.load(labels_ptr + row)
    active = (label != ignore_index) & (label >= 0) & (label < vocab_full)
    local = label - col0
    m = tl.load(max_ptr + row)
    logs = tl.load(logsum_ptr + row)
    g = tl.load(grad_out_ptr + row).to(acc_ty) * inv_t
    g = tl.where(active, g, 0.0)

    span = ((V + n_splits - 1) // n_splits + BLOCK_V - 1) // BLOCK_V * BLOCK_V
    lo = split * span
    hi = tl.minimum(lo + span, V)
    for start in range(lo, hi, BLOCK_V):
        cols = start + offs
        in_row = cols < hi
        if VOCAB_CONTIGUOUS:
            x_ptrs = x_row + cols
            g_ptrs = g_row + cols
        else:
            x_ptrs = x_row + cols.to(tl.int64) * stride_xv
            g_ptrs = g_row + cols.to(tl.int64)
        # Inactive rows load nothing (they only get zeros); -inf in masked lanes keeps exp() at 0.
        x = tl.load(x_ptrs, mask=in_row & active, other=float("-inf")).to(acc_ty)
        if SOFTCAP:
            cap = tl.load(params_ptr + 1)
            z = _softcap(x, cap, tl.load(params_ptr + 2))
        else:
            z = x
        p = tl.exp((z - m) * inv_t - logs)
        d = (tl.where(cols == local, 1.0, 0.0) - p) * g
        if SOFTCAP:
            th = z / cap
            d = d * (cap * tl.load(params_ptr + 2)) * (1.0 - th * th)
        d = tl.where(active, d, 0.0)
        tl.store(g_ptrs, d.to(grad_x_ptr.dtype.element_ty), mask=in_row)


# Launch settings tried per vocabulary size on CUDA. Wide blocks with many warps stream best at
# large V; narrow ones waste fewer lanes on the ragged last block of a split.
AUTOTUNE_CONFIGS = [(1024, 4), (2048, 4), (2048, 8), (4096, 8), (4096, 16), (8192, 16)]
# Programs per SM below which the vocabulary is split (a row per program leaves SMs idle).
_PROGRAMS_PER_SM = 4
_MIN_SPLIT_COLUMNS = 4096
# The interpreter runs a block as numpy vectors; small blocks keep the tests quick and exercise
# the multi-block loop, the ragged last block and (with 8 "SMs") the split merge.
_INTERPRET_BLOCK_V = 128
_INTERPRET_PROGRAMS = 8

_KERNELS: dict = {}
_globals_mode = None


def interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def _kernels():
    """(fwd, bwd) jitted kernels for the current mode.

    tl.max / tl.sum are themselves @jit functions whose flavour was fixed when triton was
    imported, so a process that imported triton before TRITON_INTERPRET=1 (deepspeed and
    transformers do) could not interpret them. The kernels call our own helpers instead,
    jitted per mode; the module globals the kernels look up are switched only when the mode
    changes (tests flip it; a training process never does).
    """
    global _globals_mode
    mode = interpret_mode()
    if mode not in _KERNELS:
        _KERNELS[mode] = {
            "_max_combine": triton.jit(_max_combine_impl),
            "_add_combine": triton.jit(_add_combine_impl),
            "_softcap": triton.jit(_softcap_impl),
            "kernels": (triton.jit(_logprob_fwd), triton.jit(_logprob_bwd)),
        }
    entry = _KERNELS[mode]
    if _globals_mode is not mode:
        for name in ("_max_combine", "_add_combine", "_softcap"):
            globals()[name] = entry[name]
        _globals_mode = mode
    return entry["kernels"]


def _tuned():
    """(fwd, bwd) autotuned over AUTOTUNE_CONFIGS, built once (CUDA only).

    The backward may write into its own input (the fused path's logits chunk): every trial run
    restores grad_x, so the tuning runs cannot corrupt the logits that later trials read.
    """
    if "tuned" not in _KERNELS:
        fwd, bwd = _kernels()
        configs = [triton.Config({"BLOCK_V": block}, num_warps=warps) for block, warps in AUTOTUNE_CONFIGS]
        _KERNELS["tuned"] = (
            triton.autotune(configs, key=["V", "n_splits", "SOFTCAP"])(fwd),
            triton.autotune(configs, key=["V", "n_splits", "SOFTCAP"], restore_value=["grad_x_ptr"])(bwd),
        )
    return _KERNELS["tuned"]


def _launch(x3d, rows: int, vocab: int, block_v):
    """(fwd, bwd, splits, launch kwargs) for `rows` rows of `vocab` columns.

    An explicit block_v (tests) or the interpreter pins one config; CUDA autotunes.
    """
    if interpret_mode() or block_v is not None or not x3d.is_cuda:
        block = block_v or min(_INTERPRET_BLOCK_V, triton.next_power_of_2(max(vocab, 1)))
        fwd, bwd = _kernels()
        programs, min_columns = _INTERPRET_PROGRAMS, block
        kwargs = {"BLOCK_V": block, "num_warps": 8 if block >= 2048 else 4}
    else:
        fwd, bwd = _tuned()
        programs = _PROGRAMS_PER_SM * torch.cuda.get_device_properties(x3d.device).multi_processor_count
        min_columns, kwargs = _MIN_SPLIT_COLUMNS, {}
    splits = max(1, min(triton.cdiv(programs, max(rows, 1)), triton.cdiv(vocab, min_columns)))
    return fwd, bwd, splits, kwargs


def _params(temperature: float, softcap, dtype: torch.dtype, device) -> torch.Tensor:
    # [1/T, cap, pre_scale] as a tensor, so fp64 inputs get fp64 constants (Python float kernel
    # arguments are typed fp32); its dtype also selects the kernels' accumulation type.
    cap, pre_scale = softcap if softcap is not None else (1.0, 1.0)
    return torch.tensor([1.0 / temperature, cap, pre_scale], dtype=dtype, device=device)


def logprob_forward(x3d, labels, temperature, ignore_index, *, softcap=None, block_v=None):
    """Forward over a [B, T, V] view (any strides). Returns flat (out, row_max, row_logsum)."""
    from .torch_logprobs import _label_masks, acc_dtype, apply_softcap

    B, T, V = x3d.shape
    n = B * T
    acc = acc_dtype(x3d.dtype)
    if n == 0:
        empty = torch.empty(0, dtype=acc, device=x3d.device)
        return empty, empty.clone(), empty.clone()
    labels = labels.contiguous()
    fwd, _, splits, kwargs = _launch(x3d, n, V, block_v)
    part_max = torch.empty((n, splits), dtype=acc, device=x3d.device)
    part_sum = torch.empty_like(part_max)
    # Kernels launch on the current CUDA device: a tensor on another GPU needs its own device
    # current for the launch (a no-op on CPU, under the interpreter).
    with torch.cuda.device(x3d.device) if x3d.is_cuda else contextlib.nullcontext():
        fwd[(n, splits)](
            x3d,
            labels,
            _params(temperature, softcap, acc, x3d.device),
            part_max,
            part_sum,
            T,
            V,
            x3d.stride(0),
            x3d.stride(1),
            x3d.stride(2),
            ignore_index,
            splits,
            VOCAB_CONTIGUOUS=x3d.stride(2) == 1,
            SOFTCAP=softcap is not None,
            **kwargs,
        )
    # Merge the splits' (max, sum) pairs and pick each label's logit: O(rows * splits) work.
    row_max = part_max.amax(dim=1)
    ref = torch.where(row_max == float("-inf"), 0.0, row_max)
    row_logsum = (part_sum * ((part_max - ref[:, None]) / temperature).exp()).sum(dim=1).log()
    active, safe, bad = _label_masks(labels, V, ignore_index)
    target = apply_softcap(x3d.gather(-1, safe.view(B, T, 1)).view(n).to(acc), softcap)
    out = ((target - row_max) / temperature - row_logsum).masked_fill_(~active, 0.0).masked_fill_(bad, float("nan"))
    ignored = labels == ignore_index  # their statistics were never computed (and are never read)
    return out, row_max.masked_fill_(ignored, 0.0), row_logsum.masked_fill_(ignored, 0.0)


def logprob_backward(
    x3d, labels, row_max, row_logsum, grad_out, temperature, ignore_index, *, out=None, softcap=None, col0=0,
    vocab_full=None, block_v=None,
):
    """Gradient w.r.t. the [B, T, V] view in the input dtype.

    `out` (a [B, T, V] tensor with a unit vocab stride, possibly `x3d` itself) receives the
    gradient in place; otherwise a contiguous tensor is allocated. `x3d` may hold columns
    [col0, col0 + V) of rows with `vocab_full` entries.
    """
    B, T, V = x3d.shape
    n = B * T
    if out is None:
        out = torch.empty((B, T, V), dtype=x3d.dtype, device=x3d.device)
    assert out.stride(2) == 1 or V == 1, "gradient buffer needs a unit vocab stride"
    if n == 0:
        return out
    _, bwd, splits, kwargs = _launch(x3d, n, V, block_v)
    with torch.cuda.device(x3d.device) if x3d.is_cuda else contextlib.nullcontext():  # device guard
        bwd[(n, splits)](
            x3d,
            labels.contiguous(),
            _params(temperature, softcap, row_max.dtype, x3d.device),
            row_max,
            row_logsum,
            grad_out.contiguous(),
            out,
            T,
            V,
            col0,
            vocab_full or V,
            x3d.stride(0),
            x3d.stride(1),
            x3d.stride(2),
            out.stride(0),
            out.stride(1),
            ignore_index,
            splits,
            VOCAB_CONTIGUOUS=x3d.stride(2) == 1,
            SOFTCAP=softcap is not None,
            **kwargs,
        )
    return out
