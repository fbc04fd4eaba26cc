"""The LLM evolvers on a scripted generate function: meta-prompts, parsing, feedback, multi-parent,
self_instruct lists, tree best-of-N, and the distilabel adapter; malformed replies included."""

import argparse
import random
import re
import textwrap
import warnings
from collections import Counter

import numpy as np
import pytest

from openrlhf_eva.creator import EVOLVERS, Parent, UnknownNameError, build_evolver
from openrlhf_eva.creator.evolve.llm import feedback_block
from openrlhf_eva.creator.evolve.self_instruct import parse_list_output
from openrlhf_eva.creator.evolve.templates import (
    COMPLEXITY_FRAME,
    IN_DEPTH,
    MULTI_PARENT_FRAME,
    QUALITY_FRAME,
    QUALITY_METHODS,
)
from openrlhf_eva.creator.flags import evolver_options
from openrlhf_eva.creator.step import creator_step

LLM_EVOLVERS = ("evol_instruct", "evol_complexity", "evol_quality", "self_instruct", "tree_bon", "distilabel")


class ScriptedLLM:
    """generate(prompts) answering each prompt with reply(prompt, k), k counting every prompt ever sent."""

    def __init__(self, reply):
        self.reply, self.calls, self.sent = reply, [], 0

    def __call__(self, prompts):
        self.calls.append(list(prompts))
        replies = []
        for prompt in prompts:
            replies.append(self.reply(prompt, self.sent))
            self.sent += 1
        return replies


def cycling(*replies):
    return ScriptedLLM(lambda prompt, k: replies[k % len(replies)])


def the_prompt(meta_prompt):
    """The parent text between the first <<< >>> pair of a meta-prompt."""
    return meta_prompt.split("<<<\n", 1)[1].split("\n>>>", 1)[0]


def test_every_llm_evolver_is_registered_and_flagged():
    for name in LLM_EVOLVERS:
        assert EVOLVERS.get(name).uses_llm, name
    assert not EVOLVERS.get("task").uses_llm


@pytest.mark.parametrize("name, frame, methods", [
    ("evol_complexity", COMPLEXITY_FRAME, IN_DEPTH),
    ("evol_quality", QUALITY_FRAME, QUALITY_METHODS),
])
def test_complexity_and_quality_use_their_frame_and_methods(name, frame, methods):
    llm = cycling("Rewritten prompt: A harder one.", "", "```\nAnother one.\n```", None)
    evolver = build_evolver(name, generate=llm)
    parents = [Parent(id=1, prompt="What is a heap?", depth=2), Parent(id=None, prompt="Sort numbers.")]
    children = evolver.evolve(parents, n=4, rng=random.Random(0))
    sent = llm.calls[0]
    assert len(llm.calls) == 1 and len(sent) == 8
    assert all(p.startswith(frame[:50]) for p in sent)
    assert [the_prompt(p) for p in sent] == ["What is a heap?"] * 4 + ["Sort numbers."] * 4
    assert [c.prompt for c in children] == ["A harder one.", "Another one."] * 2
    assert all(c.method in methods and methods[c.method] in sent[0] or c.method in methods for c in children)
    assert [(c.parent_index, c.parent_id, c.depth) for c in children] == [(0, 1, 3)] * 2 + [(1, None, 1)] * 2
    # "" and None replies give no child, are counted and kept with their reason
    assert evolver.stats["unparsable"] == 4 and evolver.stats["children"] == 4
    assert [d["output"] for d in evolver.dropped] == ["", None, "", None]
    assert all(d["reason"].startswith("unparsable:") and d["method"] in methods for d in evolver.dropped)


def test_methods_are_drawn_uniformly_and_checked():
    llm = cycling("x y z")
    evolver = build_evolver("evol_quality", generate=llm, methods=["clarify", "realism"])
    children = evolver.evolve([Parent(id=1, prompt="p")], n=400, rng=random.Random(5))
    counts = Counter(c.method for c in children)
    assert set(counts) == {"clarify", "realism"} and 160 < counts["clarify"] < 240
    for method, prompt in zip((c.method for c in children), llm.calls[0]):
        assert QUALITY_METHODS[method] in prompt
    with pytest.raises(ValueError, match=r"unknown evolve methods \['persona'\]"):
        build_evolver("evol_complexity", generate=llm, methods=["persona"])  # in-breadth: not a complexity move


