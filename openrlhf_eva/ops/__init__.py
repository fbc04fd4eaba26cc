"""Fused per-token log-prob ops for DPO (and any policy-gradient loss on token log-probs).

API
    logprobs_from_logits(logits, labels, *, temperature=1.0, ignore_index=-100, backend=None)
        Drop-in for OpenRLHF's `log_probs_from_logits`: never builds an fp32 [N, V] copy and
        never writes to `logits`.
    fused_linear_logprobs(hidden, weight, labels, *, bias=None, temperature=1.0, logit_scale=1.0,
                          softcap=None, ignore_index=-100, backend=None, chunk_size=None,
                          vocab_chunk_size=None)
        lm_head matmul + log-probs in token chunks (cuBLAS GEMM + Triton gather); the full
        [N, V] logits never exist, backward recomputes [rows, cols] tiles, vocabulary slices
        outermost (dW costs its own [V, H] plus a small fp32 buffer). logit_scale and softcap
        (c * tanh(z / c)) reproduce Cohere/Granite and Gemma-2/3 logits. A torch.library
        custom op (openrlhf_eva::fused_linear_logprobs), so torch.compile keeps one graph.
    log_probs_from_logits(logits, labels, temperature=1.0)
        Exactly OpenRLHF's call signature, for `swap_openrlhf_log_probs()`.

    Both return fp32 per-token values of labels.shape (fp64 for fp64 inputs); positions with
    label == ignore_index give 0.0 and zero gradient. Backward takes any per-token upstream
    gradient (DPO sums per sequence) and returns gradients in the input dtype.

Backends (`backend=` or env OPENRLHF_EVA_LOGPROBS_BACKEND = auto | torch | triton)
    auto: Triton for fp16/bf16/fp32 CUDA tensors when triton imports; Triton's interpreter
          for CPU tensors when TRITON_INTERPRET=1; otherwise (fp64 included) the pure-torch
          chunked path, which runs on any device and dtype. On CUDA the torch path, and a
          GEMM without fp32 output (addmm out_dtype), each warn once with the reason.
    Triton is imported lazily, so this package imports without it.

Integration notes (for the `--eva.fused_logprobs` wiring)
    * Cheapest swap: `with swap_openrlhf_log_probs(): ...` patches
      `openrlhf.models.actor.log_probs_from_logits`. Actor.forward still does
      `logits.to(torch.float32)` and `div_(temperature)` before calling it, so the big win
      needs Actor.forward to skip that cast and pass `temperature=` instead.
    * Fused path: run the backbone without lm_head (`model.model(...)` -> hidden states), then
      `fused_linear_logprobs(hidden, lm_head.weight, rolled_labels, temperature=T)`.
    * ZeRO-3: the weight passed in must be the gathered one, and autograd must be able to
      hand its gradient to a gathered Parameter. Both hold when the call happens inside the
      forward of a module that the DeepSpeed engine wraps. OpenRLHF's strategy wraps the HF
      model, not the Actor, so Actor.forward is *not* such a place: fused_actor runs the op as
      lm_head's own forward (its module hooks gather the weight). In a module of one's own:
          logp = fused_linear_logprobs(hidden, self.model.lm_head.weight, labels, temperature=T)
      Reading `lm_head.weight` there makes DeepSpeed gather it (ZeROOrderedDict registers it as
      an external parameter of the running module) and gather it again for backward, so the
      gradient lands on a full-shape Parameter. Pass the Parameter itself, not `.data`.
      The op keeps `weight.detach()`, an alias of the storage gathered at forward, and
      its backward recomputes from that alias: it never reads the Parameter, whatever
      DeepSpeed did to `.data` in between (cost: the V x H weight stays alive until backward).
      `deepspeed.zero.GatheredParameters([w])` around a call *outside* any engine module is
      only enough under no_grad (reference model): after the context exits, the Parameter is
      partitioned again and autograd cannot accumulate a [V, H] gradient into it.
      Both patterns are exercised with real DeepSpeed ZeRO-3 (gloo, CPU) in tests/ops.
"""

from .logprobs import (
    BACKEND_ENV,
    fused_linear_logprobs,
    log_probs_from_logits,
    logprobs_from_logits,
    resolve_backend,
    swap_openrlhf_log_probs,
    triton_available,
)

__all__ = [
    "BACKEND_ENV",
    "fused_linear_logprobs",
    "log_probs_from_logits",
    "logprobs_from_logits",
    "resolve_backend",
    "swap_openrlhf_log_probs",
    "triton_available",
]
