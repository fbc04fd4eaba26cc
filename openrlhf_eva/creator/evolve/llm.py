"""What the meta-prompt evolvers share: methods, batching, parsing, feedback and multi-parent calls.

``LLMEvolver`` is the base of ``evol_instruct``, ``evol_complexity`` and ``evol_quality``. Each
child draws its method uniformly from ``methods``; all meta-prompts of one ``evolve`` call go to
``generate`` in one batched call; ``parse_output`` cleans each reply, and a reply with nothing left
is recorded in ``dropped`` and counted in ``stats["unparsable"]``.

Two options answer the weaknesses the paper names (EVA.md, "Evolving methods"):
- ``feedback=True``: a parent that carries the solver's responses and rewards gets its best and
  weakest answer, with their scores, appended to the meta-prompt (``FEEDBACK_BLOCK``), so the
  creator sees what the solver can and cannot do instead of evolving blind.
- ``parents_per_call=k > 1``: each meta-prompt shows the parent with k-1 other parents of the same
  call (drawn uniformly without replacement) and asks for one prompt drawing on all of them. The
  child's ``parent_index`` is the anchor parent; ``metadata["co_parents"]`` lists the others' texts.
"""

from __future__ import annotations

import math
import random
import re
from typing import Callable, Mapping, Sequence

from . import Child, Evolver, Parent
from .templates import FEEDBACK_BLOCK, MULTI_PARENT_FRAME

Generate = Callable[[list[str]], list[str]]

# A leading label such as "Rewritten prompt:", "**New Prompt:**" or "## Prompt:".
_LABEL = re.compile(
    r"^\s*(?:#+\s*)?(?:\*\*|__)?\s*(?:the\s+)?(?:rewritten|new|evolved|revised|created|final|improved|more complex)?"
    r"\s*(?:prompt|instruction|question|request)\s*(?:\*\*|__)?\s*[:：]\s*(?:\*\*|__)?",
    re.IGNORECASE,
)
# A chatty opening such as "Here is the rewritten prompt:" or "Sure! Here's a new prompt:".
# It must name the prompt, so that a real prompt such as "Here is my code: ..." is left alone.
_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|okay|ok|certainly)\b[!,.]?\s*)?here(?:'s| is)\b[^\n:]*"
    r"\b(?:prompt|version|rewrite|request)\b[^\n:]*:\s*",
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


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit].rstrip() + " [...]"


def feedback_block(parent: Parent, max_chars: int = 800) -> str:
    """The solver's best and weakest answer to ``parent`` with their rewards, or "" without rollouts.

    Rewards that are None or not finite (unscorable responses) are skipped; answers are clipped to
    ``max_chars`` so a long rollout cannot crowd the prompt out of the creator's context.
    """
    if not parent.responses or not parent.rewards:
        return ""
    scored = [(float(r), text) for r, text in zip(parent.rewards, parent.responses)
              if r is not None and math.isfinite(float(r)) and isinstance(text, str)]
    if not scored:
        return ""
    best = max(scored, key=lambda pair: pair[0])
    worst = min(scored, key=lambda pair: pair[0])
    return FEEDBACK_BLOCK.format(
        num_responses=len(scored), low=f"{worst[0]:.3g}", high=f"{best[0]:.3g}",
        best_reward=f"{best[0]:.3g}", best=_clip(best[1].strip(), max_chars),
        worst_reward=f"{worst[0]:.3g}", worst=_clip(worst[1].strip(), max_chars),
    )


class LLMEvolver(Evolver):
    """Meta-prompt evolving over a batched ``generate(list[str]) -> list[str]``.

    Subclasses set ``INSTRUCTIONS`` (method name -> instruction) and ``frame(method)`` (the
    single-parent frame with ``{instruction}`` and ``{prompt}``).
    """

    uses_llm = True
    INSTRUCTIONS: Mapping[str, str] = {}

    def __init__(self, generate: Generate, methods: Sequence[str] | None = None, *, feedback: bool = False,
                 parents_per_call: int = 1, feedback_chars: int = 800) -> None:
        super().__init__()
        methods = list(self.INSTRUCTIONS) if methods is None else list(methods)
        unknown = [method for method in methods if method not in self.INSTRUCTIONS]
        if unknown or not methods:
            raise ValueError(
                f"unknown evolve methods {unknown}; choose a non-empty subset of {list(self.INSTRUCTIONS)}"
            )
        if parents_per_call < 1:
            raise ValueError(f"parents_per_call must be >= 1, got {parents_per_call}")
        self.generate = generate
        self.methods = methods
        self.feedback = feedback
        self.parents_per_call = parents_per_call
        self.feedback_chars = feedback_chars

    def frame(self, method: str) -> str:
        raise NotImplementedError

    def meta_prompt(self, method: str, parent: Parent, co_parents: Sequence[Parent] = ()) -> str:
        """The meta-prompt for one child: the method's frame, or the multi-parent frame, plus feedback."""
        instruction = self.INSTRUCTIONS[method]
        if co_parents:
            group = [parent, *co_parents]
            blocks = "\n\n".join(f"Prompt {k}:\n<<<\n{p.prompt}\n>>>" for k, p in enumerate(group, start=1))
            text = MULTI_PARENT_FRAME.format(count=len(group), instruction=instruction, prompts=blocks)
        else:
            text = self.frame(method).format(instruction=instruction, prompt=parent.prompt)
        if self.feedback:
            block = feedback_block(parent, self.feedback_chars)
            self.stats["feedback_used" if block else "feedback_missing"] += 1
            text += block
        return text

    def evolve(self, parents: list[Parent], n: int, rng: random.Random) -> list[Child]:
        """``n`` meta-prompts per parent, one batched ``generate`` call, one child per usable output."""
        self.dropped = []
        jobs = [(index, rng.choice(self.methods)) for index in range(len(parents)) for _ in range(n)]
        if not jobs:
            return []
        co_parents = [self._draw_co_parents(index, len(parents), rng) for index, _ in jobs]
        meta_prompts = [self.meta_prompt(method, parents[index], [parents[k] for k in others])
                        for (index, method), others in zip(jobs, co_parents)]
        outputs = self.generate(meta_prompts)
        if len(outputs) != len(jobs):
            raise ValueError(f"generate returned {len(outputs)} outputs for {len(jobs)} meta-prompts")
        children = []
        for (index, method), others, output in zip(jobs, co_parents, outputs):
            prompt = parse_output(output) if isinstance(output, str) else ""
            if not prompt:
                self.stats["unparsable"] += 1
                self.dropped.append({"parent_index": index, "method": method, "output": output,
                                     "reason": "unparsable: nothing left after cleaning the reply"})
                continue
            parent = parents[index]
            metadata = {"co_parents": [parents[k].prompt for k in others]} if others else {}
            children.append(Child(prompt=prompt, parent_index=index, parent_id=parent.id,
                                  depth=parent.depth + 1, method=method, metadata=metadata))
        self.stats["children"] += len(children)
        return children

    def _draw_co_parents(self, index: int, num_parents: int, rng: random.Random) -> list[int]:
        if self.parents_per_call == 1 or num_parents == 1:
            return []
        others = [k for k in range(num_parents) if k != index]
        return rng.sample(others, min(self.parents_per_call - 1, len(others)))
