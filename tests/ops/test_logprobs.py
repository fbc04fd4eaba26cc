"""openrlhf_eva.ops log-prob ops against an fp64 oracle, on the torch path and Triton's interpreter.

Inputs are embedded in NaN-filled buffers (padded rows, transposed batch, strided vocab), so a
kernel that reads past a row end, ignores a stride or drops a mask returns NaN; the buffers are
compared bit for bit afterwards to prove the op never wrote to its input.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from openrlhf_eva.ops import fused_linear_logprobs, logprobs_from_logits, resolve_backend

HAS_TRITON = importlib.util.find_spec("triton") is not None
BACKENDS = [
    "torch",
    pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")),
]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
# Relative spacing of the gradient dtype: gradients are computed in fp32 and rounded once
# (the interpreter truncates bf16 instead of rounding, hence one full ulp, not half).
GRAD_RTOL = {torch.float32: 2e-5, torch.bfloat16: 2**-7, torch.float16: 2**-10, torch.float64: 1e-10}
# The Triton cases run in Triton's interpreter, about 1 s an example on a CPU: the suite's budget allows
# 30 of each (the torch cases, ~50x faster, draw 100-150). Derandomized, so these are the same 30 in
# every run; the compiled kernels meet the oracle on a GPU in the CUDA tests at the end of this file.
INTERPRETED_EXAMPLES = 30
SETTINGS = dict(
    deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@contextlib.contextmanager
def backend_env(backend: str):
    """Run the Triton backend through its interpreter; kernels are (re)wrapped per mode."""
    old = os.environ.get("TRITON_INTERPRET")
    if backend == "triton":
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


# ------------------------------------------------------------------------------------------
# oracle and input builders


def oracle(logits, labels, temperature, ignore_index):
    """fp64 log_softmax(logits / T)[label]; 0 where ignored. Differentiable w.r.t. logits."""
    lp = torch.log_softmax(logits.double() / temperature, dim=-1)
    active = labels != ignore_index
    picked = lp.gather(-1, torch.where(active, labels, 0).unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(~active, 0.0)


def bits(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern, so NaN canaries compare equal to themselves."""
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]).clone()


def embed(values: torch.Tensor, layout: str):
    """(view holding `values`, NaN-filled buffer behind it) for a [..., V] tensor."""
    V = values.shape[-1]
    nan = float("nan")
    if layout == "contiguous":
        buf = values.clone()
        return buf, buf
    if layout == "padded":  # NaN after every row end, including the last one
        buf = torch.full((*values.shape[:-1], V + 3), nan, dtype=values.dtype)
        buf[..., :V] = values
        return buf[..., :V], buf
    if layout == "strided_vocab":  # NaN between every two vocab entries
        buf = torch.full((*values.shape[:-1], 2 * V + 1), nan, dtype=values.dtype)
        view = buf[..., 1::2][..., :V]
        view.copy_(values)
        return view, buf
    if layout == "transposed" and values.dim() == 3:  # [B, T, V] stored as [T, B, V + pad]
        buf = torch.full((values.shape[1], values.shape[0], V + 2), nan, dtype=values.dtype)
        view = buf[..., :V].transpose(0, 1)
        view.copy_(values)
        return view, buf
    return embed(values, "padded")


