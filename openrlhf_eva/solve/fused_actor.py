"""`--eva.fused_logprobs`: OpenRLHF's `Actor.forward` with the lm_head fused into the log-prob gather.

Upstream's forward materialises [B, T, V] logits, casts them to fp32 (a second, fp32 copy) and
gathers. Here the backbone returns hidden states and `openrlhf_eva.ops.fused_linear_logprobs`
computes each token's log-prob in chunks, so no [B, T, V] tensor exists in forward or backward.
Everything the fast path does not cover (packed samples, ring attention, entropy, logits asked
for, VLMs, MoE router losses, LoRA-wrapped models) goes to upstream's forward unchanged.
The call sits inside Actor.forward, the module DeepSpeed wraps, so ZeRO-3 gathers lm_head's
weight for it in forward and again in backward (see openrlhf_eva/ops/__init__.py).
"""

from __future__ import annotations

import torch
from openrlhf.models.actor import Actor
from transformers.modeling_outputs import CausalLMOutputWithPast

from openrlhf_eva.ops import fused_linear_logprobs

upstream_forward = Actor.forward


def _fast_path_applies(actor: Actor, kwargs: dict) -> bool:
    model = actor.model
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return (
        not actor.packing_samples
        and not getattr(actor, "is_vlm", False)
        and not kwargs.get("return_entropy")
        and not kwargs.get("allgather_logits")
        and not kwargs.get("mm_inputs")
        and (kwargs.get("return_logprobs") or kwargs.get("action_mask") is not None)
        and isinstance(head, torch.nn.Linear)
        and getattr(model, "base_model", model) is not model  # a *ForCausalLM around its backbone
        and not getattr(model.config, "output_router_logits", False)
    )


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
    if not _fast_path_applies(self, kwargs):
        return upstream_forward(self, sequences, action_mask, attention_mask, return_output, allgather_logits,
                                return_logprobs, ring_attn_group, packed_seq_lens, return_entropy, **mm_inputs)

    position_ids = attention_mask.long().cumsum(-1) - 1
    position_ids.masked_fill_(attention_mask == 0, 1)
    hidden = self.model.base_model(sequences, attention_mask=attention_mask, position_ids=position_ids)[0]
    head = self.model.get_output_embeddings()
    labels = torch.roll(sequences, shifts=-1, dims=1)  # the next token, as upstream's rolled_sequences
    batch, seqlen, width = hidden.shape
    log_probs = fused_linear_logprobs(
        hidden.reshape(-1, width), head.weight, labels.reshape(-1), bias=head.bias, temperature=self.temperature
    ).view(batch, seqlen)[:, :-1]

    output = CausalLMOutputWithPast()
    if action_mask is None:
        return (log_probs, output) if return_output else log_probs
    action_log_probs = log_probs[:, -action_mask.shape[1] :] * action_mask.float()
    return (action_log_probs, output) if return_output else action_log_probs
