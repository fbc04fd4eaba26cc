"""Triton kernels for per-token log-probs (one program per token row).

Only imported by `logprobs.py` when the Triton backend is selected, so the package imports
without triton. The kernels are wrapped with `triton.jit` on first use and cached per
interpreter mode: `triton.jit` decides at decoration time whether to build an
`InterpretedFunction`, so wrapping lazily lets a test flip TRITON_INTERPRET=1 at run time.

Statistics saved for backward are the same as in `torch_logprobs`: the raw row max `m` and
`logs = log(sum exp((x - m) / T))`, both in the accumulation dtype (fp32, fp64 for fp64 input).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def _max_combine_impl(a, b):
    return tl.maximum(a, b)


def _add_combine_impl(a, b):
    return a + b


def _logprob_fwd(
    x_ptr,
    labels_ptr,
    inv_t_ptr,
    out_ptr,
    max_ptr,
    logsum_ptr,
    T,
    V,
    stride_xb,
    stride_xt,
    stride_xv,
    ignore_index,
    BLOCK_V: tl.constexpr,
    VOCAB_CONTIGUOUS: tl.constexpr,
):
    # int64 before any multiply: N * V passes 2**31 at ~16.7k tokens for a 128k vocab.
    row = tl.program_id(0).to(tl.int64)
    b = row // T
    t = row - b * T
    x_row = x_ptr + b * stride_xb + t * stride_xt
    inv_t = tl.load(inv_t_ptr)
    acc_ty = inv_t.dtype
    offs = tl.arange(0, BLOCK_V)

    # Online logsumexp with one exp per element: the running max is a scalar per block, so
    # the rescale exp((m_old - m_new) / T) is paid once per block, not per element.
    m = tl.full((), float("-inf"), acc_ty)
    s = tl.full((), 0.0, acc_ty)
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        in_row = cols < V
        if VOCAB_CONTIGUOUS:
            ptrs = x_row + cols
        else:
            ptrs = x_row + cols.to(tl.int64) * stride_xv
        x = tl.load(ptrs, mask=in_row, other=float("-inf")).to(acc_ty)
        m_new = tl.maximum(m, tl.reduce(x, 0, _max_combine))
        # A block of only -inf (legitimately masked vocab) would give -inf - -inf = NaN.
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp((m - m_ref) * inv_t) + tl.reduce(tl.exp((x - m_ref) * inv_t), 0, _add_combine)
        m = m_new
    logs = tl.log(s)

    label = tl.load(labels_ptr + row)
    ignored = label == ignore_index
    in_vocab = (label >= 0) & (label < V)
    active = in_vocab & (~ignored)
    # The ignore label is never used as an address: the load is masked off for it.
    safe = tl.where(active, label, 0).to(tl.int64)
    x_lab = tl.load(x_row + safe * stride_xv, mask=active, other=0.0).to(acc_ty)
    out = (x_lab - m) * inv_t - logs
    out = tl.where(active, out, tl.where(ignored, 0.0, float("nan")))
    tl.store(out_ptr + row, out)
    tl.store(max_ptr + row, m)
    tl.store(logsum_ptr + row, logs)


def _logprob_bwd(
    x_ptr,
    labels_ptr,
    inv_t_ptr,
    max_ptr,
    logsum_ptr,
    grad_out_ptr,
    grad_x_ptr,
    T,
    V,
    stride_xb,
    stride_xt,
    stride_xv,
    stride_gb,
    stride_gt,
    ignore_index,
    BLOCK_V: tl.constexpr,
    VOCAB_CONTIGUOUS: tl.constexpr,
):
    # grad_x may alias x (fused path writes into its logits chunk): each element is read
    # before it is written by the same program, so in place is safe.
    row = tl.program_id(0).to(tl.int64)
    b = row // T
    t = row - b * T
    x_row = x_ptr + b * stride_xb + t * stride_xt
    g_row = grad_x_ptr + b * stride_gb + t * stride_gt
    inv_t = tl.load(inv_t_ptr)
    acc_ty = inv_t.dtype
    offs = tl.arange(0, BLOCK_V)

    label = tl.load(labels_ptr + row)
    active = (label != ignore_index) & (label >= 0) & (label < V)
    m = tl.load(max_ptr + row)
    logs = tl.load(logsum_ptr + row)
    g = tl.load(grad_out_ptr + row).to(acc_ty) * inv_t
    g = tl.where(active, g, 0.0)

    for start in range(0, V, BLOCK_V):
        cols = start + offs
        in_row = cols < V
        if VOCAB_CONTIGUOUS:
            x_ptrs = x_row + cols
            g_ptrs = g_row + cols
        else:
            x_ptrs = x_row + cols.to(tl.int64) * stride_xv
            g_ptrs = g_row + cols.to(tl.int64)
        # -inf in masked lanes keeps exp() at 0 there instead of overflowing.
        x = tl.load(x_ptrs, mask=in_row, other=float("-inf")).to(acc_ty)
        p = tl.exp((x - m) * inv_t - logs)
        d = (tl.where(cols == label, 1.0, 0.0) - p) * g
        d = tl.where(active, d, 0.0)
        tl.store(g_ptrs, d.to(grad_x_ptr.dtype.element_ty), mask=in_row)


_KERNELS: dict = {}


def interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def _kernels():
    """(fwd, bwd) kernels for the current mode, and the mode's combine functions as globals.

    tl.max / tl.sum are themselves @jit functions whose flavour was fixed when triton was
    imported, so a process that imported triton before TRITON_INTERPRET=1 (deepspeed and
    transformers do) could not interpret them. The kernels reduce with our own combine
    functions instead, jitted per mode; the globals the kernels look up are set to the
    current mode's versions before every launch.
    """
    mode = interpret_mode()
    if mode not in _KERNELS:
        _KERNELS[mode] = {
            "_max_combine": triton.jit(_max_combine_impl),
            "_add_combine": triton.jit(_add_combine_impl),
            "kernels": (triton.jit(_logprob_fwd), triton.jit(_logprob_bwd)),
        }
    entry = _KERNELS[mode]
    globals()["_max_combine"], globals()["_add_combine"] = entry["_max_combine"], entry["_add_combine"]
    return entry["kernels"]


def _launch_config(vocab: int, block_v=None):
    if block_v is None:
        # The interpreter runs a block as numpy vectors; small blocks keep the tests quick
        # and exercise the multi-block loop and the ragged last block.
        cap = 128 if interpret_mode() else 4096
        block_v = min(cap, triton.next_power_of_2(max(vocab, 1)))
    num_warps = 8 if block_v >= 2048 else 4
    return block_v, num_warps


def _inv_temperature(temperature: float, dtype: torch.dtype, device) -> torch.Tensor:
    # Passed as a 1-element tensor so fp64 inputs get an fp64 1/T (Python float kernel
    # arguments are typed fp32); its dtype also selects the kernels' accumulation type.
    return torch.full((1,), 1.0 / temperature, dtype=dtype, device=device)


def logprob_forward(x3d, labels, temperature, ignore_index, *, block_v=None):
    """Forward over a [B, T, V] view (any strides). Returns flat (out, row_max, row_logsum)."""
    from .torch_logprobs import acc_dtype

    B, T, V = x3d.shape
    n = B * T
    acc = acc_dtype(x3d.dtype)
    out = torch.empty(n, dtype=acc, device=x3d.device)
    row_max = torch.empty_like(out)
    row_logsum = torch.empty_like(out)
    if n == 0:
        return out, row_max, row_logsum
    block_v, num_warps = _launch_config(V, block_v)
    fwd, _ = _kernels()
    fwd[(n,)](
        x3d,
        labels.contiguous(),
        _inv_temperature(temperature, acc, x3d.device),
        out,
        row_max,
        row_logsum,
        T,
        V,
        x3d.stride(0),
        x3d.stride(1),
        x3d.stride(2),
        ignore_index,
        BLOCK_V=block_v,
        VOCAB_CONTIGUOUS=x3d.stride(2) == 1,
        num_warps=num_warps,
    )
    return out, row_max, row_logsum


def logprob_backward(x3d, labels, row_max, row_logsum, grad_out, temperature, ignore_index, *, out=None, block_v=None):
    """Gradient w.r.t. the [B, T, V] view in the input dtype.

    `out` (a [B, T, V] tensor with a unit vocab stride, possibly `x3d` itself) receives the
    gradient in place; otherwise a contiguous tensor is allocated.
    """
    B, T, V = x3d.shape
    n = B * T
    if out is None:
        out = torch.empty((B, T, V), dtype=x3d.dtype, device=x3d.device)
    assert out.stride(2) == 1 or V == 1, "gradient buffer needs a unit vocab stride"
    if n == 0:
        return out
    block_v, num_warps = _launch_config(V, block_v)
    _, bwd = _kernels()
    bwd[(n,)](
        x3d,
        labels.contiguous(),
        _inv_temperature(temperature, row_max.dtype, x3d.device),
        row_max,
        row_logsum,
        grad_out.contiguous(),
        out,
        T,
        V,
        x3d.stride(0),
        x3d.stride(1),
        x3d.stride(2),
        out.stride(0),
        out.stride(1),
        ignore_index,
        BLOCK_V=block_v,
        VOCAB_CONTIGUOUS=x3d.stride(2) == 1,
        num_warps=num_warps,
    )
    return out