def test_feedback_block_shows_best_and_worst_scored_answers():
    parent = Parent(id=3, prompt="Explain TCP.", responses=["meh", "great answer", "unscored", "bad", "x" * 2000],
                    rewards=[0.1, 0.9, None, -0.5, float("nan")])
    block = feedback_block(parent, max_chars=50)
    assert "3 answers, scores from -0.5 to 0.9" in block
    assert "best answer (score 0.9):\n<<<\ngreat answer\n>>>" in block
    assert "weakest answer (score -0.5):\n<<<\nbad\n>>>" in block
    assert "unscored" not in block
    long_parent = Parent(id=1, prompt="p", responses=["y" * 2000, "z"], rewards=[1.0, 0.0])
    assert "y" * 50 + " [...]" in feedback_block(long_parent, max_chars=50)
    assert feedback_block(Parent(id=1, prompt="p")) == ""
    assert feedback_block(Parent(id=1, prompt="p", responses=["a"], rewards=[None])) == ""


def test_feedback_goes_into_every_meta_prompt_that_has_rollouts():
    llm = cycling("New prompt.")
    evolver = build_evolver("evol_instruct", generate=llm, feedback=True)
    parents = [Parent(id=1, prompt="A?", responses=["good", "poor"], rewards=[2.0, 1.0]),
               Parent(id=2, prompt="B?")]  # a seed without rollouts: plain meta-prompt
    evolver.evolve(parents, n=2, rng=random.Random(0))
    with_feedback = [p for p in llm.calls[0] if "How the assistant did" in p]
    assert len(with_feedback) == 2 and all(the_prompt(p) == "A?" for p in with_feedback)
    assert all("Its best answer (score 2)" in p and "<<<\npoor\n>>>" in p for p in with_feedback)
    assert evolver.stats["feedback_used"] == 2 and evolver.stats["feedback_missing"] == 2
    plain = build_evolver("evol_instruct", generate=cycling("x"))
    plain.evolve(parents, n=1, rng=random.Random(0))
    assert not any("How the assistant did" in p for p in plain.generate.calls[0])


def test_multi_parent_meta_prompts_show_several_distinct_parents():
    llm = cycling("A prompt drawing on all of them.")
    evolver = build_evolver("evol_complexity", generate=llm, parents_per_call=3)
    parents = [Parent(id=k, prompt=f"parent number {k}") for k in range(5)]
    children = evolver.evolve(parents, n=2, rng=random.Random(1))
    assert len(children) == 10
    for child, meta in zip(children, llm.calls[0]):
        assert meta.startswith(MULTI_PARENT_FRAME[:40])
        shown = [line for line in meta.splitlines() if line.startswith("parent number")]
        assert len(shown) == len(set(shown)) == 3
        assert shown[0] == f"parent number {child.parent_index}"  # the anchor comes first
        assert child.metadata["co_parents"] == shown[1:]
    alone = build_evolver("evol_instruct", generate=cycling("x y"), parents_per_call=3)
    [child] = alone.evolve([Parent(id=1, prompt="only one")], n=1, rng=random.Random(0))
    assert "Prompt 1:" not in alone.generate.calls[0][0] and child.metadata == {}
    with pytest.raises(ValueError, match="parents_per_call must be >= 1"):
        build_evolver("evol_instruct", generate=llm, parents_per_call=0)


@pytest.mark.parametrize("text, items", [
    ("1. Write a poem.\n2. Explain DNS.\n3) Plan a trip.", ["Write a poem.", "Explain DNS.", "Plan a trip."]),
    ("Here are three requests:\n- Do A\n* Do B\n\u2022 Do C", ["Do A", "Do B", "Do C"]),
    ("(1) First one\n(2) \"Second one\"", ["First one", "Second one"]),
    ("Here are the requests:\nAsk one thing\nAsk another thing", ["Ask one thing", "Ask another thing"]),
    ("1. Same\n2. same\n3. Different", ["Same", "Different"]),
    ("1. Explain this:\n   (a continuation line)\n2. Next", ["Explain this:", "Next"]),
    ("", []),
    ("1.\n2. ", []),
])
def test_parse_list_output(text, items):
    assert parse_list_output(text) == items


