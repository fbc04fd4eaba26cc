"""Pure-torch chunked backend for per-token log-probs.

Works on any device and dtype. Rows are processed in chunks so the only [rows, V] temporary is
one chunk in the accumulation dtype (fp32, or fp64 for fp64 inputs); an fp32 copy of the whole
[N, V] logits never exists. Semantics match `triton_logprobs` exactly (same saved statistics),
so the autograd functions in `logprobs.py` can use either backend interchangeably.

Both entry points work on a 3-D view `[B, T, V]` (see `logprobs._as_rows3d`) and flat labels of
B*T entries. With `softcap=(c, a)` every logit is first capped, z = c * tanh(a * x) (Gemma-2/3's
final_logit_softcapping with a = logit_scale / c); without it z = x (a logit scale folds into T).
Per row they produce, in the accumulation dtype:
    row_max    m     = max_v z[v]
    row_logsum logs  = log(sum_v exp((z[v] - m) / T))
    out              = (z[label] - m) / T - logs        (0 where label == ignore_index,
                                                          NaN where label is out of range)
The backward may cover a vocabulary slice [col0, col0 + V) of rows of `vocab_full` entries: the
saved statistics are per full row, so each slice's gradient is exact on its own.
"""

from __future__ import annotations

import torch

# Elements per fp32 chunk scratch buffer (8 MiB). Small enough that the chunk is noise next to
# the logits themselves, large enough that the per-chunk Python overhead is negligible on CPU.
CHUNK_ELEMENTS = 1 << 21
# On CUDA each chunk is a few kernel launches: 16-row chunks at V = 128k would leave the GPU
# launch bound, so chunks there are sized by bytes (256 MiB of fp32 scratch).
CUDA_CHUNK_BYTES = 1 << 28


