"""The ``evol_instruct`` evolver: an LLM rewrites each parent with one of ten meta-prompts.

In-depth methods make the prompt harder and share the "rewriter" frame; in-breadth methods make a
different prompt and share the "creator" frame (both written for this project):

    in-depth:   constraints, deepening, concretizing, reasoning, expansion
    in-breadth: persona, shift_in, shift_out, mix, abstract

Each child draws its method uniformly from ``methods``. All meta-prompts of one ``evolve`` call go
to ``generate`` in a single batched call. Outputs are cleaned by ``parse_output``; an output that is
empty after cleaning gives no child and counts in ``stats["unparsable"]``. Children carry
``label=None`` (a reward model judges them) and the method's name.
"""

from __future__ import annotations

import random
import re
from typing import Callable, Sequence

from ..registry import register_evolver
from . import Child, Evolver, Parent

REWRITER_FRAME = """\
You are helping to build harder practice material for an AI assistant. Below is a prompt a user \
once sent. Rewrite it into a new version that is more challenging to answer well, following this \
instruction:

{instruction}

Rules for the rewritten prompt:
- A knowledgeable person must still be able to understand and answer it.
- Keep every non-text part of the original (tables, code, formulas, data) and keep it correct.
- Keep it close to the original's length: add at most a sentence or two, never pad.
- Write it the way a real user would type it, not as an exam question about the original.
- Do not mention the original prompt, the rewriting, or these rules.

Original prompt:
<<<
{prompt}
>>>

Reply with the rewritten prompt only."""

CREATOR_FRAME = """\
You are helping to build diverse practice material for an AI assistant. Below is a prompt a user \
once sent. Use it only as inspiration and write a brand-new prompt, following this instruction:

{instruction}

Rules for the new prompt:
- It must be realistic: something a real person could plausibly ask.
- It must be solvable: answerable from general knowledge and the prompt itself.
- Match the original's length and level of complexity.
- It must stand on its own; do not refer to the original prompt or to these rules.

Inspiration prompt:
<<<
{prompt}
>>>

Reply with the new prompt only."""

IN_DEPTH = {
    "constraints": "Add one or two concrete requirements the answer must satisfy, such as a limit on "
    "format, length, tools or assumptions, so that a generic answer no longer suffices.",
    "deepening": "Ask about the topic at greater depth: probe the underlying causes, trade-offs or "
    "edge cases instead of the surface-level question.",
    "concretizing": "Replace general wording with a specific, realistic situation, with names, "
    "numbers or details that the answer has to take into account.",
    "reasoning": "Change it so that answering requires several explicit steps of reasoning, where "
    "each step builds on the previous one, instead of a single direct lookup.",
    "expansion": "Widen the request so that the answer has to cover additional perspectives, "
    "stakeholders or scenarios and weigh them against each other.",
}
IN_BREADTH = {
    "persona": "Imagine a very different person with the same kind of need (another profession, "
    "age, background or goal) and write the prompt they would send.",
    "shift_in": "Stay in the same broad field but move to a different, less common sub-area of it.",
    "shift_out": "Keep the style and type of request, but move it to an unrelated topic.",
    "mix": "Combine the subject of the original with a second field of your choice, so that a good "
    "answer needs knowledge from both.",
    "abstract": "Generalise the request: turn its specific case into the broader question or "
    "principle behind it.",
}
METHODS: tuple[str, ...] = (*IN_DEPTH, *IN_BREADTH)


def build_meta_prompt(method: str, prompt: str) -> str:
    """The meta-prompt asking an LLM to evolve ``prompt`` with ``method``."""
    if method in IN_DEPTH:
        return REWRITER_FRAME.format(instruction=IN_DEPTH[method], prompt=prompt)
    return CREATOR_FRAME.format(instruction=IN_BREADTH[method], prompt=prompt)


# A leading label such as "Rewritten prompt:", "**New Prompt:**" or "## Prompt:".
_LABEL = re.compile(
    r"^\s*(?:#+\s*)?(?:\*\*|__)?\s*(?:the\s+)?(?:rewritten|new|evolved|revised|created|final|improved)?\s*"
    r"(?:prompt|instruction|question)\s*(?:\*\*|__)?\s*[:：]\s*(?:\*\*|__)?",
    re.IGNORECASE,
)
# A chatty opening such as "Here is the rewritten prompt:" or "Sure! Here's a new prompt:".
# It must name the prompt, so that a real prompt such as "Here is my code: ..." is left alone.
_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|okay|ok|certainly)\b[!,.]?\s*)?here(?:'s| is)\b[^\n:]*"
    r"\b(?:prompt|version|rewrite)\b[^\n:]*:\s*",
    re.IGNORECASE,
)
_FENCE = re.compile(r"^```[\w+-]*\s*\n(.*)\n\s*```$", re.DOTALL)
_DELIMITERS = re.compile(r"^<<<\s*(.*?)\s*>>>$", re.DOTALL)
_QUOTES = (('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"))


def parse_output(text: str) -> str:
    """Clean an LLM reply down to the prompt; returns "" when nothing usable is left.

    Strips, repeatedly: surrounding whitespace, a chatty "Here is the new prompt:" opening, a
    "Rewritten prompt:"-style label, one code fence or ``<<< >>>`` pair around the whole reply, and
    a matching pair of quotes around the whole reply.
    """
    previous = None
    text = text or ""
    while text != previous:
        previous = text
        text = text.strip()
        text = _PREAMBLE.sub("", text, count=1)
        text = _LABEL.sub("", text, count=1).strip()
        for pattern in (_FENCE, _DELIMITERS):
            match = pattern.match(text)
            if match:
                text = match.group(1)
        for opening, closing in _QUOTES:
            inner = text[1:-1]
            # Only a pair around the whole reply: '"a" or "b"' starts and ends with quotes too.
            wrapped = len(text) >= 2 and text[0] == opening and text[-1] == closing
            if wrapped and opening not in inner and closing not in inner:
                text = inner
                break
    return text


@register_evolver("evol_instruct")
class EvolInstructEvolver(Evolver):
    """LLM-based evolving over any batched ``generate(list[str]) -> list[str]`` callable."""

    def __init__(
        self, generate: Callable[[list[str]], list[str]], methods: Sequence[str] = METHODS
    ) -> None:
        super().__init__()
        unknown = [method for method in methods if method not in METHODS]
        if unknown or not methods:
            raise ValueError(
                f"unknown evolve methods {unknown}; choose a non-empty subset of {list(METHODS)}"
            )
        self.generate = generate
        self.methods = list(methods)

    def evolve(self, parents: list[Parent], n: int, rng: random.Random) -> list[Child]:
        """``n`` meta-prompts per parent, one batched ``generate`` call, one child per usable output."""
        jobs = [(index, rng.choice(self.methods)) for index in range(len(parents)) for _ in range(n)]
        if not jobs:
            return []
        outputs = self.generate([build_meta_prompt(method, parents[index].prompt) for index, method in jobs])
        if len(outputs) != len(jobs):
            raise ValueError(f"generate returned {len(outputs)} outputs for {len(jobs)} meta-prompts")
        children = []
        for (index, method), output in zip(jobs, outputs):
            prompt = parse_output(output) if isinstance(output, str) else ""
            if not prompt:
                self.stats["unparsable"] += 1
                continue
            parent = parents[index]
            children.append(Child(prompt=prompt, parent_index=index, parent_id=parent.id,
                                  depth=parent.depth + 1, method=method))
        self.stats["children"] += len(children)
        return children
