"""`--eva.fused_logprobs`: OpenRLHF's `Actor.forward` with the lm_head fused into the log-prob gather.

Upstream's forward materialises [B, T, V] logits, casts them to fp32 (a second, fp32 copy) and
gathers. Here the backbone returns hidden states and `openrlhf_eva.ops.fused_linear_logprobs`
computes each token's log-prob in chunks, so no [B, T, V] tensor exists in forward or backward.

Exact or refused, per model family: the fused path runs only for the families whose
`*ForCausalLM.forward` (transformers 5.15) is read below, with their logit post-processing
(Gemma-2/3 final-logit soft-capping, Cohere's logit_scale, Granite's logits_scaling) done inside
the op. Everything else (unknown families, packed samples, ring attention, entropy, logits asked
for, VLMs, an lm_head carrying LoRA) goes to upstream's forward unchanged. Each Actor prints one
line per path it takes, with the reason. LoRA (peft) models run their LoRA-injected backbone.
MoE models add the router's load-balancing loss as upstream's forward does.
OpenRLHF's strategy wraps the HF model (not the Actor) in the DeepSpeed engine; the fused op runs
as lm_head's forward, so that ZeRO-3 gathers lm_head's weight for it in forward and again in
backward (see openrlhf_eva/ops/__init__.py).
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from deepspeed import DeepSpeedEngine
from openrlhf.models.actor import Actor
from peft import PeftModel
from transformers.modeling_outputs import MoeCausalLMOutputWithPast

from openrlhf_eva.ops import fused_linear_logprobs

upstream_forward = Actor.forward

# model_type -> what its *ForCausalLM.forward does to lm_head's output (transformers 5.15):
# nothing, c * tanh(x / c) with c = config.final_logit_softcapping, x * config.logit_scale, or
# x / config.logits_scaling. A family joins this table only after its forward has been read.
PLAIN_LOGITS = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3", "gemma",
                "olmo2", "starcoder2"}
SOFTCAPPED_LOGITS = {"gemma2", "gemma3_text"}
MULTIPLIED_LOGITS = {"cohere", "cohere2"}
DIVIDED_LOGITS = {"granite", "granitemoe", "granitemoeshared"}


def model_plan(model: torch.nn.Module):
    """(causal_lm, backbone, lm_head, (logit_scale, softcap)) for the fused path, or the reason
    (a string) why this model goes to upstream's forward. A peft model is planned on the
    *ForCausalLM inside it, whose layers carry the adapters."""
    model = model.module if isinstance(model, DeepSpeedEngine) else model  # strategy.prepare swaps it in
    causal = model.get_base_model() if isinstance(model, PeftModel) else model
    config = getattr(causal, "config", None)
    kind = getattr(config, "model_type", None)
    if kind in PLAIN_LOGITS:
        post = 1.0, None
    elif kind in SOFTCAPPED_LOGITS:
        post = 1.0, config.final_logit_softcapping
    elif kind in MULTIPLIED_LOGITS:
        post = float(config.logit_scale), None
    elif kind in DIVIDED_LOGITS:
        post = 1.0 / float(config.logits_scaling), None
    else:
        return f"model type {kind!r} is not among the families read"
    head = causal.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        # peft's lora.Linear (or a modules_to_save wrapper): lm_head's output is not x @ W^T.
        return f"lm_head is a {type(head).__module__}.{type(head).__name__}, not a plain torch Linear"
    backbone = causal.base_model
    if backbone is causal:
        return f"{type(causal).__name__} has no separate backbone"
    if getattr(config, "output_router_logits", False) and not hasattr(sys.modules[type(causal).__module__],
                                                                      "load_balancing_loss_func"):
        return "its router loss function was not found"
    if getattr(config, "output_router_logits", False) and not hasattr(causal, "num_experts_per_tok"):
        return "its expert counts were not found"
    return causal, backbone, head, post


def _call_reason(actor: Actor, kwargs: dict) -> str | None:
    """Why this particular call needs upstream's forward (None: it does not)."""
    if actor.packing_samples:
        return "packed samples"
    if getattr(actor, "is_vlm", False) or kwargs.get("mm_inputs"):
        return "a vision-language model"
    if kwargs.get("return_entropy"):
        return "entropy asked for (needs the logits)"
    if kwargs.get("allgather_logits"):
        return "logits asked for"
    if not (kwargs.get("return_logprobs") or kwargs.get("action_mask") is not None):
        return "no log-probs asked for"
    return None


