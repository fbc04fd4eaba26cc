"""Per-token log-probs without an fp32 [N, V] copy: public API, dispatch, autograd.

`logprobs_from_logits` replaces OpenRLHF's `log_probs_from_logits`; `fused_linear_logprobs`
also folds in the lm_head matmul so the full [N, V] logits never exist. See the package
docstring (`openrlhf_eva/ops/__init__.py`) for backends, dispatch rules and the ZeRO-3
calling convention.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from types import ModuleType
from typing import Optional

import torch

from . import torch_logprobs

BACKEND_ENV = "OPENRLHF_EVA_LOGPROBS_BACKEND"
_BACKENDS = ("auto", "torch", "triton")
_triton_module: Optional[ModuleType] = None
_triton_error: Optional[str] = None


# --------------------------------------------------------------------------------------------
# dispatch


def triton_available() -> bool:
    """True when triton imports; the kernel module is loaded on first call only."""
    return _load_triton() is not None


def _load_triton() -> Optional[ModuleType]:
    global _triton_module, _triton_error
    if _triton_module is None and _triton_error is None:
        try:
            _triton_module = importlib.import_module(".triton_logprobs", __package__)
        except ImportError as exc:
            _triton_error = f"triton is not importable ({exc})"
        except Exception as exc:  # a broken triton install must not break the torch path
            _triton_error = f"importing the triton backend failed: {exc!r}"
    return _triton_module


_warned: set = set()


def warn_slow_path(reason: str) -> None:
    """One RuntimeWarning per distinct reason the slower path runs (on CUDA; the torch path is
    the CPU's normal path and warns about nothing)."""
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"openrlhf_eva.ops: slower path: {reason}", RuntimeWarning, stacklevel=3)


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def resolve_backend(device: torch.device, backend: Optional[str] = None, dtype: Optional[torch.dtype] = None) -> str:
    """Name of the backend that will run for a tensor of `dtype` on `device`.

    auto  -> "triton" on CUDA, or on CPU under TRITON_INTERPRET=1, when triton imports and
             the dtype is fp16/bf16/fp32; "torch" otherwise (fp64 included: compiled fp64
             exp/log are not a path worth maintaining). OPENRLHF_EVA_LOGPROBS_BACKEND
             overrides "auto"; an explicit "triton" also accepts fp64 (the interpreter tests do).
    """
    name = backend or os.environ.get(BACKEND_ENV, "auto") or "auto"
    if name not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {name!r}")
    triton_device = device.type == "cuda" or (device.type == "cpu" and _interpret_requested())
    if name == "auto":
        triton_dtype = dtype in (None, torch.float16, torch.bfloat16, torch.float32)
        if triton_device and triton_dtype and _load_triton() is not None:
            return "triton"
        if device.type == "cuda":
            why = _triton_error if _load_triton() is None else f"{dtype} has no Triton kernel"
            warn_slow_path(f"chunked torch backend on CUDA: {why}")
        return "torch"
    if name == "torch" and device.type == "cuda":
        warn_slow_path(f"chunked torch backend on CUDA: backend 'torch' requested (argument or {BACKEND_ENV})")
    if name == "triton":
        if _load_triton() is None:
            raise RuntimeError(f"backend='triton' requested but {_triton_error}")
        if not triton_device:
            raise RuntimeError(
                f"backend='triton' needs a CUDA tensor (or TRITON_INTERPRET=1 for CPU), got {device}"
            )
    return name


def _backend_module(name: str) -> ModuleType:
    return _load_triton() if name == "triton" else torch_logprobs


# --------------------------------------------------------------------------------------------
# shape helpers


def _as_rows3d(x: torch.Tensor) -> torch.Tensor:
    """A [B, T, V] view of x[..., V] without copying whenever the strides allow it.

    [1, N, V] whenever the leading dims merge (contiguous or padded-row views); a 3-D input
    that does not merge (e.g. transposed batch/time) keeps its own two leading strides,
    which both backends handle. Only an exotic >3-D layout falls back to a copy.
    """
    V = x.shape[-1]
    try:
        return x.view(1, -1, V)
    except RuntimeError:
        pass
    if x.dim() == 3:
        return x
    try:
        return x.view(-1, x.shape[-2], V)
    except RuntimeError:
        return x.reshape(1, -1, V)


def _check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return temperature


def _check_labels(labels: torch.Tensor, lead_shape: torch.Size, what: str) -> None:
    if labels.shape != lead_shape:
        raise ValueError(f"labels shape {tuple(labels.shape)} must equal {what} {tuple(lead_shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")


# --------------------------------------------------------------------------------------------
# log-probs from logits


