"""The chosen-response rewriter on a scripted generate: used where usable, the original kept (with a
reason) where not."""

import pytest

from openrlhf_eva.solve.rewriter import clean_rewrite, rewrite_chosen


def test_rewrites_are_used_only_where_usable():
    originals = ["Paris is the capital of France.", "Use a for loop over the list and add each item.",
                 "Water boils at 100 C at sea level.", "It is 4.", "Mitochondria make ATP for the cell.",
                 "Sort, then take the middle element."]
    replies = [
        "Improved answer: Paris is the capital and largest city of France.",
        "",  # the backend failed
        "I'm sorry, but I cannot improve this.",
        "It is 4. " + "Really, truly, absolutely four. " * 5,  # far too long
        "ATP.",  # far too short
        "<<<\nSort,  then take the middle   element.\n>>>",  # the same text
    ]
    sent = []

    def generate(prompts):
        sent.extend(prompts)
        return replies

    prompts = ["capital of France?", "sum a list", "boiling point?", "2+2?", "mitochondria?", "median?"]
    result = rewrite_chosen(generate, prompts, originals)
    assert result.texts[0] == "Paris is the capital and largest city of France."
    assert result.texts[1:] == originals[1:]
    assert result.rewritten == [True, False, False, False, False, False]
    assert result.reasons == [None, "empty", "refusal", "too_long", "too_short", "unchanged"]
    assert result.counts == {"rewritten": 1, "kept_empty": 1, "kept_refusal": 1, "kept_too_long": 1,
                             "kept_too_short": 1, "kept_unchanged": 1}
    assert len(sent) == 6 and "capital of France?" in sent[0] and originals[0] in sent[0]
    assert "similar length" not in sent[0] and "same length" in sent[0]


def test_edge_cases():
    assert rewrite_chosen(lambda prompts: [], [], []).texts == []
    with pytest.raises(ValueError, match="2 prompts but 1 chosen"):
        rewrite_chosen(lambda prompts: prompts, ["a", "b"], ["x"])
    with pytest.raises(ValueError, match="returned 0 rewrites for 1"):
        rewrite_chosen(lambda prompts: [], ["a"], ["x"])
    assert rewrite_chosen(lambda prompts: [None], ["a"], ["x y"]).reasons == ["empty"]
    assert clean_rewrite("  **Rewritten response:** better text ") == "better text"