def test_self_instruct_takes_new_items_and_counts_short_lists():
    def reply(prompt, k):
        if k == 0:
            return "1. Name three rivers.\n2. Copy 12\n3. name three  rivers.\n4. Write a limerick.\n5. Extra."
        if k == 1:
            return "Sorry, I only have one:\n1. Translate hello."
        return 17  # malformed: not text at all

    llm = ScriptedLLM(reply)
    evolver = build_evolver("self_instruct", generate=llm, examples=2)
    parents = [Parent(id=1, prompt="copy 12"), Parent(id=2, prompt="rev 34"), Parent(id=3, prompt="sort 56")]
    children = evolver.evolve(parents, n=2, rng=random.Random(0))
    assert len(llm.calls) == 1 and len(llm.calls[0]) == 3
    first = llm.calls[0][0]
    assert "1. copy 12" in first and "Write 2 new requests" in first and first.count("\n2. ") == 1
    # the example itself ("Copy 12") and the repeat are skipped, the list is cut at n
    assert [(c.parent_index, c.prompt) for c in children] == [(0, "Name three rivers."), (0, "Write a limerick."),
                                                            (1, "Translate hello.")]
    assert all(c.method == "self_instruct" and len(c.metadata["co_parents"]) == 1 for c in children)
    assert evolver.stats["missing_items"] == 3
    assert [d["parent_index"] for d in evolver.dropped] == [1, 2]
    assert evolver.dropped[1]["reason"] == "unparsable: the list had 0 new items of 2"


def test_tree_bon_keeps_the_best_child_of_each_level_and_grows_from_it():
    # Each candidate appends words to its node; candidate k of a call gets k % 3 + 1 extra words,
    # so the longest of three is always the third one: the "length" scorer must pick it.
    def reply(prompt, k):
        return the_prompt(prompt) + " more" * (k % 3 + 1)

    llm = ScriptedLLM(reply)
    evolver = build_evolver("tree_bon", generate=llm, width=3, scorer="length")
    parents = [Parent(id=9, prompt="seed a", depth=1), Parent(id=None, prompt="seed b")]
    children = evolver.evolve(parents, n=2, rng=random.Random(0))
    assert len(llm.calls) == 2 and [len(call) for call in llm.calls] == [6, 6]  # one batched call per level
    assert [(c.parent_index, c.parent_id, c.depth, c.metadata["tree_level"]) for c in children] == [
        (0, 9, 2, 1), (1, None, 1, 1), (0, 9, 3, 2), (1, None, 2, 2)]
    assert children[0].prompt == "seed a more more more"
    assert children[2].prompt == "seed a more more more more more more"
    assert children[2].metadata["tree_score"] == 8.0
    # level 2 grew from the level-1 winners
    assert {the_prompt(p) for p in llm.calls[1]} == {"seed a more more more", "seed b more more more"}
    losers = [d for d in evolver.dropped if d["reason"].startswith("tree_bon:")]
    assert len(losers) == 8 and "lost to 5 at level 1" in losers[0]["reason"]


def test_tree_bon_judge_scorer_and_malformed_judgements():
    def reply(prompt, k):
        if prompt.startswith("Rate the following prompt"):
            text = the_prompt(prompt)
            if "broken" in text:
                return "I think it's fine."  # no scores: ranks last
            return f"Complexity: {4 if 'hard' in text else 2}\nQuality: 3\nTopic: math"
        return ["an easy one", "a hard one", "a broken one"][k % 3]

    llm = ScriptedLLM(reply)
    evolver = build_evolver("tree_bon", generate=llm, width=3, scorer="judge")
    [child] = evolver.evolve([Parent(id=1, prompt="start")], n=1, rng=random.Random(0))
    assert child.prompt == "a hard one" and child.metadata["tree_score"] == 7.0

    unscored = build_evolver("tree_bon", generate=cycling("only this"), width=2,
                             judge_generate=cycling("no numbers here"))
    [child] = unscored.evolve([Parent(id=1, prompt="start")], n=1, rng=random.Random(0))
    assert child.prompt == "only this" and child.metadata["tree_score"] is None
    assert unscored.stats["unscored"] == 1