def _say_once(actor: Actor, line: str) -> None:
    said = actor.__dict__.setdefault("_eva_fused_said", set())
    if line not in said:
        said.add(line)
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(f"[openrlhf_eva] --eva.fused_logprobs: {line}", flush=True)


def fused_forward(
    self: Actor,
    sequences: torch.LongTensor,
    action_mask=None,
    attention_mask=None,
    return_output=False,
    allgather_logits=False,
    return_logprobs=False,
    ring_attn_group=None,
    packed_seq_lens=None,
    return_entropy=False,
    **mm_inputs,
):
    """Same contract as upstream `Actor.forward`; `output` carries no logits on the fused path."""
    kwargs = dict(action_mask=action_mask, return_logprobs=return_logprobs, return_entropy=return_entropy,
                  allgather_logits=allgather_logits, mm_inputs=mm_inputs)
    plan = model_plan(self.model)
    model = self.model.module if isinstance(self.model, DeepSpeedEngine) else self.model
    peft = isinstance(model, PeftModel)
    name = type(model.get_base_model() if peft else model).__name__ + (" (peft)" if peft else "")
    reason = plan if isinstance(plan, str) else _call_reason(self, kwargs)
    if reason is not None:
        _say_once(self, f"{name} -> upstream Actor.forward ({reason})")
        return upstream_forward(self, sequences, action_mask, attention_mask, return_output, allgather_logits,
                                return_logprobs, ring_attn_group, packed_seq_lens, return_entropy, **mm_inputs)
    causal, backbone, head, (logit_scale, softcap) = plan
    _say_once(self, f"{name} -> fused lm_head + log-probs (logit_scale {logit_scale:g}, softcap {softcap})")

    position_ids = attention_mask.long().cumsum(-1) - 1
    position_ids.masked_fill_(attention_mask == 0, 1)
    routed = bool(getattr(causal.config, "output_router_logits", False))
    extra = {"output_router_logits": True} if routed else {}
    out = backbone(sequences, attention_mask=attention_mask, position_ids=position_ids, **extra)
    hidden = out[0]
    labels = torch.roll(sequences, shifts=-1, dims=1)  # the next token, as upstream's rolled_sequences
    batch, seqlen, width = hidden.shape

    def fused_head(flat_hidden):
        return fused_linear_logprobs(flat_hidden, head.weight, labels.reshape(-1), bias=head.bias,
                                     temperature=self.temperature, logit_scale=logit_scale, softcap=softcap)

    # Through lm_head's own __call__, so that under ZeRO-3 DeepSpeed's module hooks gather its
    # weight for this forward and again for its backward (the op keeps the gathered storage, see
    # openrlhf_eva/ops); elsewhere the hooks are absent and this is a plain call.
    previous = head.__dict__.get("forward")
    head.forward = fused_head
    try:
        log_probs = head(hidden.reshape(-1, width)).view(batch, seqlen)[:, :-1]
    finally:
        if previous is None:
            del head.forward
        else:
            head.forward = previous

    output = MoeCausalLMOutputWithPast()
    if routed:  # what the MoE *ForCausalLM.forward returns as aux_loss (upstream's trainers read it)
        balance = sys.modules[type(causal).__module__].load_balancing_loss_func
        output["aux_loss"] = balance(out.router_logits, causal.num_experts, causal.num_experts_per_tok, attention_mask)
    if action_mask is None:
        return (log_probs, output) if return_output else log_probs
    action_log_probs = log_probs[:, -action_mask.shape[1] :] * action_mask.float()
    return (action_log_probs, output) if return_output else action_log_probs
