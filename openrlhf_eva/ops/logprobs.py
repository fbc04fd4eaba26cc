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
        return "triton" if triton_device and triton_dtype and _load_triton() is not None else "torch"
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


class LogprobsFromLogits(torch.autograd.Function):
    """out[i] = log_softmax(logits[i] / T)[labels[i]]; saves only two fp32 scalars per row."""

    @staticmethod
    def forward(ctx, logits, labels, temperature, ignore_index, backend):
        impl = _backend_module(backend)
        out, row_max, row_logsum = impl.logprob_forward(
            _as_rows3d(logits), labels.reshape(-1), temperature, ignore_index
        )
        ctx.save_for_backward(logits, labels, row_max, row_logsum)
        ctx.temperature, ctx.ignore_index, ctx.backend = temperature, ignore_index, backend
        return out.view(labels.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        logits, labels, row_max, row_logsum = ctx.saved_tensors
        impl = _backend_module(ctx.backend)
        grad = impl.logprob_backward(
            _as_rows3d(logits),
            labels.reshape(-1),
            row_max,
            row_logsum,
            grad_out.reshape(-1).to(row_max.dtype),
            ctx.temperature,
            ctx.ignore_index,
        )
        return grad.view(logits.shape), None, None, None, None


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
    return LogprobsFromLogits.apply(logits, labels, temperature, int(ignore_index), name)


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

# Token rows per GEMM chunk on the Triton path: the bf16 logits chunk stays <= 256 MiB, and
# at >= 512 rows the [rows, H] x [H, V] GEMM is compute bound on H100 (W is re-read per chunk).
_TRITON_CHUNK_BYTES = 1 << 28
_MIN_TRITON_CHUNK = 512


def default_chunk_rows(num_rows: int, vocab: int, dtype: torch.dtype, backend: str, device: torch.device) -> int:
    if backend == "triton" and device.type == "cuda":
        rows = _TRITON_CHUNK_BYTES // (vocab * torch.empty((), dtype=dtype).element_size())
        rows = max(_MIN_TRITON_CHUNK, rows // 256 * 256)
    else:
        rows = torch_logprobs.CHUNK_ELEMENTS // max(vocab, 1)
    return max(1, min(rows, max(num_rows, 1)))


def _rows(h2: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """A contiguous [rows, H] chunk of the hidden states (a copy only for strided inputs).

    torch 2.13's CPU bf16 GEMM reads past the row end of a row-padded left operand with a
    small H (seen with H in {1, 3, 17}); a [rows, H] copy is cheap next to the [rows, V] GEMM.
    """
    return h2[start:end].contiguous()


def _linear(h: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    return torch.mm(h, w.t()) if b is None else torch.addmm(b, h, w.t())


_ADDMM_OUT_DTYPE_OK = True


def _accumulate_weight_grad(acc: torch.Tensor, dl: torch.Tensor, h: torch.Tensor) -> None:
    """acc[V, H] += dl[C, V]^T @ h[C, H], keeping fp32 accumulation for bf16/fp16 inputs.

    On CUDA the bf16 GEMM writes straight into the fp32 accumulator (addmm out_dtype);
    elsewhere the chunk product is formed in the input dtype and added in fp32.
    """
    global _ADDMM_OUT_DTYPE_OK
    if acc.dtype == dl.dtype:
        acc.addmm_(dl.t(), h)
        return
    if acc.is_cuda and _ADDMM_OUT_DTYPE_OK:
        try:
            torch.addmm(acc, dl.t(), h, out_dtype=acc.dtype, out=acc)
            return
        except (RuntimeError, TypeError):  # older torch / unsupported arch
            _ADDMM_OUT_DTYPE_OK = False
    acc.add_(torch.mm(dl.t(), h))


class FusedLinearLogprobs(torch.autograd.Function):
    """log_softmax((hidden @ weight.T + bias) / T)[labels] in token chunks, with recompute.

    Forward keeps per-row (max, logsumexp) only. Backward recomputes each logits chunk with
    the same GEMM and turns it in place into dlogits before the two grad GEMMs.

    ZeRO-3: the weight is kept as `weight.detach()`, an alias of the storage gathered at
    forward time. Re-partitioning swaps the Parameter's `.data` but not this alias, so
    backward never reads the partitioned param; the gradient still reaches the Parameter
    because the Parameter itself is this Function's input (see the package docstring for
    where the call must happen so that DeepSpeed can accept that gradient).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, temperature, ignore_index, backend, chunk_size):
        H = hidden.shape[-1]
        h2 = hidden.reshape(-1, H)
        flat_labels = labels.reshape(-1)
        w = weight.detach()
        b = bias.detach() if bias is not None else None
        n, V = h2.shape[0], w.shape[0]
        impl = _backend_module(backend)
        rows = chunk_size or default_chunk_rows(n, V, hidden.dtype, backend, hidden.device)
        acc = torch_logprobs.acc_dtype(hidden.dtype)
        out = torch.empty(n, dtype=acc, device=hidden.device)
        row_max, row_logsum = torch.empty_like(out), torch.empty_like(out)
        for s in range(0, n, rows):
            e = min(s + rows, n)
            logits = _linear(_rows(h2, s, e), w, b)
            out[s:e], row_max[s:e], row_logsum[s:e] = impl.logprob_forward(
                logits.unsqueeze(0), flat_labels[s:e], temperature, ignore_index
            )
            del logits
        ctx.save_for_backward(hidden, labels, row_max, row_logsum)
        ctx.weight, ctx.bias = w, b
        ctx.temperature, ctx.ignore_index, ctx.backend, ctx.rows = temperature, ignore_index, backend, rows
        return out.view(labels.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        hidden, labels, row_max, row_logsum = ctx.saved_tensors
        w, b = ctx.weight, ctx.bias
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        impl = _backend_module(ctx.backend)
        H = hidden.shape[-1]
        h2 = hidden.reshape(-1, H)
        flat_labels = labels.reshape(-1)
        g = grad_out.reshape(-1).to(row_max.dtype)
        n, rows = h2.shape[0], ctx.rows
        multi_chunk = n > rows
        # Several chunks add into one weight gradient: accumulate in fp32 so bf16 rounding
        # does not compound per chunk (one chunk is a single GEMM and needs no accumulator).
        wacc = torch_logprobs.acc_dtype(w.dtype) if multi_chunk else w.dtype
        grad_h = torch.empty_like(h2) if need_h else None
        grad_w = torch.zeros(w.shape, dtype=wacc, device=w.device) if need_w else None
        grad_b = torch.zeros(w.shape[0], dtype=torch_logprobs.acc_dtype(w.dtype), device=w.device) if need_b else None
        for s in range(0, n, rows):
            e = min(s + rows, n)
            hc = _rows(h2, s, e)
            logits = _linear(hc, w, b).unsqueeze(0)
            dl = impl.logprob_backward(
                logits, flat_labels[s:e], row_max[s:e], row_logsum[s:e], g[s:e],
                ctx.temperature, ctx.ignore_index, out=logits,
            )[0]
            if need_h:
                torch.mm(dl, w, out=grad_h[s:e])
            if need_w:
                _accumulate_weight_grad(grad_w, dl, hc)
            if need_b:
                grad_b.add_(dl.sum(0, dtype=grad_b.dtype))
            del logits, dl
        if grad_h is not None:
            grad_h = grad_h.view(hidden.shape)
        if grad_w is not None:
            grad_w = grad_w.to(w.dtype)
        if grad_b is not None:
            grad_b = grad_b.to(b.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None, None


def fused_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    backend: Optional[str] = None,
    chunk_size: Optional[int] = None,
) -> torch.Tensor:
    """Per-token log_softmax((hidden @ weight.T + bias) / T)[labels], never forming [N, V].

    hidden: [..., H]; weight: [V, H] (the *gathered* lm_head weight under ZeRO-3, see the
    package docstring); bias: [V] or None; labels: hidden.shape[:-1], integer.
    Returns fp32 (fp64 for fp64 inputs) of labels.shape; ignored positions are 0.0.
    chunk_size: token rows per GEMM chunk (default: by memory budget and backend).
    """
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1] or weight.shape[0] == 0:
        raise ValueError(
            f"weight must be [V, H] with H={hidden.shape[-1]}, got {tuple(weight.shape)}; under ZeRO-3 "
            "call this inside the forward of a module wrapped by the DeepSpeed engine (so the "
            "lm_head weight is gathered), see openrlhf_eva.ops"
        )
    if hidden.dtype != weight.dtype or (bias is not None and bias.dtype != weight.dtype):
        raise TypeError("hidden, weight and bias must share one dtype")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be [V]={tuple(weight.shape[:1])}, got {tuple(bias.shape)}")
    _check_labels(labels, hidden.shape[:-1], "hidden.shape[:-1]")
    temperature = _check_temperature(temperature)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    name = resolve_backend(hidden.device, backend, hidden.dtype)
    return FusedLinearLogprobs.apply(hidden, weight, bias, labels, temperature, int(ignore_index), name, chunk_size)
