"""The ``self_instruct`` evolver: new prompts written from a few parents shown as examples.

One call per parent: the parent and ``examples - 1`` other parents of the same call (drawn
uniformly) are shown as example requests, and the LLM is asked for ``n`` new ones as a numbered
list (``SELF_INSTRUCT_FRAME``). ``parse_list_output`` reads the list; the first ``n`` items that
differ from every example and from each other become the parent's children (method
``self_instruct``). A list with fewer usable items is counted in ``stats["missing_items"]`` and
the reply recorded in ``dropped``. It is multi-parent by construction: the children of a
call are attributed to the parent it was built around.
"""

from __future__ import annotations

import random
import re

from ..filters import normalize_text
from ..registry import register_evolver
from . import Child, Parent
from .llm import Generate, LLMEvolver, parse_output
from .templates import SELF_INSTRUCT_FRAME

_ITEM = re.compile(r"^\s*(?:\(?\d+[.):]|[-*\u2022])\s+(.*\S)\s*$")
_BARE_MARKER = re.compile(r"^\s*(?:\(?\d+[.):]|[-*\u2022])\s*$")


def parse_list_output(text: str) -> list[str]:
    """The items of a numbered or bulleted list, cleaned with ``parse_output``, duplicates removed.

    Without any numbered or bulleted line, each non-empty line is an item, except lines ending in
    ":" (a "Here are five requests:" opening) and bare list markers.
    """
    lines = (text or "").splitlines()
    matches = [_ITEM.match(line) for line in lines]
    if any(matches):
        raw = [match.group(1) for match in matches if match]
    else:
        raw = [line for line in lines
               if line.strip() and not line.rstrip().endswith(":") and not _BARE_MARKER.match(line)]
    items, seen = [], set()
    for item in raw:
        cleaned = parse_output(item)
        key = normalize_text(cleaned)
        if cleaned and key not in seen:
            seen.add(key)
            items.append(cleaned)
    return items


@register_evolver("self_instruct")
class SelfInstructEvolver(LLMEvolver):
    INSTRUCTIONS = {"self_instruct": ""}

    def __init__(self, generate: Generate, examples: int = 3) -> None:
        super().__init__(generate)
        if examples < 1:
            raise ValueError(f"examples must be >= 1, got {examples}")
        self.examples = examples

    def evolve(self, parents: list[Parent], n: int, rng: random.Random) -> list[Child]:
        self.dropped = []
        if not parents or n < 1:
            return []
        groups = []
        for index in range(len(parents)):
            others = [k for k in range(len(parents)) if k != index]
            groups.append([index, *rng.sample(others, min(self.examples - 1, len(others)))])
        meta_prompts = [
            SELF_INSTRUCT_FRAME.format(count=len(group), n=n, examples="\n".join(
                f"{k}. {' '.join(parents[i].prompt.split())}" for k, i in enumerate(group, start=1)))
            for group in groups
        ]
        outputs = self.generate(meta_prompts)
        if len(outputs) != len(meta_prompts):
            raise ValueError(f"generate returned {len(outputs)} outputs for {len(meta_prompts)} meta-prompts")
        children = []
        for index, (group, output) in enumerate(zip(groups, outputs)):
            examples = {normalize_text(parents[i].prompt) for i in group}
            items = parse_list_output(output) if isinstance(output, str) else []
            fresh = [item for item in items if normalize_text(item) not in examples][:n]
            parent = parents[index]
            metadata = {"co_parents": [parents[i].prompt for i in group[1:]]} if len(group) > 1 else {}
            for item in fresh:
                children.append(Child(prompt=item, parent_index=index, parent_id=parent.id, depth=parent.depth + 1,
                                      method="self_instruct", metadata=dict(metadata)))
            missing = n - len(fresh)
            if missing:  # one record per call: the reply and how many of its items were missing
                self.stats["missing_items"] += missing
                self.dropped.append({"parent_index": index, "method": "self_instruct", "output": output,
                                     "reason": f"unparsable: the list had {len(fresh)} new items of {n}"})
        self.stats["children"] += len(children)
        return children
