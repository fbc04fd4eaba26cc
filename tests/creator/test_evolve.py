import random
import textwrap
from collections import Counter

import pytest

from openrlhf_eva.creator import (
    EVOLVE_METHODS,
    Child,
    EvolInstructEvolver,
    Parent,
    PluginError,
    TaskEvolveError,
    TaskEvolver,
    UnknownNameError,
    apply_filters,
    build_evolver,
    parse_output,
    register_filter,
)
from openrlhf_eva.creator.evolve.evol_instruct import CREATOR_FRAME, IN_BREADTH, IN_DEPTH, build_meta_prompt

ARITHMETIC_TASK = """
    import random

    calls = []

    def evolve(prompt, label, rng: random.Random):
        calls.append(prompt)
        if prompt == "bad":
            raise RuntimeError("cannot parse " + prompt)
        if prompt == "stuck":
            return [{"prompt": "  STUCK "}]  # always the parent itself, up to case and whitespace
        if prompt == "odd":
            return "not a list"
        a, b = (int(x) for x in prompt.removeprefix("add ").split("+"))
        a += rng.randint(0, 3)  # sometimes 0: the child equals the parent and must be dropped
        return [{"prompt": f"add {a}+{b}", "label": a + b, "method": "grow", "metadata": {"a": a}}]
"""


@pytest.fixture
def task_file(tmp_path):
    path = tmp_path / "arith_task.py"
    path.write_text(textwrap.dedent(ARITHMETIC_TASK))
    return path


def test_task_evolver_gathers_distinct_labelled_children(task_file):
    evolver = build_evolver("task", path=str(task_file))
    parents = [Parent(id=7, prompt="add 1+2", label=3, depth=2), Parent(id=None, prompt="add 10+5", label=15)]
    children = evolver.evolve(parents, n=3, rng=random.Random(0))
    assert len(children) == 6
    for child in children:
        parent = parents[child.parent_index]
        a, b = (int(x) for x in child.prompt.removeprefix("add ").split("+"))
        assert child.label == a + b and child.metadata == {"a": a} and child.method == "grow"
        assert child.prompt != parent.prompt
        assert (child.parent_id, child.depth) == (parent.id, parent.depth + 1)
    assert len({(c.parent_index, c.prompt) for c in children}) == 6
    again = TaskEvolver(task_file).evolve(parents, n=3, rng=random.Random(0))
    assert [c.prompt for c in again] == [c.prompt for c in children]  # same rng seed, same children


def test_task_evolver_budget_and_counted_failures(task_file):
    evolver = TaskEvolver(task_file, max_calls_per_child=4)
    calls = evolver.fn.__globals__["calls"]
    parents = [Parent(id=1, prompt="stuck"), Parent(id=2, prompt="bad"), Parent(id=3, prompt="add 1+1")]
    children = evolver.evolve(parents, n=2, rng=random.Random(1))
    assert Counter(calls)["stuck"] == 8 and Counter(calls)["bad"] == 8  # budget: 4 calls x 2 children
    assert [c.parent_index for c in children] == [2, 2]
    assert evolver.stats["errors"] == 8 and evolver.stats["repeats"] >= 8
    assert str(task_file) in evolver.last_error and "RuntimeError: cannot parse bad" in evolver.last_error


def test_task_evolver_raises_when_every_call_fails(task_file):
    evolver = TaskEvolver(task_file)
    with pytest.raises(TaskEvolveError, match=r"every call .* failed; first: .*arith_task.py.*cannot parse bad"):
        evolver.evolve([Parent(id=1, prompt="bad")], n=1, rng=random.Random(0))
    with pytest.raises(TaskEvolveError, match="TypeError: evolve must return a list of dicts"):
        evolver.evolve([Parent(id=1, prompt="odd")], n=1, rng=random.Random(0))
    assert evolver.evolve([], n=3, rng=random.Random(0)) == []


