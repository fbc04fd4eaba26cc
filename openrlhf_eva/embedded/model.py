"""A char-level tokenizer and a ~0.87M-parameter Llama for the embedded tasks, built offline.

The tokenizer maps every character of ``vocab.ALPHABET`` to one id and every special token
(``<pad>`` ``<s>`` ``</s>`` ``<unk>`` ``<|system|>`` ``<|user|>`` ``<|assistant|>``) to one id.
It adds nothing on ``add_special_tokens=True`` (OpenRLHF always tokenises with
``add_special_tokens=False`` and lets the chat template place markers), so tokenisation never
depends on that flag. The chat template renders

    <|user|>{prompt}<|assistant|>             (add_generation_prompt=True)
    <|user|>{prompt}<|assistant|>{answer}</s> (with the assistant turn)

so the generation prompt is an exact prefix of the full conversation, and the full conversation
already ends in eos: OpenRLHF's SFT/reward datasets then append nothing (they add ``" </s>"`` only
when the text does not end with eos).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from openrlhf_eva.embedded import vocab

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}<|system|>{{ message['content'] }}"
    "{%- elif message['role'] == 'user' -%}<|user|>{{ message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}<|assistant|>{{ message['content'] }}{{ eos_token }}"
    "{%- else -%}{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)

# Prompt (<= ~26 tokens with markers) + answer (<= 10) + eos fit many times over.
MAX_POSITIONS = 128

# ~0.87M parameters: 4 x (4*128*128 attention + 3*128*384 MLP) + two 45x128 embeddings.
MODEL_CONFIG = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=MAX_POSITIONS,
    tie_word_embeddings=False,
)


def build_tokenizer(alphabet: str = vocab.ALPHABET) -> PreTrainedTokenizerFast:
    """The char-level tokenizer with special tokens and chat template (deterministic, offline).

    ``alphabet``: one id per character, in this order after the specials (a user's task brings its
    own: ``openrlhf_eva.bench --task-dir`` takes every character its data uses)."""
    backend = Tokenizer(models.WordLevel(unk_token=vocab.UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    # Trained on the alphabet itself: every character is seen once, the trainer breaks the ties
    # by character order, so ids are the same on every run (specials 0-6, " "=7, "+"=8, "0"=9, ...).
    trainer = trainers.WordLevelTrainer(special_tokens=list(vocab.SPECIAL_TOKENS), show_progress=False)
    backend.train_from_iterator([alphabet], trainer)
    # Fuse joins decoded tokens with no separator, so decode(encode(text)) == text.
    backend.decoder = decoders.Fuse()

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=vocab.BOS,
        eos_token=vocab.EOS,
        pad_token=vocab.PAD,
        unk_token=vocab.UNK,
        extra_special_tokens=[vocab.SYSTEM, vocab.USER, vocab.ASSISTANT],
        clean_up_tokenization_spaces=False,
        model_max_length=MAX_POSITIONS,
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 42) -> LlamaForCausalLM:
    """A freshly initialised tiny Llama matching ``tokenizer``; same seed, same weights."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **MODEL_CONFIG,
    )
    # fork_rng: seed the init without disturbing the caller's global torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def build_tiny(out_dir: str | Path, seed: int = 42, alphabet: str = vocab.ALPHABET) -> str:
    """Write tokenizer + tiny Llama to ``out_dir`` with ``save_pretrained``; return the path."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(alphabet)
    model = build_model(tokenizer, seed=seed)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)

    # transformers 5 writes its new class name "TokenizersBackend"; the older alias also resolves
    # in 5.x and is the class name transformers 4.x knows.
    config_path = out_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return str(out_dir)
