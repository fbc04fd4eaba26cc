"""The ``distilabel`` evolver: any distilabel prompt-evolving task, run on eva's own generation backends.

    build_evolver("distilabel", generate=gen, task="EvolComplexity")
    --eva.evolver distilabel --eva.evolver_options '{"task": "SelfInstruct"}'

``task`` names a class in ``distilabel.steps.tasks`` or is ``"module:Class"``; ``task_options`` go
to its constructor (Evol* tasks get ``num_evolutions=1`` unless given). The task runs without a
distilabel Pipeline: eva's ``generate`` is wrapped as a distilabel ``LLM`` (``EvaLLM``) that takes
distilabel's chat-format inputs, and the task's ``process`` is called on one row per child wanted
(one row per parent for list-output tasks such as SelfInstruct, whose ``num_instructions`` is set
to ``n``). Known tasks know their columns; for others pass ``input_column`` and ``output_column``.

Two distilabel habits are contained here: its tasks update the input row dicts in place (rows are
built fresh for every call and never shared), and EvolInstruct draws its mutation from numpy's
global RNG (seeded from ``rng`` for the call, then put back). distilabel is an optional extra
(``pip install openrlhf-eva[distilabel]``; it needs ``requests``).
"""

from __future__ import annotations

import importlib
import logging
import random
import warnings
from typing import Any

from ..registry import register_evolver
from . import Child, Evolver, Parent
from .llm import Generate, parse_output

# task class name -> (input column, output column); a list output yields several children per row.
KNOWN_TASKS = {
    "EvolInstruct": ("instruction", "evolved_instruction"),
    "EvolComplexity": ("instruction", "evolved_instruction"),
    "SelfInstruct": ("input", "instructions"),
}


def _import_distilabel():
    try:
        with warnings.catch_warnings():  # pydantic warns about distilabel's Field() use on import
            warnings.simplefilter("ignore")
            from distilabel.models.llms.base import LLM
            import distilabel.steps.tasks as tasks
    except ImportError as error:
        raise ValueError("the distilabel evolver needs distilabel: pip install 'openrlhf-eva[distilabel]' "
                         f"({error})") from error
    return LLM, tasks


def wrap_generate(generate: Generate):
    """eva's batched ``generate`` as a distilabel ``LLM`` instance."""
    LLM, _ = _import_distilabel()

    class EvaLLM(LLM):
        generate_texts: Any = None

        @property
        def model_name(self) -> str:
            return "openrlhf-eva"

        def generate(self, inputs, num_generations: int = 1, **kwargs):
            # Copies: the conversations are distilabel's, and a backend may keep what it is sent.
            conversations = [[dict(message) for message in conversation] for conversation in inputs
                             for _ in range(num_generations)]
            texts = self.generate_texts(conversations) if conversations else []
            if len(texts) != len(conversations):
                raise ValueError(f"generate returned {len(texts)} outputs for {len(conversations)} conversations")
            # distilabel wants per-generation statistics; eva's backends do not report token counts.
            return [{"generations": texts[k * num_generations:(k + 1) * num_generations],
                     "statistics": {"input_tokens": [None] * num_generations,
                                    "output_tokens": [None] * num_generations}}
                    for k in range(len(inputs))]

    return EvaLLM(generate_texts=generate)


@register_evolver("distilabel")
class DistilabelEvolver(Evolver):
    uses_llm = True

    def __init__(self, generate: Generate, task: str = "EvolInstruct", task_options: dict | None = None,
                 input_column: str | None = None, output_column: str | None = None) -> None:
        super().__init__()
        _, tasks = _import_distilabel()
        if ":" in task:
            module, _, name = task.partition(":")
            task_class = getattr(importlib.import_module(module), name, None)
        else:
            name, task_class = task, getattr(tasks, task, None)
        if task_class is None:
            raise ValueError(f"distilabel task {task!r} not found; known prompt evolvers: {', '.join(KNOWN_TASKS)}")
        columns = KNOWN_TASKS.get(name, (None, None))
        self.input_column = input_column or columns[0]
        self.output_column = output_column or columns[1]
        if not self.input_column or not self.output_column:
            raise ValueError(f"distilabel task {task!r} is not a known prompt evolver: pass input_column and "
                             f"output_column")
        options = dict(task_options or {})
        if name.startswith("Evol"):
            options.setdefault("num_evolutions", 1)
        self.method = f"distilabel/{name}"
        with warnings.catch_warnings():  # pydantic warns again as it builds the task's schema
            warnings.simplefilter("ignore")
            self.task = task_class(llm=wrap_generate(generate), **options)
        # Without a Pipeline every step warns once that it has none; that is how it is meant here.
        logging.getLogger(f"distilabel.step.{self.task.name}").setLevel(logging.ERROR)
        self.task.load()
        self.lists = hasattr(self.task, "num_instructions")

    def evolve(self, parents: list[Parent], n: int, rng: random.Random) -> list[Child]:
        import numpy as np

        self.dropped = []
        if not parents or n < 1:
            return []
        per_row = n if self.lists else 1
        owners = [index for index in range(len(parents)) for _ in range(1 if self.lists else n)]
        rows = [{self.input_column: parents[index].prompt} for index in owners]
        if self.lists:
            self.task.num_instructions = n
        state = np.random.get_state()
        np.random.seed(rng.randrange(2**32))
        try:
            outputs = [row for batch in self.task.process(rows) for row in batch]
        finally:
            np.random.set_state(state)
        if len(outputs) != len(rows):
            raise ValueError(f"distilabel task {self.method} returned {len(outputs)} rows for {len(rows)}")
        children = []
        for index, row in zip(owners, outputs):
            if self.output_column not in row:
                raise ValueError(f"distilabel task {self.method} wrote no {self.output_column!r}; it wrote "
                                 f"{sorted(row)}: pass output_column")
            value = row[self.output_column]
            texts = value if isinstance(value, list) else [value]
            prompts = [parse_output(text) if isinstance(text, str) else "" for text in texts][:per_row]
            parent = parents[index]
            for prompt in prompts:
                if prompt:
                    children.append(Child(prompt=prompt, parent_index=index, parent_id=parent.id,
                                          depth=parent.depth + 1, method=self.method))
            missing = per_row - sum(bool(p) for p in prompts)
            if missing:
                self.stats["unparsable"] += missing
                self.dropped.append({"parent_index": index, "method": self.method, "output": value,
                                     "reason": f"unparsable: {missing} of {per_row} outputs empty after cleaning"})
        self.stats["children"] += len(children)
        return children