# A torch.library custom op, as the fused op below: torch.compile sees one opaque node (with a
# fake implementation for shapes) instead of tracing the chunk loop or the Triton launches.
# out[i] = log_softmax(logits[i] / T)[labels[i]]; saves only two fp32 scalars per row.
@torch.library.custom_op("openrlhf_eva::logprobs_from_logits", mutates_args=())
def _logits_op(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float, ignore_index: int, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out, row_max, row_logsum = _backend_module(backend).logprob_forward(
        _as_rows3d(logits), labels.reshape(-1), temperature, ignore_index
    )
    return out.view(labels.shape), row_max, row_logsum


@_logits_op.register_fake
def _(logits, labels, temperature, ignore_index, backend):
    acc = torch_logprobs.acc_dtype(logits.dtype)
    n = labels.numel()
    return logits.new_empty(labels.shape, dtype=acc), logits.new_empty(n, dtype=acc), logits.new_empty(n, dtype=acc)


@torch.library.custom_op("openrlhf_eva::logprobs_from_logits_backward", mutates_args=())
def _logits_backward_op(
    grad_out: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, row_max: torch.Tensor,
    row_logsum: torch.Tensor, temperature: float, ignore_index: int, backend: str,
) -> torch.Tensor:
    grad = _backend_module(backend).logprob_backward(
        _as_rows3d(logits), labels.reshape(-1), row_max, row_logsum, grad_out.reshape(-1).to(row_max.dtype),
        temperature, ignore_index,
    )
    return grad.view(logits.shape)


@_logits_backward_op.register_fake
def _(grad_out, logits, labels, row_max, row_logsum, temperature, ignore_index, backend):
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


def _logits_setup_context(ctx, inputs, output):
    logits, labels, temperature, ignore_index, backend = inputs
    ctx.save_for_backward(logits, labels, output[1], output[2])
    ctx.settings = (temperature, ignore_index, backend)


def _logits_autograd_backward(ctx, grad_out, _grad_max, _grad_logsum):
    logits, labels, row_max, row_logsum = ctx.saved_tensors
    grad = _logits_backward_op(grad_out.contiguous(), logits, labels, row_max, row_logsum, *ctx.settings)
    return grad, None, None, None, None


_logits_op.register_autograd(_logits_autograd_backward, setup_context=_logits_setup_context)


def logprobs_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Per-token log_softmax(logits / temperature)[labels] without an fp32 [N, V] copy.

    logits: [..., V] in fp16/bf16/fp32/fp64, any strides; never modified.
    labels: [...] integer; positions equal to `ignore_index` give 0.0 and a zero gradient,
            other labels outside [0, V) give NaN.
    Returns fp32 (fp64 for fp64 logits) of labels.shape. The backward takes any per-token
    upstream gradient and returns the logits gradient in the logits dtype.
    """
    _check_labels(labels, logits.shape[:-1], "logits.shape[:-1]")
    temperature = _check_temperature(temperature)
    name = resolve_backend(logits.device, backend, logits.dtype)
    return _logits_op(logits, labels, temperature, int(ignore_index), name)[0]


def log_probs_from_logits(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Drop-in for `openrlhf.models.utils.log_probs_from_logits` (same signature).

    Differences: never divides `logits` in place, and returns fp32 even for bf16 logits
    (OpenRLHF returns bf16 there, from a bf16 log_softmax).
    """
    return logprobs_from_logits(logits, labels, temperature=temperature)


@contextlib.contextmanager
def swap_openrlhf_log_probs():
    """Route `Actor.forward`'s gather through `log_probs_from_logits` above, then restore.

    actor.py does `from .utils import log_probs_from_logits`, so the name to patch is
    `openrlhf.models.actor.log_probs_from_logits` (patching utils alone has no effect).
    """
    actor = importlib.import_module("openrlhf.models.actor")
    previous = actor.log_probs_from_logits
    actor.log_probs_from_logits = log_probs_from_logits
    try:
        yield previous
    finally:
        actor.log_probs_from_logits = previous


# --------------------------------------------------------------------------------------------
# fused lm_head + log-probs

# Token rows per GEMM chunk on CUDA: the logits chunk stays <= 256 MiB, and at >= 512 rows the
# [rows, H] x [H, V] GEMM is compute bound on H100 (W is re-read per chunk). Both backends on
# CUDA; the CPU keeps torch_logprobs' small, cache-sized chunks.
_CUDA_CHUNK_BYTES = 1 << 28
_MIN_CUDA_CHUNK_ROWS = 512
# Backward works on vocabulary slices whose fp32 [cols, H] dW buffer stays <= 64 MiB, so the
# weight gradient costs its own [V, H] plus this buffer (not an fp32 [V, H] accumulator).
_DW_BUFFER_BYTES = 1 << 26
_MIN_VOCAB_COLS = 256


def default_chunk_rows(num_rows: int, vocab: int, dtype: torch.dtype, device: torch.device) -> int:
    if device.type == "cuda":
        rows = _CUDA_CHUNK_BYTES // (vocab * torch.empty((), dtype=dtype).element_size())
        rows = max(_MIN_CUDA_CHUNK_ROWS, rows // 256 * 256)
    else:
        rows = torch_logprobs.CHUNK_ELEMENTS // max(vocab, 1)
    return max(1, min(rows, max(num_rows, 1)))


def default_vocab_cols(vocab: int, width: int) -> int:
    cols = _DW_BUFFER_BYTES // (4 * max(width, 1))
    return max(1, min(vocab, max(_MIN_VOCAB_COLS, cols // _MIN_VOCAB_COLS * _MIN_VOCAB_COLS)))


def _rows(h2: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """A contiguous [rows, H] chunk of the hidden states (a copy only for strided inputs).

    torch 2.13's CPU bf16 GEMM reads past the row end of a row-padded left operand with a
    small H (seen with H in {1, 3, 17}); a [rows, H] copy is cheap next to the [rows, V] GEMM.
    """
    return h2[start:end].contiguous()


def _linear(h: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    return torch.mm(h, w.t()) if b is None else torch.addmm(b, h, w.t())


_ADDMM_OUT_DTYPE_OK = True


def _accumulate(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b with acc in fp32 (or the inputs' own dtype).

    On CUDA the bf16 GEMM writes straight into the fp32 accumulator (addmm out_dtype); where
    that is missing, the product is formed in the input dtype and added (a [rows, H] or
    [cols, H] temporary, both bounded by the tiling).
    """
    global _ADDMM_OUT_DTYPE_OK
    if acc.dtype == a.dtype:
        acc.addmm_(a, b)
        return
    if acc.is_cuda and _ADDMM_OUT_DTYPE_OK:
        try:
            torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
            return
        except (RuntimeError, TypeError, NotImplementedError) as exc:  # older torch / unsupported arch
            _ADDMM_OUT_DTYPE_OK = False
            warn_slow_path(f"addmm(out_dtype={acc.dtype}) is unavailable ({exc}); GEMM products take a temporary")
    acc.add_(torch.mm(a, b))


def _fused_forward(hidden, weight, bias, labels, temperature, softcap, pre_scale, ignore_index, backend, rows):
    H = hidden.shape[-1]
    h2 = hidden.reshape(-1, H)
    flat_labels = labels.reshape(-1)
    impl = _backend_module(backend)
    acc = torch_logprobs.acc_dtype(hidden.dtype)
    n = h2.shape[0]
    out = torch.empty(n, dtype=acc, device=hidden.device)
    row_max, row_logsum = torch.empty_like(out), torch.empty_like(out)
    for s in range(0, n, rows):
        e = min(s + rows, n)
        logits = _linear(_rows(h2, s, e), weight, bias)
        out[s:e], row_max[s:e], row_logsum[s:e] = impl.logprob_forward(
            logits.unsqueeze(0), flat_labels[s:e], temperature, ignore_index,
            softcap=None if softcap is None else (softcap, pre_scale),
        )
        del logits
    return out.view(labels.shape), row_max, row_logsum


def _fused_backward(grad_out, hidden, w, b, labels, row_max, row_logsum, temperature, softcap, pre_scale,
                    ignore_index, backend, rows, cols, need_h, need_w, need_b):
    """Gradients by [rows, cols] tiles, vocabulary slices outermost.

    Each tile's logits are recomputed and turned in place into dlogits (the saved row
    statistics make a slice's gradient exact on its own). A slice's dW rows are finished before
    the next slice starts: one GEMM when all tokens fit one tile, else summed in an fp32
    [cols, H] buffer reused by every slice. dH sums over slices (fp32 when there are several).
    """
    impl = _backend_module(backend)
    cap = None if softcap is None else (softcap, pre_scale)
    H = hidden.shape[-1]
    h2 = hidden.reshape(-1, H)
    flat_labels = labels.reshape(-1)
    g = grad_out.reshape(-1).to(row_max.dtype)
    n, V = h2.shape[0], w.shape[0]
    acc = torch_logprobs.acc_dtype(w.dtype)
    sliced, chunked = V > cols, n > rows
    grad_h = None
    if need_h:
        grad_h = torch.zeros((n, H), dtype=acc, device=h2.device) if sliced else torch.empty_like(h2)
    grad_w = (torch.empty_like(w) if n else torch.zeros_like(w)) if need_w else None  # no tiles: no writes
    dw_buffer = None
    if need_w and chunked:
        dw_buffer = torch.empty((min(cols, V), H), dtype=acc, device=w.device) if acc != w.dtype else None
    grad_b = torch.zeros(V, dtype=acc, device=w.device) if need_b else None
    for vs in range(0, V, cols):
        ve = min(vs + cols, V)
        w_s = w[vs:ve]
        b_s = b[vs:ve] if b is not None else None
        dw = None
        if need_w and chunked:
            dw = (dw_buffer[: ve - vs] if dw_buffer is not None else grad_w[vs:ve]).zero_()
        for s in range(0, n, rows):
            e = min(s + rows, n)
            hc = _rows(h2, s, e)
            logits = _linear(hc, w_s, b_s).unsqueeze(0)
            dl = impl.logprob_backward(
                logits, flat_labels[s:e], row_max[s:e], row_logsum[s:e], g[s:e], temperature, ignore_index,
                out=logits, softcap=cap, col0=vs, vocab_full=V,
            )[0]
            if need_h:
                if sliced:
                    _accumulate(grad_h[s:e], dl, w_s)
                else:
                    torch.mm(dl, w_s, out=grad_h[s:e])
            if need_w:
                if chunked:
                    _accumulate(dw, dl.t(), hc)
                else:
                    torch.mm(dl.t(), hc, out=grad_w[vs:ve])
            if need_b:
                grad_b[vs:ve].add_(dl.sum(0, dtype=grad_b.dtype))
            del logits, dl
        if dw_buffer is not None:
            grad_w[vs:ve].copy_(dw)
    # A custom op's outputs may not alias each other: one fresh empty tensor per gradient not asked for.
    return (
        grad_h.to(hidden.dtype).view(hidden.shape) if need_h else hidden.new_empty(0),
        grad_w if need_w else hidden.new_empty(0),
        grad_b.to(w.dtype) if need_b else hidden.new_empty(0),
    )


# The op is a torch.library custom op, so torch.compile keeps one graph around it (an opaque
# node with a fake implementation for shapes) instead of tracing the chunk loop and the
# Triton launches. Gradients come from the registered backward op.
@torch.library.custom_op("openrlhf_eva::fused_linear_logprobs", mutates_args=())
def _fused_op(
    hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], labels: torch.Tensor,
    temperature: float, softcap: Optional[float], pre_scale: float, ignore_index: int, backend: str, rows: int,
    backward_rows: int, cols: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _fused_forward(hidden, weight, bias, labels, temperature, softcap, pre_scale, ignore_index, backend, rows)


@_fused_op.register_fake
def _(hidden, weight, bias, labels, temperature, softcap, pre_scale, ignore_index, backend, rows, backward_rows, cols):
    acc = torch_logprobs.acc_dtype(hidden.dtype)
    n = labels.numel()
    return hidden.new_empty(labels.shape, dtype=acc), hidden.new_empty(n, dtype=acc), hidden.new_empty(n, dtype=acc)


@torch.library.custom_op("openrlhf_eva::fused_linear_logprobs_backward", mutates_args=())
def _fused_backward_op(
    grad_out: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
    labels: torch.Tensor, row_max: torch.Tensor, row_logsum: torch.Tensor, temperature: float,
    softcap: Optional[float], pre_scale: float, ignore_index: int, backend: str, rows: int, cols: int,
    need_h: bool, need_w: bool, need_b: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _fused_backward(grad_out, hidden, weight, bias, labels, row_max, row_logsum, temperature, softcap,
                           pre_scale, ignore_index, backend, rows, cols, need_h, need_w, need_b)


@_fused_backward_op.register_fake
def _(grad_out, hidden, weight, bias, labels, row_max, row_logsum, temperature, softcap, pre_scale, ignore_index,
      backend, rows, cols, need_h, need_w, need_b):
    return (
        torch.empty_like(hidden) if need_h else hidden.new_empty(0),
        torch.empty_like(weight) if need_w else hidden.new_empty(0),
        weight.new_empty(weight.shape[0]) if need_b else hidden.new_empty(0),
    )


def _fused_setup_context(ctx, inputs, output):
    """Saves what backward recomputes from.

    ZeRO-3: the weight is kept as `weight.detach()`, an alias of the storage gathered at
    forward time. Re-partitioning swaps the Parameter's `.data` but not this alias, so backward
    never reads the partitioned param; the gradient still reaches the Parameter because the
    Parameter itself is this op's input (see the package docstring for where the call must
    happen so that DeepSpeed can accept that gradient).
    """
    hidden, weight, bias, labels, temperature, softcap, pre_scale, ignore_index, backend, _, rows, cols = inputs
    _, row_max, row_logsum = output
    ctx.save_for_backward(hidden, labels, row_max, row_logsum)
    ctx.weight, ctx.bias = weight.detach(), bias.detach() if bias is not None else None
    ctx.settings = (temperature, softcap, pre_scale, ignore_index, backend, rows, cols)


def _fused_autograd_backward(ctx, grad_out, _grad_max, _grad_logsum):
    hidden, labels, row_max, row_logsum = ctx.saved_tensors
    temperature, softcap, pre_scale, ignore_index, backend, rows, cols = ctx.settings
    need_h, need_w, need_b = ctx.needs_input_grad[:3]
    grad_h, grad_w, grad_b = _fused_backward_op(
        grad_out.contiguous(), hidden, ctx.weight, ctx.bias, labels, row_max, row_logsum, temperature, softcap,
        pre_scale, ignore_index, backend, rows, cols, need_h, need_w, need_b and ctx.bias is not None,
    )
    return (grad_h if need_h else None, grad_w if need_w else None, grad_b if need_b else None,
            None, None, None, None, None, None, None, None, None)


_fused_op.register_autograd(_fused_autograd_backward, setup_context=_fused_setup_context)


def fused_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    logit_scale: float = 1.0,
    softcap: Optional[float] = None,
    ignore_index: int = -100,
    backend: Optional[str] = None,
    chunk_size: Optional[int] = None,
    vocab_chunk_size: Optional[int] = None,
) -> torch.Tensor:
    """Per-token log_softmax(cap(logit_scale * (hidden @ weight.T + bias)) / T)[labels], never forming [N, V].

    cap(z) = softcap * tanh(z / softcap) when softcap is given (Gemma-2/3's
    final_logit_softcapping), else z; logit_scale is Cohere's logit_scale (Granite: 1 /
    logits_scaling). Temperature comes last, as in Actor.forward.
    hidden: [..., H]; weight: [V, H] (the *gathered* lm_head weight under ZeRO-3, see the
    package docstring); bias: [V] or None; labels: hidden.shape[:-1], integer.
    Returns fp32 (fp64 for fp64 inputs) of labels.shape; ignored positions are 0.0.
    chunk_size: token rows per GEMM chunk; vocab_chunk_size: vocabulary columns per backward
    slice (defaults: by memory budget).
    """
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1] or weight.shape[0] == 0:
        raise ValueError(
            f"weight must be [V, H] with H={hidden.shape[-1]}, got {tuple(weight.shape)}; under ZeRO-3 "
            "call this inside the forward of a module wrapped by the DeepSpeed engine (so the "
            "lm_head weight is gathered), see openrlhf_eva.ops"
        )
    if hidden.dtype != weight.dtype or (bias is not None and bias.dtype != weight.dtype):
        raise TypeError("hidden, weight and bias must share one dtype")
    if hidden.device != weight.device or (bias is not None and bias.device != weight.device):
        raise ValueError(f"hidden, weight and bias must be on one device, got {hidden.device} and {weight.device}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be [V]={tuple(weight.shape[:1])}, got {tuple(bias.shape)}")
    _check_labels(labels, hidden.shape[:-1], "hidden.shape[:-1]")
    temperature = _check_temperature(temperature)
    if not float(logit_scale) > 0.0 or (softcap is not None and not float(softcap) > 0.0):
        raise ValueError(f"logit_scale and softcap must be > 0, got {logit_scale} and {softcap}")
    for name, value in (("chunk_size", chunk_size), ("vocab_chunk_size", vocab_chunk_size)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1")
    backend_name = resolve_backend(hidden.device, backend, hidden.dtype)
    # Without a cap the scale is a temperature: softmax(s * x / T) = softmax(x / (T / s)).
    if softcap is None:
        temperature, pre_scale = temperature / float(logit_scale), 1.0
    else:
        softcap, pre_scale = float(softcap), float(logit_scale) / float(softcap)
    n, (V, H) = labels.numel(), weight.shape
    cols = vocab_chunk_size or default_vocab_cols(V, H)
    rows = chunk_size or default_chunk_rows(n, V, hidden.dtype, hidden.device)
    # A backward tile is [rows, cols], as many bytes as a forward chunk.
    backward_rows = chunk_size or default_chunk_rows(n, cols, hidden.dtype, hidden.device)
    out, _, _ = _fused_op(hidden, weight, bias, labels, temperature, softcap, pre_scale, int(ignore_index),
                          backend_name, rows, backward_rows, cols)
    return out