def test_task_evolver_file_errors(tmp_path):
    with pytest.raises(PluginError, match="missing_task.py does not exist"):
        TaskEvolver(tmp_path / "missing_task.py")
    no_function = tmp_path / "no_function.py"
    no_function.write_text("evolve = 3\n")
    with pytest.raises(TaskEvolveError, match=r"no_function.py defines no function evolve"):
        TaskEvolver(no_function)
    broken = tmp_path / "broken_task.py"
    broken.write_text("import not_a_real_module_xyz\n")
    with pytest.raises(PluginError, match="broken_task.py failed to import: ModuleNotFoundError"):
        TaskEvolver(broken)


def test_build_evolver_unknown_name():
    with pytest.raises(UnknownNameError, match="unknown evolver 'evol_magic'; available: distilabel, evol_complexity, evol_instruct, "
                       "evol_quality, replay, self_instruct, task, tree_bon"):
        build_evolver("evol_magic")


class ScriptedLLM:
    """A generate() that records its calls and answers from a script, cycling."""

    def __init__(self, replies):
        self.replies, self.calls = replies, []

    def __call__(self, prompts):
        self.calls.append(prompts)
        return [self.replies[i % len(self.replies)] for i in range(len(prompts))]


def test_evol_instruct_batches_parses_and_counts():
    llm = ScriptedLLM([
        'Rewritten prompt: "Explain entropy to a chef."',
        "```\nWrite a haiku about rust.\n```",
        "",
        "   \n ",
        "Here is the new prompt:\nPlan a 3-day trip to Oslo on a student budget.",
        "**New Prompt:** Compare B-trees and LSM-trees.",
    ])
    evolver = build_evolver("evol_instruct", generate=llm)
    parents = [Parent(id=4, prompt="What is entropy?", depth=1), Parent(id=None, prompt="Write a poem.")]
    children = evolver.evolve(parents, n=3, rng=random.Random(0))
    assert len(llm.calls) == 1 and len(llm.calls[0]) == 6  # one batched call for every meta-prompt
    assert [c.prompt for c in children] == [
        "Explain entropy to a chef.",
        "Write a haiku about rust.",
        "Plan a 3-day trip to Oslo on a student budget.",
        "Compare B-trees and LSM-trees.",
    ]
    assert evolver.stats["unparsable"] == 2 and evolver.stats["children"] == 4
    lineage = [(c.parent_index, c.parent_id, c.depth) for c in children]
    assert lineage == [(0, 4, 2), (0, 4, 2), (1, None, 1), (1, None, 1)]
    assert all(c.label is None and c.method in EVOLVE_METHODS for c in children)
    assert "What is entropy?" in llm.calls[0][0] and "Write a poem." in llm.calls[0][5]


def test_evol_instruct_methods_are_uniform_over_the_subset():
    llm = ScriptedLLM(["A new prompt."])
    evolver = EvolInstructEvolver(llm, methods=["constraints", "persona"])
    children = evolver.evolve([Parent(id=1, prompt="p")], n=400, rng=random.Random(3))
    counts = Counter(child.method for child in children)
    assert set(counts) == {"constraints", "persona"} and 160 < counts["persona"] < 240
    depth_prompts = [p for p, c in zip(llm.calls[0], children) if c.method == "constraints"]
    assert all(IN_DEPTH["constraints"] in prompt for prompt in depth_prompts)


def test_evol_instruct_errors():
    with pytest.raises(ValueError, match=r"unknown evolve methods \['harder'\]"):
        EvolInstructEvolver(ScriptedLLM(["x"]), methods=["constraints", "harder"])
    with pytest.raises(ValueError, match="non-empty subset"):
        EvolInstructEvolver(ScriptedLLM(["x"]), methods=[])
    short = EvolInstructEvolver(lambda prompts: prompts[:-1])
    with pytest.raises(ValueError, match="generate returned 1 outputs for 2 meta-prompts"):
        short.evolve([Parent(id=1, prompt="p")], n=2, rng=random.Random(0))
    assert short.evolve([Parent(id=1, prompt="p")], n=0, rng=random.Random(0)) == []


