"""The embedded task family: short digit-string problems with a difficulty knob.

Every prompt is ``"<kind> <operand>"`` (``"add <a>+<b>"`` for addition) and has exactly one
correct answer, so the reward is verifiable and evolved prompts come with their labels for free.

Kinds come in related pairs so that learning one transfers to its neighbour:

    copy  "copy 4721" -> "4721"   |  rot   "rot 4721"  -> "7214"  (rotate left by one)
    rev   "rev 4721"  -> "1274"   |  swap  "swap 4721" -> "1724"  (swap first and last)
    sort  "sort 4721" -> "1247"   |  max   "max 4721"  -> "7"     (largest digit)
    add   "add 12+345"-> "357"    |  inc   "inc 4729"  -> "4730"  (add one)

The left column is the seed side (SEED_KINDS), the right column is only reachable through the
evolver's in-breadth moves (NEW_KINDS). Difficulty d in 1..MAX_DIFFICULTY sets the operand size:
d + 1 digits for the string kinds and ``inc``, two d-digit numbers for ``add``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

KINDS: tuple[str, ...] = ("copy", "rev", "rot", "swap", "sort", "max", "add", "inc")
SEED_KINDS: tuple[str, ...] = ("copy", "rev", "sort", "add")
NEW_KINDS: tuple[str, ...] = ("rot", "swap", "max", "inc")

MIN_DIFFICULTY = 1
MAX_DIFFICULTY = 8
SEED_DIFFICULTIES: tuple[int, ...] = (1, 2, 3)
HARDER_DIFFICULTIES: tuple[int, ...] = (4, 5, 6)

# Longest operand parse_prompt accepts. Generated operands have at most MAX_DIFFICULTY + 1 digits;
# the slack lets hand-written prompts through while keeping text far below the model's context.
MAX_OPERAND_DIGITS = 16

_UNARY_PATTERN = re.compile(r"^([a-z]+) ([0-9]+)$")
_ADD_PATTERN = re.compile(r"^add ([0-9]+)\+([0-9]+)$")


@dataclass(frozen=True)
class Problem:
    """One task instance: ``prompt`` is what the solver sees, ``answer`` the only correct reply."""

    kind: str
    difficulty: int
    args: tuple[str, ...]
    prompt: str
    answer: str


def _answer(kind: str, args: tuple[str, ...]) -> str:
    if kind == "add":
        return str(int(args[0]) + int(args[1]))
    digits = args[0]
    if kind == "copy":
        return digits
    if kind == "rev":
        return digits[::-1]
    if kind == "rot":
        return digits[1:] + digits[0]
    if kind == "swap":
        return digits if len(digits) == 1 else digits[-1] + digits[1:-1] + digits[0]
    if kind == "sort":
        return "".join(sorted(digits))
    if kind == "max":
        return max(digits)
    if kind == "inc":
        return str(int(digits) + 1)
    raise ValueError(f"unknown task kind {kind!r}; known kinds: {', '.join(KINDS)}")


def _difficulty(kind: str, args: tuple[str, ...]) -> int:
    # Inverse of the operand sizes make_problem uses, so parse(make(d)).difficulty == d.
    if kind == "add":
        return max(MIN_DIFFICULTY, len(args[0]), len(args[1]))
    return max(MIN_DIFFICULTY, len(args[0]) - 1)


def _prompt(kind: str, args: tuple[str, ...]) -> str:
    if kind == "add":
        return f"add {args[0]}+{args[1]}"
    return f"{kind} {args[0]}"


def _random_number(num_digits: int, rng: random.Random) -> str:
    """A decimal number with exactly ``num_digits`` digits and no leading zero (except "0".."9")."""
    if num_digits == 1:
        return str(rng.randrange(10))
    return str(rng.randrange(1, 10)) + "".join(str(rng.randrange(10)) for _ in range(num_digits - 1))


def make_problem(kind: str, difficulty: int, rng: random.Random) -> Problem:
    """Draw a random instance of ``kind`` at ``difficulty`` (1..MAX_DIFFICULTY) using ``rng``."""
    if kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r}; known kinds: {', '.join(KINDS)}")
    if not MIN_DIFFICULTY <= difficulty <= MAX_DIFFICULTY:
        raise ValueError(f"difficulty must be in {MIN_DIFFICULTY}..{MAX_DIFFICULTY}, got {difficulty}")

    if kind == "add":
        args = (_random_number(difficulty, rng), _random_number(difficulty, rng))
    elif kind == "inc":
        args = (_random_number(difficulty + 1, rng),)
    else:
        # String kinds treat the operand as a digit string, so leading zeros are fine.
        args = ("".join(str(rng.randrange(10)) for _ in range(difficulty + 1)),)
    return Problem(kind, difficulty, args, _prompt(kind, args), _answer(kind, args))


def parse_prompt(prompt: str) -> Problem:
    """Parse task text such as ``"rev 4721"`` or ``"add 12+345"``; raise ValueError on anything else.

    Surrounding whitespace is ignored; inside, the format is strict (one space, digits only).
    """
    if not isinstance(prompt, str):
        raise ValueError(f"task prompt must be a string, got {type(prompt).__name__}")
    text = prompt.strip()
    if not text:
        raise ValueError("empty task prompt")

    kind = text.split(" ", 1)[0]
    if kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r} in prompt {prompt!r}; known kinds: {', '.join(KINDS)}")

    if kind == "add":
        match = _ADD_PATTERN.match(text)
        expected = "'add <digits>+<digits>'"
    else:
        match = _UNARY_PATTERN.match(text)
        expected = f"'{kind} <digits>'"
    if match is None:
        raise ValueError(f"malformed {kind!r} prompt {prompt!r}; expected {expected}")

    args = (match.group(1), match.group(2)) if kind == "add" else (match.group(2),)
    if any(len(operand) > MAX_OPERAND_DIGITS for operand in args):
        raise ValueError(f"operand longer than {MAX_OPERAND_DIGITS} digits in prompt {prompt!r}")
    return Problem(kind, _difficulty(kind, args), args, _prompt(kind, args), _answer(kind, args))


def solve(prompt: str) -> str:
    """The correct answer to a task prompt (raises ValueError if it is not one)."""
    return parse_prompt(prompt).answer