def test_tree_bon_user_scorers_and_bad_settings(tmp_path):
    scorer_file = tmp_path / "my_scorer.py"
    scorer_file.write_text(textwrap.dedent("""
        def prefer_questions(prompts, nodes):
            return [float(p.endswith("?")) for p in prompts]
    """))
    llm = ScriptedLLM(lambda prompt, k: ["Why is the sky blue?", "Tell me.", "Tell me more."][k % 3])
    evolver = build_evolver("tree_bon", generate=llm, scorer=f"{scorer_file}:prefer_questions")
    [child] = evolver.evolve([Parent(id=1, prompt="p")], n=1, rng=random.Random(0))
    assert child.prompt == "Why is the sky blue?"
    seen = []
    callable_scorer = build_evolver("tree_bon", generate=cycling("a b", "c"), width=2,
                                    scorer=lambda prompts, nodes: seen.append(nodes) or [0.0, 1.0])
    [child] = callable_scorer.evolve([Parent(id=1, prompt="p")], n=1, rng=random.Random(0))
    assert child.prompt == "c" and [n.prompt for n in seen[0]] == ["p", "p"]
    with pytest.raises(ValueError, match="scorer returned 1 scores for 2 candidates"):
        build_evolver("tree_bon", generate=cycling("a", "b"), width=2,
                      scorer=lambda prompts, nodes: [1.0]).evolve([Parent(id=1, prompt="p")], 1, random.Random(0))
    with pytest.raises(ValueError, match="defines no function nope"):
        build_evolver("tree_bon", generate=llm, scorer=f"{scorer_file}:nope")
    with pytest.raises(ValueError, match="base must be an LLM evolver"):
        build_evolver("tree_bon", generate=llm, base="task")
    with pytest.raises(UnknownNameError):
        build_evolver("tree_bon", generate=llm, base="evol_magic")


def test_tree_bon_passes_options_to_its_base_and_stops_a_dead_chain():
    llm = ScriptedLLM(lambda prompt, k: "" if "second" in prompt else "ok then")
    evolver = build_evolver("tree_bon", generate=llm, base="evol_complexity", width=2, scorer="length", feedback=True)
    parents = [Parent(id=1, prompt="first"), Parent(id=2, prompt="second")]
    children = evolver.evolve(parents, n=3, rng=random.Random(0))
    assert all(p.startswith(COMPLEXITY_FRAME[:40]) for p in llm.calls[0])
    assert evolver.base.feedback
    # parent 1's candidates are all empty: its chain ends at level 1; parent 0's equal its node from
    # level 2 on ("ok then" again), which ranks last but still continues the chain
    assert [c.parent_index for c in children] == [0, 0, 0]
    assert [len(call) for call in llm.calls] == [4, 2, 2]
    assert evolver.stats["base_unparsable"] == 2 and evolver.stats["unscored"] == 2
    assert [d["parent_index"] for d in evolver.dropped if d["reason"].startswith("unparsable")] == [1, 1]


def test_evolver_options_from_flags():
    def eva(**values):
        base = dict(evolver="evol_instruct", evolver_options='{"methods": ["mix"]}', evolve_feedback=False,
                    evolve_parents=1)
        return argparse.Namespace(**{**base, **values})

    assert evolver_options(eva()) == {"methods": ["mix"]}
    assert evolver_options(eva(evolve_feedback=True, evolve_parents=2)) == {
        "methods": ["mix"], "feedback": True, "parents_per_call": 2}
    assert evolver_options(eva(evolver="tree_bon", evolve_feedback=True))["feedback"]  # passed on to its base
    with pytest.raises(ValueError, match="'self_instruct' does not take --eva.evolve_feedback"):
        evolver_options(eva(evolver="self_instruct", evolver_options="{}", evolve_feedback=True))
    with pytest.raises(ValueError, match="'task' does not take --eva.evolve_parents"):
        evolver_options(eva(evolver="task", evolver_options="{}", evolve_parents=3))
    with pytest.raises(ValueError, match="expected a JSON object"):
        evolver_options(eva(evolver_options="[1]"))


def test_creator_step_passes_responses_and_reports_dropped_outputs():
    import torch

    llm = ScriptedLLM(lambda prompt, k: "" if k % 2 else f"Evolved prompt {k} about the subject")
    evolver = build_evolver("evol_instruct", generate=llm, feedback=True)
    rows = [{"prompt": f"seed prompt {i}"} for i in range(4)]
    rewards = torch.tensor([[1.0, 0.0], [0.5, 0.5], [2.0, 1.0], [0.0, 3.0]])
    responses = [[f"answer {i}a", f"answer {i}b"] for i in range(4)]
    step = creator_step(rows, rewards, evolver, sample_fraction=0.5, evolutions_per_prompt=2, responses=responses,
                        seed=0)
    assert len(step.dropped) == 2 and step.counts["evolver/unparsable"] == 2
    assert all("How the assistant did" in p for p in llm.calls[0])
    assert step.counts["children/generated"] == 2
    for record in step.dropped:
        assert 0 <= record["parent_index"] < len(step.selected)
    with pytest.raises(ValueError, match="4 prompts but responses for 3"):
        creator_step(rows, rewards, evolver, responses=responses[:3])