def test_meta_prompts_cover_ten_methods_and_two_frames():
    assert len(EVOLVE_METHODS) == 10 and set(EVOLVE_METHODS) == set(IN_DEPTH) | set(IN_BREADTH)
    assert set(IN_DEPTH) == {"constraints", "deepening", "concretizing", "reasoning", "expansion"}
    assert set(IN_BREADTH) == {"persona", "shift_in", "shift_out", "mix", "abstract"}
    table_prompt = "Sum the column:\n| a |\n|---|\n| 1 |"
    for method in EVOLVE_METHODS:
        meta = build_meta_prompt(method, table_prompt)
        assert table_prompt in meta and "{" not in meta.replace(table_prompt, "")
        is_creator = meta.startswith(CREATOR_FRAME[:60])
        assert is_creator == (method in IN_BREADTH)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  plain prompt \n", "plain prompt"),
        ('"Quoted prompt"', "Quoted prompt"),
        ("\u201cCurly quoted\u201d", "Curly quoted"),
        ('"a" or "b"?', '"a" or "b"?'),  # quotes inside: not a wrapping pair
        ("Rewritten Prompt: Do X.", "Do X."),
        ("## Prompt:\nDo Y.", "Do Y."),
        ("**Rewritten prompt:**\n\n'Do Z.'", "Do Z."),
        ("```text\nFenced\nover lines\n```", "Fenced\nover lines"),
        ("Sure! Here's the rewritten version: Do W.", "Do W."),
        ("Here is my code:\n```py\nx=1\n```\nWhy?", "Here is my code:\n```py\nx=1\n```\nWhy?"),
        ("<<<\nDelimited\n>>>", "Delimited"),
        ("Prompt:", ""),
        ('""', ""),
        ("```\n\n```", ""),
    ],
)
def test_parse_output(raw, expected):
    assert parse_output(raw) == expected


def child(prompt, parent_index=0):
    return Child(prompt=prompt, parent_index=parent_index, parent_id=None, depth=1, method="mix")


def test_apply_filters_reasons_and_counts():
    parents = [Parent(id=None, prompt="Tell me a joke."), Parent(id=3, prompt="Sort a list.")]
    children = [
        child("  "),
        child("tell  me a JOKE."),
        child("Sort a list in place.", 1),
        child("sort a list  in place.", 0),
        child("Known prompt", 1),
        child("A fresh prompt", 1),
    ]
    kept, rejected, counts = apply_filters(children, parents, existing=["known PROMPT"])
    assert [c.prompt for c in kept] == ["Sort a list in place.", "A fresh prompt"]
    assert [reason for _, reason in rejected] == [
        "empty: empty prompt",
        "unchanged: same as its parent",
        "duplicate: duplicate prompt",
        "duplicate: duplicate prompt",
    ]
    assert counts == {"empty": 1, "unchanged": 1, "duplicate": 2}


def test_apply_filters_custom_and_unknown():
    @register_filter("test_too_long", override=True)
    def too_long(c, parent, seen):
        return f"{len(c.prompt)} chars" if len(c.prompt) > 2 * len(parent.prompt) else None

    parents = [Parent(id=1, prompt="abc")]
    kept, rejected, counts = apply_filters([child("abcdefg"), child("abcd")], parents, names=["test_too_long"])
    assert [c.prompt for c in kept] == ["abcd"] and rejected[0][1] == "test_too_long: 7 chars"
    assert counts == {"test_too_long": 1}
    with pytest.raises(UnknownNameError, match="unknown filter 'toxic'; available: answer, contamination, "
                       "duplicate, echo, empty"):
        apply_filters([], parents, names=["toxic"])
