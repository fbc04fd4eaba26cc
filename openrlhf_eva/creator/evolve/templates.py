"""Every meta-prompt the creator sends to an LLM, written for this project, in one place.

Evolving frames (each takes ``{instruction}`` and ``{prompt}``):
    REWRITER_FRAME    in-depth rewriting: the same request, harder       (evol_instruct)
    CREATOR_FRAME     in-breadth creating: a new request, inspired        (evol_instruct)
    COMPLEXITY_FRAME  one step more complex, in-depth methods only        (evol_complexity)
    QUALITY_FRAME     a better-posed version of the same request          (evol_quality)
    MULTI_PARENT_FRAME  one new prompt from several parents ({prompts})   (--eva.evolve_parents > 1)
    SELF_INSTRUCT_FRAME  new prompts from examples, as a numbered list   (self_instruct)
FEEDBACK_BLOCK is appended to a frame when the parent comes with the solver's rollouts
(--eva.evolve_feedback). The answer rewriter and the prompt judge are at the end.

ECHO_MARKERS are phrases of these frames that never belong in a real prompt: a child that contains
one has echoed its meta-prompt (the ``echo`` filter).
"""

from __future__ import annotations

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

# evol_complexity: the in-depth moves only, each asked for as exactly one notch of extra difficulty,
# so repeated rounds climb steadily instead of jumping to an unanswerable prompt.
COMPLEXITY_FRAME = """\
You are raising the difficulty of a practice prompt for an AI assistant by exactly one notch. \
Apply this change:

{instruction}

Rules:
- One notch only: the new prompt should be a little harder than the original, not a different task.
- Everything the original asks for must still be asked for; keep code, tables and data intact.
- The new prompt must remain answerable by an expert and read like a real user's message.
- Do not explain what you changed.

Prompt to make more complex:
<<<
{prompt}
>>>

Reply with the more complex prompt only."""

# evol_quality: same request, better posed. A vague or ambiguous prompt gives noisy rewards; these
# moves make the request one a strong assistant can clearly succeed or fail at.
QUALITY_FRAME = """\
You are improving how well a practice prompt for an AI assistant is written, without changing what \
it asks for. Apply this improvement:

{instruction}

Rules:
- Keep the task and its subject; improve only how it is posed.
- Keep code, tables and data exactly as they are.
- The result must read like a message from a thoughtful real user, of similar length.
- Do not answer the prompt and do not comment on it.

Prompt to improve:
<<<
{prompt}
>>>

Reply with the improved prompt only."""

QUALITY_METHODS = {
    "clarify": "Remove ambiguity: make every term and reference unambiguous, so there is one clear "
    "reading of the request.",
    "specify": "State what a good answer looks like: the expected output, its scope or format.",
    "contextualize": "Add the background a helper would need: who is asking, why, and under which "
    "circumstances.",
    "realism": "Make it sound like a real situation rather than a textbook exercise, keeping the task.",
    "completeness": "Supply any information that is missing for the request to be answerable, such "
    "as inputs, units or assumptions.",
}

MULTI_PARENT_FRAME = """\
You are helping to build practice material for an AI assistant. Below are {count} prompts that the \
assistant found informative to practise on. Write one new prompt that draws on them together (their \
subjects, skills or kinds of difficulty), following this instruction:

{instruction}

Rules for the new prompt:
- It must be a single, self-contained request that a real person could plausibly send.
- It must be answerable by a knowledgeable person.
- Keep it about as long as the longest of the prompts below.
- Do not mention the prompts below or these rules.

{prompts}

Reply with the new prompt only."""

SELF_INSTRUCT_FRAME = """\
Here are {count} requests that users sent to an AI assistant:

{examples}

Write {n} new requests a user could send to the same assistant. They should cover related ground \
but each must differ from the examples and from each other in topic or in what it asks for. Each \
must be self-contained, realistic and answerable.

Write the {n} requests as a numbered list, one per line, and nothing else."""

FEEDBACK_BLOCK = """

How the assistant did on the original prompt ({num_responses} answers, scores from {low} to {high}):
Its best answer (score {best_reward}):
<<<
{best}
>>>
Its weakest answer (score {worst_reward}):
<<<
{worst}
>>>
Use this: aim the new prompt at the skill that separates the best answer from the weakest one. If \
both were good, push further past what the assistant already does well; if both were poor, keep \
the difficulty and make the request clearer."""

REWRITE_RESPONSE_FRAME = """\
Below is a user's request and an assistant's answer to it. Improve the answer: make it more \
helpful, more relevant to exactly what was asked, deeper, more creative where that helps, and more \
detailed where details are missing. Fix any mistakes.

Rules:
- Keep roughly the same length (at most a third longer or shorter).
- Keep what is already good, and keep the same language and format.
- Do not mention the original answer or that it was improved.

Request:
<<<
{prompt}
>>>

Answer:
<<<
{response}
>>>

Reply with the improved answer only."""

TOPICS: tuple[str, ...] = (
    "math", "coding", "reasoning", "science", "writing", "knowledge", "advice", "business", "other",
)

JUDGE_FRAME = """\
Rate the following prompt that a user sent to an AI assistant. Do not answer it.

Complexity (1-5): how much knowledge, reasoning and work a good answer needs.
  1 = a trivial lookup or a one-word answer; 3 = a few steps or some expertise; 5 = expert-level,
  many steps, several constraints to satisfy at once.
Quality (1-5): how well the prompt is posed.
  1 = unclear, incoherent or unanswerable; 3 = understandable but vague or missing details;
  5 = clear, specific, self-contained and realistic.
Topic: one of {topics}.

Prompt:
<<<
{prompt}
>>>

Reply with exactly three lines:
Complexity: <1-5>
Quality: <1-5>
Topic: <topic>"""

# Phrases of the frames above that a real prompt would not contain; a child carrying one of them
# echoed its meta-prompt. tests/creator/test_filters_more.py checks every frame contributes one.
# The opening words of each method instruction count too: small creators often repeat the
# instruction instead of applying it.
ECHO_MARKERS: tuple[str, ...] = tuple(text[:40].casefold() for text in (
    *IN_DEPTH.values(), *IN_BREADTH.values(), *QUALITY_METHODS.values())) + (
    "<<<", ">>>",
    "original prompt:", "inspiration prompt:", "prompt to make more complex:", "prompt to improve:",
    "rules for the rewritten prompt", "rules for the new prompt",
    "reply with the rewritten prompt only", "reply with the new prompt only",
    "reply with the more complex prompt only", "reply with the improved prompt only",
    "practice material for an ai assistant", "raising the difficulty of a practice prompt",
    "improving how well a practice prompt",
    # distilabel's EvolInstruct / EvolComplexity markers, for the distilabel adapter's children
    "#the given prompt#", "#given prompt#", "#rewritten prompt#", "#created prompt#",
)
