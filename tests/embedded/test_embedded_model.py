"""Char-level tokenizer, tiny Llama, and a generate -> reward_func -> evolve smoke test."""

import importlib.util
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import openrlhf_eva.embedded
from openrlhf_eva.embedded import vocab
from openrlhf_eva.embedded.data import make_seeds, make_test_set
from openrlhf_eva.embedded.model import MODEL_CONFIG, build_model, build_tiny, build_tokenizer
from openrlhf_eva.embedded.tasks import solve

PACKAGE_DIR = Path(openrlhf_eva.embedded.__file__).parent


def _load_by_path(name):
    spec = importlib.util.spec_from_file_location(name, PACKAGE_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny"), seed=42)


def test_special_tokens_are_single_ids(tokenizer):
    for index, token in enumerate(vocab.SPECIAL_TOKENS):
        assert tokenizer.convert_tokens_to_ids(token) == index
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [index]
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == ("<pad>", "<s>", "</s>")
    assert len(tokenizer) == len(vocab.SPECIAL_TOKENS) + len(vocab.ALPHABET)
    assert build_tokenizer().get_vocab() == tokenizer.get_vocab()
    assert [tokenizer.convert_tokens_to_ids(char) for char in " +0"] == [7, 8, 9]


def test_round_trip_one_id_per_char(tokenizer):
    chat = f"{vocab.USER}sort 31{vocab.ASSISTANT}13{vocab.EOS}"
    for text in ["rev 4721", "add 12345678+87654321", "copy 0", " a  b+ ", chat]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids, skip_special_tokens=False) == text
    assert len(tokenizer("add 12+345", add_special_tokens=False)["input_ids"]) == len("add 12+345")
    # Nothing is added either way, so OpenRLHF's add_special_tokens=False is not load-bearing.
    assert tokenizer("rev 12")["input_ids"] == tokenizer("rev 12", add_special_tokens=False)["input_ids"]
    assert tokenizer("A?", add_special_tokens=False)["input_ids"] == [3, 3]  # <unk>


def test_chat_template_matches_openrlhf_datasets(tokenizer):
    user = [{"role": "user", "content": "rev 12"}]
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|user|>rev 12<|assistant|>"
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": "21"}], tokenize=False)
    assert full == "<|user|>rev 12<|assistant|>21</s>"

    # What openrlhf/datasets/sft_dataset.py does: response = full[len(prompt):], then it appends
    # " </s>" only if prompt + response does not already end with eos.
    response = full[len(prompt) :]
    assert full.startswith(prompt) and response == "21</s>"
    assert (prompt + response).endswith(tokenizer.eos_token)
    prompt_len = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    ids = tokenizer(prompt + response, add_special_tokens=False)["input_ids"]
    assert ids[prompt_len:] == tokenizer("21", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    system = tokenizer.apply_chat_template([{"role": "system", "content": "x"}] + user, tokenize=False)
    assert system == "<|system|>x<|user|>rev 12"


def test_param_count_and_config(tokenizer):
    model = build_model(tokenizer, seed=0)
    hidden, inner = MODEL_CONFIG["hidden_size"], MODEL_CONFIG["intermediate_size"]
    layers = MODEL_CONFIG["num_hidden_layers"]
    per_layer = 4 * hidden * hidden + 3 * hidden * inner + 2 * hidden
    expected = layers * per_layer + 2 * len(tokenizer) * hidden + hidden
    assert sum(p.numel() for p in model.parameters()) == expected == 864_640
    config = model.config
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 1, 2)
    assert config.vocab_size == len(tokenizer)


def test_build_is_deterministic(tokenizer):
    state = torch.get_rng_state()
    first = build_model(tokenizer, seed=42).state_dict()
    second = build_model(tokenizer, seed=42).state_dict()
    other = build_model(tokenizer, seed=43).state_dict()
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not torch.equal(first["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def test_build_tiny_round_trip_generate_reward_evolve(tiny_dir, tokenizer):
    loaded_tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    reference = build_model(tokenizer, seed=42).state_dict()
    assert all(torch.equal(model.state_dict()[name], reference[name]) for name in reference)
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()

    rows = make_test_set()[::60]
    prompts = [
        loaded_tokenizer.apply_chat_template(
            [{"role": "user", "content": row["prompt"]}], tokenize=False, add_generation_prompt=True
        )
        for row in rows
    ]
    loaded_tokenizer.padding_side = "left"
    batch = loaded_tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    with torch.no_grad():
        output = model.generate(**batch, max_new_tokens=12, do_sample=True, top_k=0)
    queries = loaded_tokenizer.batch_decode(output, skip_special_tokens=False)
    assert all(query.replace(vocab.PAD, "").startswith(prompt) for query, prompt in zip(queries, prompts))

    reward_func = _load_by_path("reward_func").reward_func
    out = reward_func(queries, prompts, [row["label"] for row in rows])
    assert out["rewards"].shape == (len(rows),)
    assert ((out["rewards"] >= 0) & (out["rewards"] <= 1)).all()

    # A perfect "response" through the same decode path scores 1.
    perfect = [prompt + row["label"] + vocab.EOS for prompt, row in zip(prompts, rows)]
    perfect = loaded_tokenizer.batch_decode(loaded_tokenizer(perfect, add_special_tokens=False)["input_ids"])
    assert reward_func(perfect, prompts, [row["label"] for row in rows])["rewards"].tolist() == [1.0] * len(rows)

    evolve = _load_by_path("evolve_func").evolve
    rng = random.Random(0)
    for seed_row in make_seeds(n=8):
        for child in evolve(seed_row["prompt"], seed_row["label"], rng):
            assert solve(child["prompt"]) == child["label"]