@st.composite
def logprob_cases(draw):
    lead = draw(st.sampled_from([(1,), (5,), (13,), (24,), (1, 7), (2, 6), (3, 4), (4, 5), (2, 0), (0,)]))
    V = draw(st.one_of(st.sampled_from([1, 2, 3, 31, 127, 128, 129, 257, 509]), st.integers(2, 400)))
    dtype = draw(st.sampled_from(DTYPES))
    temperature = draw(st.sampled_from([1.0, 0.5, 0.7, 1.3, 2.0]))
    ignore_index = draw(st.sampled_from([-100, -1]))
    scale = draw(st.sampled_from(["normal", "wide", "very_negative", "pm1e4", "some_neg_inf"]))
    ignored = draw(st.sampled_from(["none", "some", "all"]))
    layout = draw(st.sampled_from(["contiguous", "padded", "strided_vocab", "transposed"]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, V, generator=g, dtype=torch.float64)
    if scale == "wide":
        x = x * 30
    elif scale == "very_negative":
        x = x - 1e4
    elif scale == "pm1e4":
        x = torch.where(torch.rand(x.shape, generator=g) < 0.5, -1e4, 1e4) + x
    elif scale == "some_neg_inf" and V > 1:
        x = x.masked_fill(torch.rand(x.shape, generator=g) < 0.3, float("-inf"))
        x[..., 0] = 0.0  # keep every row finite somewhere
    labels = torch.randint(0, V, lead, generator=g)
    flat = labels.view(-1)
    if flat.numel() >= 2:
        flat[0], flat[-1] = 0, V - 1
    if ignored == "all":
        labels.fill_(ignore_index)
    elif ignored == "some":
        labels.masked_fill_(torch.rand(lead, generator=g) < 0.3, ignore_index)
    upstream = torch.randn(lead, generator=g, dtype=torch.float64)
    return x.to(dtype), labels, temperature, ignore_index, layout, upstream


def strided_labels(labels: torch.Tensor) -> torch.Tensor:
    buf = torch.full((*labels.shape[:-1], 2 * labels.shape[-1] + 1), 12345, dtype=labels.dtype)
    view = buf[..., ::2][..., : labels.shape[-1]]
    view.copy_(labels)
    return view


def assert_close_scaled(actual, expected, rtol, atol):
    """|a - e| <= atol + rtol * |e| elementwise, equal infinities allowed, no NaN anywhere."""
    actual, expected = actual.double(), expected.double()
    assert not torch.isnan(actual).any(), "NaN in output: a canary was read"
    same_inf = torch.isinf(expected) & (actual == expected)
    err = torch.where(same_inf, 0.0, (actual - expected).abs())
    bound = atol + rtol * expected.abs().nan_to_num(posinf=0.0, neginf=0.0)
    worst = (err - bound).max() if err.numel() else torch.tensor(-1.0)
    assert worst <= 0, f"max excess {worst.item():.3e}; max err {err.max().item():.3e}"


# ------------------------------------------------------------------------------------------
# logprobs_from_logits


@settings(max_examples=150, **SETTINGS)
@given(case=logprob_cases())
def test_logprobs_from_logits_torch_matches_fp64_oracle(case):
    check_logprobs_from_logits("torch", case)


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@settings(max_examples=INTERPRETED_EXAMPLES, **SETTINGS)
@given(case=logprob_cases())
def test_logprobs_from_logits_triton_matches_fp64_oracle(case):
    check_logprobs_from_logits("triton", case)


def check_logprobs_from_logits(backend, case):
    x, labels, temperature, ignore_index, layout, upstream = case
    V = x.shape[-1]
    event(f"V={'1' if V == 1 else '>128' if V > 128 else '2..128'} rows={'>0' if labels.numel() else '0'}")
    event(f"{x.dtype} {layout}")
    logits, buf = embed(x, layout)
    before = bits(buf)
    if layout == "strided_vocab" and labels.numel():
        labels = strided_labels(labels)
    leaf = logits.requires_grad_()
    with backend_env(backend):
        assert resolve_backend(leaf.device, backend) == backend
        out = logprobs_from_logits(leaf, labels, temperature=temperature, ignore_index=ignore_index, backend=backend)
        assert out.shape == labels.shape
        assert out.dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32)
        (out.double() * upstream).sum().backward()

    ref_in = x.detach().double().requires_grad_()
    ref = oracle(ref_in, labels, temperature, ignore_index)
    (ref * upstream).sum().backward()
    fp64 = x.dtype == torch.float64
    # fp32 arithmetic on (x - max) / T: error grows with the logit range (the +-1e4 cases).
    assert_close_scaled(out, ref, rtol=1e-12 if fp64 else 2e-6, atol=1e-10 if fp64 else 2e-5)
    assert (out[labels == ignore_index] == 0).all()
    assert leaf.grad.dtype == x.dtype and leaf.grad.shape == x.shape
    gscale = upstream.abs().max().item() / temperature if upstream.numel() else 1.0
    assert_close_scaled(leaf.grad, ref_in.grad, rtol=GRAD_RTOL[x.dtype], atol=1e-6 * gscale)
    assert (leaf.grad[labels == ignore_index] == 0).all()
    assert torch.equal(bits(buf), before), "the op wrote to its input buffer"


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_label_gives_nan_not_a_read(backend):
    x = torch.randn(4, 10)
    labels = torch.tensor([3, 10, -5, -100])
    with backend_env(backend):
        out = logprobs_from_logits(x, labels, backend=backend)
    assert torch.isfinite(out[0]) and torch.isnan(out[1]) and torch.isnan(out[2]) and out[3] == 0