# ---- the distilabel adapter ------------------------------------------------------------------

def needs_distilabel():
    with warnings.catch_warnings():  # pydantic warns about distilabel's Field() use on import
        warnings.simplefilter("ignore")
        pytest.importorskip("distilabel")


def distilabel_reply(prompt, k):
    """A scripted LLM for distilabel tasks: the conversation arrives as chat messages."""
    assert isinstance(prompt, list) and prompt[-1]["role"] == "user"
    text = prompt[-1]["content"]
    given = re.search(r"#(?:The )?Given Prompt#:\n(.*?)\n#(?:Rewritten|Created) Prompt#:", text, re.DOTALL)
    if given:  # an in-depth or in-breadth mutation
        return f"#Rewritten Prompt#:\n{given.group(1).strip()} in under 50 words" if k % 4 != 3 else "   "
    return "Write a haiku about rain.\nList three uses of salt.\nWrite a haiku about rain."


def test_distilabel_evol_instruct_runs_on_our_generate():
    needs_distilabel()
    llm = ScriptedLLM(distilabel_reply)
    evolver = build_evolver("distilabel", generate=llm)
    parents = [Parent(id=1, prompt="Explain recursion.", depth=1), Parent(id=None, prompt="Name a prime.")]
    state = np.random.get_state()
    children = evolver.evolve(parents, n=2, rng=random.Random(0))
    assert np.array_equal(np.random.get_state()[1], state[1])  # numpy's global RNG put back
    assert [c.prompt for c in children] == ["Explain recursion. in under 50 words"] * 2 + [
        "Name a prime. in under 50 words"]
    assert [(c.parent_index, c.depth, c.method) for c in children] == [
        (0, 2, "distilabel/EvolInstruct"), (0, 2, "distilabel/EvolInstruct"), (1, 1, "distilabel/EvolInstruct")]
    assert parents[0].prompt == "Explain recursion." and parents[0].metadata == {}  # our objects untouched
    assert evolver.stats["unparsable"] == 1 and evolver.dropped[0]["parent_index"] == 1
    # the same rng seed draws the same mutations
    again = ScriptedLLM(distilabel_reply)
    build_evolver("distilabel", generate=again).evolve(parents, n=2, rng=random.Random(0))
    assert again.calls == llm.calls


def test_distilabel_self_instruct_and_complexity_and_errors():
    needs_distilabel()
    llm = ScriptedLLM(distilabel_reply)
    evolver = build_evolver("distilabel", generate=llm, task="SelfInstruct")
    children = evolver.evolve([Parent(id=1, prompt="Cooking at home.")], n=2, rng=random.Random(0))
    assert [c.prompt for c in children] == ["Write a haiku about rain.", "List three uses of salt."]
    assert "Develop 2 user queries" in llm.calls[0][0][-1]["content"]
    complexity = build_evolver("distilabel", generate=ScriptedLLM(distilabel_reply), task="EvolComplexity")
    [child] = complexity.evolve([Parent(id=1, prompt="Add 2 and 3.")], n=1, rng=random.Random(1))
    assert child.prompt == "Add 2 and 3. in under 50 words" and child.method == "distilabel/EvolComplexity"
    with pytest.raises(ValueError, match="distilabel task 'Nope' not found"):
        build_evolver("distilabel", generate=llm, task="Nope")
    with pytest.raises(ValueError, match="not a known prompt evolver: pass input_column and output_column"):
        build_evolver("distilabel", generate=llm, task="EvolQuality")
    short = build_evolver("distilabel", generate=lambda prompts: ["x"] * (len(prompts) - 1))
    with pytest.raises(ValueError, match="returned 1 outputs for 2 conversations"):
        short.evolve([Parent(id=1, prompt="a"), Parent(id=2, prompt="b")], n=1, rng=random.Random(0))