def chunk_elements_for(device: torch.device) -> int:
    return CUDA_CHUNK_BYTES // 4 if device.type == "cuda" else CHUNK_ELEMENTS


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation/output dtype: fp64 stays fp64, everything else computes in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def chunk_rows(num_rows: int, vocab: int, chunk_elements: int = CHUNK_ELEMENTS) -> int:
    return max(1, min(max(num_rows, 1), chunk_elements // max(vocab, 1)))


def apply_softcap(z: torch.Tensor, softcap) -> torch.Tensor:
    """z <- c * tanh(a * z) in place (a no-op without a softcap)."""
    if softcap is not None:
        cap, pre_scale = softcap
        z.mul_(pre_scale).tanh_().mul_(cap)
    return z


def _label_masks(labels: torch.Tensor, vocab: int, ignore_index: int):
    """(active, safe_labels, out_of_range) for a chunk of labels.

    Ignored labels are never used as an index: they are replaced by 0 before any gather.
    """
    ignored = labels == ignore_index
    in_range = (labels >= 0) & (labels < vocab)
    active = in_range & ~ignored
    safe = torch.where(active, labels, torch.zeros_like(labels)).long()
    return active, safe, ~in_range & ~ignored


def _iter_blocks(x3d: torch.Tensor, rows_per_chunk: int):
    """Yield (flat_start, x_chunk[rows, V]) over a [B, T, V] view without copying it."""
    B, T, _ = x3d.shape
    for b in range(B):
        for t0 in range(0, T, rows_per_chunk):
            t1 = min(t0 + rows_per_chunk, T)
            yield b * T + t0, x3d[b, t0:t1]


def forward_chunk(x: torch.Tensor, labels: torch.Tensor, temperature: float, ignore_index: int, work: torch.Tensor,
                  softcap=None):
    """Per-row (out, row_max, row_logsum) of one [rows, V] chunk; never writes to `x`.

    `work` is a [rows, V] scratch buffer in the accumulation dtype, reused across chunks:
    one allocation per call instead of one per chunk (large CPU allocations page-fault).
    """
    active, safe, bad = _label_masks(labels, x.shape[-1], ignore_index)
    z = apply_softcap(work.copy_(x), softcap)  # the upcast happens into the scratch buffer, never into x
    target = z.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    m = z.amax(dim=-1, keepdim=True)
    z.sub_(m)
    if temperature != 1.0:
        z.div_(temperature)
    logs = z.exp_().sum(dim=-1).log_()
    m = m.squeeze(-1)
    out = (target - m) / temperature - logs if temperature != 1.0 else (target - m) - logs
    out = out.masked_fill_(~active, 0.0).masked_fill_(bad, float("nan"))
    return out, m, logs


def grad_chunk(
    x: torch.Tensor,
    labels: torch.Tensor,
    row_max: torch.Tensor,
    row_logsum: torch.Tensor,
    grad_out: torch.Tensor,
    temperature: float,
    ignore_index: int,
    work: torch.Tensor,
    softcap=None,
    col0: int = 0,
    vocab_full: int | None = None,
) -> torch.Tensor:
    """d(sum_i g_i * out_i) / d x for one chunk, written into `work` (accumulation dtype).

    d out_i / d z_i[v] = (onehot(label_i)[v] - softmax(z_i / T)[v]) / T, times
    dz/dx = c * a * (1 - tanh(a x)^2) under a softcap. `x` holds vocabulary columns
    [col0, col0 + V) of rows with `vocab_full` entries. `work` may be `x` itself.
    """
    vocab = x.shape[-1]
    active, _, _ = _label_masks(labels, vocab_full or vocab, ignore_index)
    local = labels.long() - col0
    in_slice = active & (local >= 0) & (local < vocab)
    g = torch.where(active, grad_out, torch.zeros_like(grad_out)) / temperature
    # tanh(a x) is needed again after `work` (possibly x itself) has been overwritten.
    tanh = None if softcap is None else torch.empty_like(work).copy_(x).mul_(softcap[1]).tanh_()
    z = work.copy_(x) if tanh is None else torch.mul(tanh, softcap[0], out=work)
    z.sub_(row_max.unsqueeze(-1))
    if temperature != 1.0:
        z.div_(temperature)
    z.sub_(row_logsum.unsqueeze(-1)).exp_()  # softmax probabilities
    z.mul_(-g.unsqueeze(-1))
    hit = torch.where(in_slice, g, torch.zeros_like(g)).unsqueeze(-1)
    z.scatter_add_(-1, torch.where(in_slice, local, 0).unsqueeze(-1), hit)
    if tanh is not None:
        z.mul_(tanh.square_().neg_().add_(1.0).mul_(softcap[0] * softcap[1]))
    # Ignored rows already have g = 0; the fill also zeroes NaN * 0 from non-finite logits.
    return z.masked_fill_(~active.unsqueeze(-1), 0.0)


def logprob_forward(
    x3d: torch.Tensor, labels: torch.Tensor, temperature: float, ignore_index: int, *, softcap=None,
    chunk_elements=None,
):
    """Forward over a [B, T, V] view. Returns flat (out, row_max, row_logsum) of B*T rows."""
    B, T, V = x3d.shape
    n = B * T
    acc = acc_dtype(x3d.dtype)
    out = torch.empty(n, dtype=acc, device=x3d.device)
    row_max = torch.empty_like(out)
    row_logsum = torch.empty_like(out)
    rows = chunk_rows(T, V, chunk_elements or chunk_elements_for(x3d.device))
    work = torch.empty((min(rows, T), V), dtype=acc, device=x3d.device)
    for s, xc in _iter_blocks(x3d, rows):
        e = s + xc.shape[0]
        out[s:e], row_max[s:e], row_logsum[s:e] = forward_chunk(
            xc, labels[s:e], temperature, ignore_index, work[: e - s], softcap
        )
    return out, row_max, row_logsum


def logprob_backward(
    x3d: torch.Tensor,
    labels: torch.Tensor,
    row_max: torch.Tensor,
    row_logsum: torch.Tensor,
    grad_out: torch.Tensor,
    temperature: float,
    ignore_index: int,
    *,
    out=None,
    softcap=None,
    col0: int = 0,
    vocab_full: int | None = None,
    chunk_elements=None,
) -> torch.Tensor:
    """Gradient w.r.t. the [B, T, V] view in the input dtype.

    `out` (possibly `x3d` itself) receives it in place; a chunk is fully read before it is
    overwritten. Otherwise a contiguous tensor is allocated. `col0`/`vocab_full`: `x3d` holds
    columns [col0, col0 + V) of rows with `vocab_full` entries (see the module docstring).
    """
    B, T, V = x3d.shape
    grad = torch.empty((B, T, V), dtype=x3d.dtype, device=x3d.device) if out is None else out
    rows = chunk_rows(T, V, chunk_elements or chunk_elements_for(x3d.device))
    # fp32/fp64 inputs compute straight into the gradient buffer; bf16/fp16 need an fp32 scratch.
    in_place = grad.dtype == row_max.dtype
    work = None if in_place else torch.empty((min(rows, T), V), dtype=row_max.dtype, device=x3d.device)
    for s, xc in _iter_blocks(x3d, rows):
        e = s + xc.shape[0]
        b, t0 = divmod(s, T)
        dst = grad[b, t0 : t0 + xc.shape[0]]
        gz = grad_chunk(
            xc, labels[s:e], row_max[s:e], row_logsum[s:e], grad_out[s:e], temperature, ignore_index,
            dst if in_place else work[: e - s], softcap, col0, vocab_full,
        )
        if not in_place:
            dst.copy_(gz)
    return grad