def test_argument_checks():
    x, labels = torch.randn(2, 5), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="temperature"):
        logprobs_from_logits(x, labels, temperature=0.0)
    with pytest.raises(ValueError, match="labels shape"):
        logprobs_from_logits(x, labels[:1])
    with pytest.raises(TypeError, match="integer"):
        logprobs_from_logits(x, labels.float())
    with pytest.raises(ValueError, match="weight must be"):
        fused_linear_logprobs(torch.randn(2, 4), torch.empty(0), labels)


# ------------------------------------------------------------------------------------------
# fused_linear_logprobs


@st.composite
def fused_cases(draw):
    N = draw(st.sampled_from([1, 2, 7, 16, 33]))
    H = draw(st.sampled_from([1, 3, 8, 17]))
    V = draw(st.one_of(st.sampled_from([1, 2, 31, 128, 129, 257]), st.integers(1, 300)))
    # No float16 here: depending on what else the process imported, CPU fp16 GEMMs in torch 2.13
    # switch to a kernel whose hidden-state gradients were 17x off this bound (accumulation in
    # fp16). That is the CPU backend, not the op; GPUs accumulate fp16 in fp32. Kept for bf16.
    dtype = draw(st.sampled_from([d for d in DTYPES if d is not torch.float16]))
    chunk = draw(st.one_of(st.none(), st.integers(1, N + 2)))
    # backward vocabulary slices: a few per row (one slice per column would be V launches each)
    vocab_chunk = draw(st.one_of(st.none(), st.integers(max(1, V // 4), V + 2)))
    temperature = draw(st.sampled_from([1.0, 0.6, 1.7]))
    # (logit_scale, softcap): Llama, Cohere-like, Granite-like (1 / 8), Gemma-like, both
    post = draw(st.sampled_from([(1.0, None), (0.0625 * 8, None), (0.125, None), (1.0, 2.5), (1.7, 4.0)]))
    use_bias = draw(st.booleans())
    ignored = draw(st.sampled_from(["none", "some", "all"]))
    batched = draw(st.booleans())
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    h = torch.randn(N, H, generator=g, dtype=torch.float64)
    w = torch.randn(V, H, generator=g, dtype=torch.float64) * (2.0 / max(H, 1) ** 0.5)
    b = torch.randn(V, generator=g, dtype=torch.float64) if use_bias else None
    labels = torch.randint(0, V, (N,), generator=g)
    labels[0], labels[-1] = 0, V - 1
    if ignored == "all":
        labels.fill_(-100)
    elif ignored == "some":
        labels.masked_fill_(torch.rand(N, generator=g) < 0.3, -100)
    upstream = torch.randn(N, generator=g, dtype=torch.float64)
    return (h.to(dtype), w.to(dtype), None if b is None else b.to(dtype), labels, temperature, chunk, vocab_chunk,
            post, batched, upstream)


@settings(max_examples=100, **SETTINGS)
@given(case=fused_cases())
def test_fused_linear_logprobs_torch_matches_fp64_oracle(case):
    check_fused_linear_logprobs("torch", case)


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@settings(max_examples=INTERPRETED_EXAMPLES, **SETTINGS)
@given(case=fused_cases())
def test_fused_linear_logprobs_triton_matches_fp64_oracle(case):
    check_fused_linear_logprobs("triton", case)


def check_fused_linear_logprobs(backend, case):
    h, w, b, labels, temperature, chunk, vocab_chunk, (scale, cap), batched, upstream = case
    N, H = h.shape
    hv, hbuf = embed(h, "padded")
    wv, wbuf = embed(w, "padded")
    bv, bbuf = embed(b, "strided_vocab") if b is not None else (None, None)
    before = [bits(t) for t in (hbuf, wbuf, bbuf) if t is not None]
    leaves = [t.requires_grad_() for t in (hv, wv, bv) if t is not None]
    hin, lab = (hv.unflatten(0, (1, N)), labels.view(1, N)) if batched else (hv, labels)
    with backend_env(backend):
        out = fused_linear_logprobs(hin, wv, lab, bias=bv, temperature=temperature, logit_scale=scale, softcap=cap,
                                    backend=backend, chunk_size=chunk, vocab_chunk_size=vocab_chunk)
        assert out.shape == lab.shape
        (out.double().reshape(N) * upstream).sum().backward()

    refs = [t.detach().double().requires_grad_() for t in (h, w, b) if t is not None]
    raw = refs[0] @ refs[1].t() + (refs[2] if b is not None else 0.0)
    logits = raw * scale if cap is None else cap * torch.tanh(raw * scale / cap)  # transformers' order
    ref = oracle(logits, labels, temperature, -100)
    (ref * upstream).sum().backward()
    # Low precision: the logits themselves are rounded to the input dtype (as in the unfused
    # lm_head), so errors scale with the logit size and that dtype's epsilon.
    eps = {torch.float32: 2e-6, torch.bfloat16: 2**-7, torch.float16: 2**-10, torch.float64: 1e-12}[h.dtype]
    # 8 eps, not 4: CPU fp16/bf16 GEMMs may accumulate in a different order from run to run
    # (oneDNN picks kernels by load and thread count); one such run exceeded 4 eps on a gradient.
    # The raw GEMM output is what gets rounded: its size (times the scale) sets the error.
    tol = 8 * eps * (raw.detach().abs().max().item() * scale / temperature + 1)
    assert_close_scaled(out.reshape(N), ref, rtol=0.0, atol=tol + (0.0 if h.dtype == torch.float64 else 2e-5))
    assert (out.reshape(N)[labels == -100] == 0).all()
    # dlogits = g / T * (onehot - p) cancels when p(label) -> 1, and the grads are sums with
    # cancellation: bound each entry's error by tol times the same sums over |g| / T * (onehot + p).
    active = labels != -100
    onehot = torch.zeros_like(logits).scatter_(-1, torch.where(active, labels, 0)[:, None], 1.0)
    probs = torch.softmax(logits.detach() / temperature, -1)
    dl = (upstream.abs() * active * scale / temperature)[:, None] * (onehot + probs)
    scales = [dl @ refs[1].detach().abs(), dl.t() @ refs[0].detach().abs(), dl.sum(0)]
    for leaf, r, bound in zip(leaves, refs, scales):
        assert leaf.grad.dtype == h.dtype and leaf.grad.shape == leaf.shape
        assert not torch.isnan(leaf.grad).any(), "NaN in a gradient: a canary was read"
        assert ((leaf.grad.double() - r.grad).abs() <= tol * bound + 1e-30).all()
    for t, bb in zip([t for t in (hbuf, wbuf, bbuf) if t is not None], before):
        assert torch.equal(bits(t), bb), "the op wrote to an input buffer"


# ------------------------------------------------------------------------------------------
# gradcheck, memory, integration


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp64_gradcheck(backend):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 11, dtype=torch.float64, generator=g, requires_grad=True)
    labels = torch.tensor([[0, 10, -100], [4, 4, 7]])
    h = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(9, 4, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(9, dtype=torch.float64, generator=g, requires_grad=True)
    hl = torch.tensor([8, 0, -100, 3, 3])
    with backend_env(backend):
        assert torch.autograd.gradcheck(
            lambda t: logprobs_from_logits(t, labels, temperature=0.8, backend=backend), (x,)
        )
        assert torch.autograd.gradcheck(
            lambda a, c, d: fused_linear_logprobs(a, c, hl, bias=d, temperature=1.3, backend=backend, chunk_size=2),
            (h, w, b),
        )
        assert torch.autograd.gradcheck(  # soft-capped, scaled, in vocabulary slices of 4
            lambda a, c, d: fused_linear_logprobs(a, c, hl, bias=d, temperature=0.9, logit_scale=1.5, softcap=2.0,
                                                  backend=backend, chunk_size=2, vocab_chunk_size=4),
            (h, w, b),
        )


class LargestAllocation(TorchDispatchMode):
    """Largest tensor (elements, dtype) any aten op returns while active."""

    def __init__(self):
        super().__init__()
        self.largest = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and not func._schema.is_mutable:  # fresh outputs only
                self.largest[t.dtype] = max(self.largest.get(t.dtype, 0), t.numel())
        return out


def test_fused_op_never_allocates_n_by_v():
    N, V, H = 64, 1000, 16
    h = torch.randn(N, H, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(V, H, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, V, (N,))
    with LargestAllocation() as mode:
        out = fused_linear_logprobs(h, w, labels, backend="torch", chunk_size=16)
        out.backward(torch.randn(N))
    assert max(mode.largest.values()) < N * V, mode.largest
    assert max(mode.largest.values()) >= 16 * V  # the probe sees the chunk-sized logits


def test_logits_op_never_allocates_fp32_n_by_v_for_bf16(monkeypatch):
    from openrlhf_eva.ops import torch_logprobs

    monkeypatch.setattr(torch_logprobs, "CHUNK_ELEMENTS", 16 * 4096)  # 16-row chunks
    N, V = 256, 4096
    x = torch.randn(N, V, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, V, (N,))
    with LargestAllocation() as mode:
        out = logprobs_from_logits(x, labels, temperature=0.7, backend="torch")
        out.backward(torch.randn(N))
    assert mode.largest.get(torch.float32, 0) < N * V, mode.largest
    assert mode.largest[torch.bfloat16] == N * V  # the gradient, which the caller asked for


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_without_tokens_gives_zero_gradients(backend):
    h = torch.randn(0, 4, requires_grad=True)
    w = torch.randn(9, 4, requires_grad=True)
    b = torch.randn(9, requires_grad=True)
    with backend_env(backend):
        out = fused_linear_logprobs(h, w, torch.zeros(0, dtype=torch.long), bias=b, backend=backend)
        out.sum().backward()
    assert out.shape == (0,) and h.grad.shape == (0, 4)
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


def test_weight_gradient_needs_no_fp32_v_by_h():
    """dW by vocabulary slices: besides the bf16 [V, H] gradient itself, nothing larger than one
    [cols, H] fp32 buffer or one [rows, cols] tile (the old accumulator was fp32 [V, H])."""
    N, V, H, rows, cols = 64, 1000, 16, 16, 128
    g = torch.Generator().manual_seed(0)  # never the global RNG: the draw would depend on test order
    h = torch.randn(N, H, generator=g, dtype=torch.bfloat16).requires_grad_()
    w = torch.randn(V, H, generator=g, dtype=torch.bfloat16).requires_grad_()
    labels = torch.randint(0, V, (N,), generator=g)
    with LargestAllocation() as mode:
        out = fused_linear_logprobs(h, w, labels, backend="torch", chunk_size=rows, vocab_chunk_size=cols)
        out.backward(torch.randn(N, generator=g))
    assert mode.largest[torch.float32] <= max(cols * H, rows * V), mode.largest
    assert mode.largest[torch.bfloat16] == V * H  # the gradient the caller asked for
    ref = torch.log_softmax((h.detach().float() @ w.detach().float().t()), -1).gather(-1, labels[:, None])[:, 0]
    torch.testing.assert_close(out, ref, rtol=4e-3, atol=0.05)  # bf16 logits of |x| ~ 20: 1 bf16 step


def test_torch_compile_keeps_one_graph():
    """fullgraph=True raises on any graph break: each custom op must be one opaque node, forward
    and backward (aot_eager: the real autograd graph without a C++ compiler)."""
    g = torch.Generator().manual_seed(2)
    h = torch.randn(2, 5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(40, 8, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 40, (2, 5), generator=g)
    labels[0, 1] = -100

    def loss(h, w):
        logps = fused_linear_logprobs(h, w, labels, temperature=0.8, softcap=3.0, chunk_size=3, vocab_chunk_size=16)
        logits_logps = logprobs_from_logits(h @ w.t(), labels, temperature=1.2)
        return (logps * torch.arange(10, dtype=logps.dtype).view(2, 5)).sum() + logits_logps.sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    expected, expected_grads = loss(h, w), torch.autograd.grad(loss(h, w), (h, w))
    got = compiled(h, w)
    grads = torch.autograd.grad(got, (h, w))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_slower_paths_on_cuda_warn_once_with_the_reason(monkeypatch):
    from openrlhf_eva.ops import logprobs

    monkeypatch.setattr(logprobs, "_warned", set())
    monkeypatch.delenv("OPENRLHF_EVA_LOGPROBS_BACKEND", raising=False)
    cuda = torch.device("cuda")  # dispatch looks at the device type only: no GPU needed
    with pytest.warns(RuntimeWarning, match="chunked torch backend on CUDA: torch.float64 has no Triton kernel"
                      if HAS_TRITON else "chunked torch backend on CUDA: triton is not importable"):
        assert resolve_backend(cuda, dtype=torch.float64) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backend(cuda, dtype=torch.float64) == "torch"  # once per reason
        assert resolve_backend(torch.device("cpu"), dtype=torch.float32) == "torch"  # the CPU's own path


def load_openrlhf_log_probs():
    try:
        from openrlhf.models.utils import log_probs_from_logits
    except ImportError:
        pytest.importorskip("openrlhf_eva.compat")  # flash_attn stand-in
        from openrlhf.models.utils import log_probs_from_logits
    return log_probs_from_logits


def test_drop_in_matches_openrlhf_log_probs_from_logits():
    import inspect

    from openrlhf_eva.ops import log_probs_from_logits as ours

    theirs = load_openrlhf_log_probs()
    assert list(inspect.signature(ours).parameters) == list(inspect.signature(theirs).parameters)
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 9, 1000, generator=g) * 4
    labels = torch.randint(0, 1000, (2, 9), generator=g)
    for temperature in (1.0, 0.7):
        expected = theirs(logits.clone(), labels, temperature=temperature)  # theirs divides in place
        kept = logits.clone()
        got = ours(logits, labels, temperature=temperature)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        assert torch.equal(logits, kept)
    # bf16 logits: OpenRLHF answers in bf16, we in fp32; agree to bf16 resolution
    lb = logits.bfloat16()
    torch.testing.assert_close(ours(lb, labels), theirs(lb, labels).float(), rtol=2**-7, atol=2**-7)


def test_swap_patches_the_name_actor_forward_uses():
    load_openrlhf_log_probs()
    actor = pytest.importorskip("openrlhf.models.actor")
    from openrlhf_eva.ops import log_probs_from_logits, swap_openrlhf_log_probs

    original = actor.log_probs_from_logits
    with swap_openrlhf_log_probs() as previous:
        assert previous is original and actor.log_probs_from_logits is log_probs_from_logits
    assert actor.log_probs_from_logits is original


def test_dispatch_rules(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("OPENRLHF_EVA_LOGPROBS_BACKEND", raising=False)
    assert resolve_backend(cpu) == "torch"
    monkeypatch.setenv("OPENRLHF_EVA_LOGPROBS_BACKEND", "torch")
    assert resolve_backend(cpu) == "torch"
    with pytest.raises(ValueError):
        resolve_backend(cpu, "cuda")
    if HAS_TRITON:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            resolve_backend(cpu, "triton")
        monkeypatch.setenv("OPENRLHF_EVA_LOGPROBS_BACKEND", "auto")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert resolve_backend(cpu) == "triton"
        assert resolve_backend(cpu, dtype=torch.float64) == "torch"
        assert resolve_backend(cpu, "triton", torch.float64) == "triton"


def test_package_imports_and_runs_without_triton():
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # any `import triton` now raises ImportError
        import torch
        import warnings
        from openrlhf_eva.ops import logprobs_from_logits, resolve_backend, triton_available
        assert not triton_available()
        assert resolve_backend(torch.device("cpu")) == "torch"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert resolve_backend(torch.device("cuda")) == "torch"
        assert [str(w.message) for w in caught] == [
            "openrlhf_eva.ops: slower path: chunked torch backend on CUDA: triton is not importable "
            "(import of triton halted; None in sys.modules)"], [str(w.message) for w in caught]
        out = logprobs_from_logits(torch.zeros(2, 4), torch.tensor([1, -100]))
        assert torch.allclose(out, torch.tensor([-1.3862944, 0.0]))
        try:
            logprobs_from_logits(torch.zeros(2, 4), torch.tensor([1, 2]), backend="triton")
        except RuntimeError as exc:
            assert "triton" in str(exc)
        else:
            raise AssertionError("backend='triton' without triton must fail")
        print("ok")
        """
    )
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_never_reads_the_repartitioned_weight(backend):
    """What ZeRO-3 does after forward (`param.data = torch.empty(0)`) must not reach backward."""
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(9, 6, generator=g, requires_grad=True)
    weight = torch.nn.Parameter(torch.randn(23, 6, generator=g))
    labels = torch.randint(0, 23, (9,), generator=g)
    with backend_env(backend):
        out = fused_linear_logprobs(hidden, weight, labels, chunk_size=4, backend=backend)
        full = weight.data
        weight.data = torch.empty(0)  # "partitioned"
        (grad_hidden,) = torch.autograd.grad(out.sum(), hidden)
    ref_h = hidden.detach().requires_grad_()
    ref = oracle(ref_h @ full.t(), labels, 1.0, -100)
    ref.sum().backward()
    torch.testing.assert_close(out, ref.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_hidden, ref_h.grad.float(), rtol=1e-5, atol=1e-6)


ZERO3_SCRIPT = """
import os, sys
import torch, torch.nn as nn
import openrlhf_eva  # noqa: F401  (compat: flash_attn stand-in, CPU guards)
import deepspeed
from deepspeed.utils import safe_get_full_grad
from openrlhf_eva.ops import fused_linear_logprobs

deepspeed.init_distributed(dist_backend="gloo")
V, H, N = 37, 16, 12


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(H, H)
        self.lm_head = nn.Linear(H, V, bias=False)

    def forward(self, x, labels=None, fused=False):
        hidden = torch.tanh(self.body(x))
        if labels is None:
            return hidden
        if fused:  # reading self.lm_head.weight inside an engine module's forward gathers it
            return fused_linear_logprobs(hidden, self.lm_head.weight, labels, chunk_size=5)
        return torch.log_softmax(self.lm_head(hidden).float(), -1).gather(-1, labels[:, None])[:, 0]


g = torch.Generator().manual_seed(0)
x, labels = torch.randn(N, H, generator=g), torch.randint(0, V, (N,), generator=g)
upstream = torch.randn(N, generator=g)
config = {
    "train_micro_batch_size_per_gpu": 1,
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "optimizer": {"type": "SGD", "params": {"lr": 0.1}},
    "zero_allow_untested_optimizer": True,
}
results = {}
for fused in (False, True):
    torch.manual_seed(1)
    model = TinyLM()
    engine, *_ = deepspeed.initialize(model=model, config=config, model_parameters=model.parameters())
    assert model.lm_head.weight.numel() == 0, "lm_head must start partitioned"
    out = engine(x, labels, fused)
    engine.backward((out * upstream).sum())
    results[fused] = [out.detach(), safe_get_full_grad(model.lm_head.weight), safe_get_full_grad(model.body.weight)]
    # no_grad use outside any engine module (reference model): GatheredParameters suffices
    with torch.no_grad():
        hidden = engine(x)
        with deepspeed.zero.GatheredParameters([model.lm_head.weight]):
            results[fused].append(fused_linear_logprobs(hidden, model.lm_head.weight, labels))
for name, a, b in zip(["out", "d_lm_head", "d_body", "no_grad_out"], results[False], results[True]):
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
print("zero3 ok")
"""


@pytest.mark.slow
def test_fused_linear_logprobs_under_real_deepspeed_zero3(tmp_path):
    """ZeRO-3 on gloo (one CPU rank; the lm_head is genuinely partitioned): same values and grads."""
    import socket
    import subprocess
    import sys

    pytest.importorskip("deepspeed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = tmp_path / "zero3.py"
    script.write_text(ZERO3_SCRIPT)
    env = dict(os.environ, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and "zero3 ok" in proc.stdout, (proc.stdout + proc.stderr)[-3000:]


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.parametrize("dtype", ["bf16", "fp32", "fp64"])
def test_kernels_compile_for_h100_without_a_gpu(dtype, monkeypatch):
    """Ahead-of-time compile to an sm_90 cubin: catches what the interpreter lets through."""
    from triton import compile as triton_compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from openrlhf_eva.ops import triton_logprobs

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    fwd, bwd = triton_logprobs._kernels()
    acc = "fp64" if dtype == "fp64" else "fp32"
    strides = {"stride_xb": "i64", "stride_xt": "i64", "stride_xv": "i32"}
    fwd_sig = {"x_ptr": f"*{dtype}", "labels_ptr": "*i64", "params_ptr": f"*{acc}", "part_max_ptr": f"*{acc}",
               "part_sum_ptr": f"*{acc}", "T": "i32", "V": "i32", **strides, "ignore_index": "i32",
               "n_splits": "i32"}
    bwd_sig = {"x_ptr": f"*{dtype}", "labels_ptr": "*i64", "params_ptr": f"*{acc}", "max_ptr": f"*{acc}",
               "logsum_ptr": f"*{acc}", "grad_out_ptr": f"*{acc}", "grad_x_ptr": f"*{dtype}", "T": "i32", "V": "i32",
               "col0": "i32", "vocab_full": "i32", **strides, "stride_gb": "i64", "stride_gt": "i64",
               "ignore_index": "i32", "n_splits": "i32"}
    constexprs = ("BLOCK_V", "VOCAB_CONTIGUOUS", "SOFTCAP")
    for kernel, sig in ((fwd, fwd_sig), (bwd, bwd_sig)):
        for contiguous, softcap in ((True, False), (False, True)):
            for block, warps in (triton_logprobs.AUTOTUNE_CONFIGS[0], triton_logprobs.AUTOTUNE_CONFIGS[-1]):
                src = ASTSource(
                    kernel,
                    {**sig, **dict.fromkeys(constexprs, "constexpr")},
                    constexprs={"BLOCK_V": block, "VOCAB_CONTIGUOUS": contiguous, "SOFTCAP": softcap},
                )
                compiled = triton_compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
                assert compiled.asm["cubin"]


# ------------------------------------------------------------------------------------------
# GPU only (skipped on CPU): compiled kernels, int64 addressing

CUDA_TRITON = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and triton")


@CUDA_TRITON
def test_cuda_row_offsets_past_2_pow_31():
    """16,800 x 128,256 bf16 logits: the last rows start past element 2**31."""
    N, V = 16_800, 128_256
    assert (N - 1) * V > 2**31
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, N, V, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, V, (1, N), device="cuda", generator=g)
    out = logprobs_from_logits(x, labels, temperature=0.9, backend="triton")
    out.backward(torch.ones_like(out))
    tail = slice(N - 4, N)
    ref_in = x.detach()[:, tail].double().requires_grad_()
    ref = oracle(ref_in, labels[:, tail], 0.9, -100)
    ref.sum().backward()
    torch.testing.assert_close(out[:, tail].double(), ref, rtol=0, atol=2e-5)
    torch.testing.assert_close(x.grad[:, tail].double(), ref_in.grad, rtol=2**-7, atol=1e-6)


@CUDA_TRITON
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cuda_triton_matches_torch_backend(dtype):
    g = torch.Generator(device="cuda").manual_seed(1)
    N, H, V = 3000, 512, 32_003
    h = torch.randn(N, H, device="cuda", generator=g).to(dtype)
    w = (torch.randn(V, H, device="cuda", generator=g) / H**0.5).to(dtype)
    labels = torch.randint(0, V, (N,), device="cuda", generator=g)
    labels[::7] = -100
    upstream = torch.randn(N, device="cuda", generator=g)
    results = {}
    for backend in ("torch", "triton"):
        hl, wl = h.clone().requires_grad_(), w.clone().requires_grad_()
        fused = fused_linear_logprobs(hl, wl, labels, temperature=0.8, backend=backend, chunk_size=1024)
        xl = (h @ w.t()).detach().requires_grad_()
        plain = logprobs_from_logits(xl, labels, temperature=0.8, backend=backend)
        ((fused + plain) * upstream).sum().backward()
        results[backend] = [fused, plain, hl.grad, wl.grad, xl.grad]
    rtol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}[dtype]
    for a, b in zip(results["torch"], results["triton"]):
        torch.testing.assert_close(b.float(), a.float(), rtol=rtol, atol=rtol * a.float().abs().max().item())


@CUDA_TRITON
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [37, 3000])  # few rows: the vocabulary is split over programs
def test_cuda_fused_softcap_slices_and_splits_match_fp64(dtype, rows):
    """Gemma-style soft cap, a V not divisible by 16, vocabulary slices in backward, ignored rows,
    on the last GPU (the device guard), and no slower-path warning on the way."""
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    g = torch.Generator(device=device).manual_seed(3)
    H, V = 256, 50_257
    h = torch.randn(rows, H, device=device, generator=g).to(dtype)
    w = (torch.randn(V, H, device=device, generator=g) * 4 / H**0.5).to(dtype)
    labels = torch.randint(0, V, (rows,), device=device, generator=g)
    labels[::5] = -100
    upstream = torch.randn(rows, device=device, generator=g)
    hl, wl = h.clone().requires_grad_(), w.clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="openrlhf_eva.ops: slower path")
        out = fused_linear_logprobs(hl, wl, labels, temperature=0.9, logit_scale=1.3, softcap=5.0,
                                    backend="triton", vocab_chunk_size=8192)
        (out * upstream).sum().backward()
    refs = [t.detach().double().requires_grad_() for t in (h, w)]
    raw = refs[0] @ refs[1].t() * 1.3
    ref = oracle(5.0 * torch.tanh(raw / 5.0), labels, 0.9, -100)
    (ref * upstream.double()).sum().backward()
    eps = {torch.bfloat16: 2**-7, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=8 * eps * (raw.abs().max().item() + 1))
    for leaf, r in zip((hl, wl), refs):
        scale = r.grad.abs().max().item()
        torch.testing.assert_close(leaf.grad.double(), r.grad, rtol=0, atol=8 * eps * scale)
