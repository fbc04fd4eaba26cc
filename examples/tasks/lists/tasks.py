"""`lists`: a small verifiable task family over digit lists, written as a user's own task would be.

Design (frozen before any run; never tuned on):

- A prompt is ``"<kind> <payload>"``, the payload a comma-separated list of digits drawn uniformly
  from 0-9, e.g. ``"join 3,1,4"``. Difficulty d in 1..MAX_DIFFICULTY (8) is the list length - 1:
  d=1 is two digits, d=8 nine. Every prompt has exactly one correct answer.
- Kinds come in related pairs, seed side | side reachable only through the evolver's in-breadth moves:

      join  "join 3,1,4"   -> "314"  concatenate     | uniq  "uniq 3,1,3"    -> "31"   drop repeats, keep order
      odds  "odds 3,1,4,6" -> "31"   odd digits      | evens "evens 3,1,4,6" -> "46"   even digits (0 is even)
      inc   "inc 3,1,9"    -> "420"  each +1 mod 10  | dec   "dec 3,1,0"     -> "209"  each -1 mod 10

  odds/evens answer ``none`` when no digit qualifies (a 1-in-2**(d+1) event with uniform digits,
  so it occurs at low difficulty without dominating).
- Seeds and SFT data use SEED_KINDS at SEED_DIFFICULTIES; the held-out splits are in_dist (the same),
  harder (HARDER_DIFFICULTIES) and new_kind (NEW_KINDS at seed difficulties). See make_task.py.

Stdlib only: evolve_func.py and make_task.py load this file from their own folder.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

KINDS: tuple[str, ...] = ("join", "uniq", "odds", "evens", "inc", "dec")
SEED_KINDS: tuple[str, ...] = ("join", "odds", "inc")
NEW_KINDS: tuple[str, ...] = ("uniq", "evens", "dec")

MIN_DIFFICULTY = 1
MAX_DIFFICULTY = 8
SEED_DIFFICULTIES: tuple[int, ...] = (1, 2, 3)
HARDER_DIFFICULTIES: tuple[int, ...] = (4, 5, 6)

# Longest payload parse_prompt accepts. Generated lists have at most MAX_DIFFICULTY + 1 digits; the
# slack admits hand-written prompts while keeping the text far below a small model's context.
MAX_PAYLOAD_DIGITS = 16

EMPTY_ANSWER = "none"

_PATTERN = re.compile(r"^([a-z]+) ([0-9](?:,[0-9])*)$")


@dataclass(frozen=True)
class Problem:
    """One task instance: ``prompt`` is what the solver sees, ``answer`` the only correct reply."""

    kind: str
    difficulty: int
    digits: tuple[int, ...]
    prompt: str
    answer: str


def _answer(kind: str, digits: tuple[int, ...]) -> str:
    if kind == "join":
        kept = list(digits)
    elif kind == "uniq":
        kept = list(dict.fromkeys(digits))  # dicts keep insertion order: first occurrences, in order
    elif kind in ("odds", "evens"):
        parity = 1 if kind == "odds" else 0
        kept = [digit for digit in digits if digit % 2 == parity]
        if not kept:
            return EMPTY_ANSWER
    elif kind in ("inc", "dec"):
        step = 1 if kind == "inc" else -1
        kept = [(digit + step) % 10 for digit in digits]
    else:
        raise ValueError(f"unknown task kind {kind!r}; known kinds: {', '.join(KINDS)}")
    return "".join(str(digit) for digit in kept)


def _problem(kind: str, digits: tuple[int, ...]) -> Problem:
    prompt = f"{kind} {','.join(str(digit) for digit in digits)}"
    return Problem(kind, len(digits) - 1, digits, prompt, _answer(kind, digits))


def make_problem(kind: str, difficulty: int, rng: random.Random) -> Problem:
    """Draw a random instance of ``kind`` at ``difficulty`` (1..MAX_DIFFICULTY) using ``rng``."""
    if kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r}; known kinds: {', '.join(KINDS)}")
    if not MIN_DIFFICULTY <= difficulty <= MAX_DIFFICULTY:
        raise ValueError(f"difficulty must be in {MIN_DIFFICULTY}..{MAX_DIFFICULTY}, got {difficulty}")
    return _problem(kind, tuple(rng.randrange(10) for _ in range(difficulty + 1)))


def parse_prompt(text: str) -> Problem:
    """Parse task text such as ``"join 3,1,4"``; raise ValueError on anything else.

    Surrounding whitespace is ignored; inside, the format is strict: one space, single digits
    separated by single commas, at least two of them (difficulty >= 1) and at most MAX_PAYLOAD_DIGITS.
    """
    if not isinstance(text, str):
        raise ValueError(f"task prompt must be a string, got {type(text).__name__}")
    match = _PATTERN.match(text.strip())
    if match is None:
        raise ValueError(f"malformed prompt {text!r}; expected '<kind> <digit>,<digit>,...'")
    kind, payload = match.groups()
    if kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r} in prompt {text!r}; known kinds: {', '.join(KINDS)}")
    digits = tuple(int(digit) for digit in payload.split(","))
    if not 2 <= len(digits) <= MAX_PAYLOAD_DIGITS:
        raise ValueError(f"prompt {text!r} has {len(digits)} digits; a list has 2..{MAX_PAYLOAD_DIGITS}")
    return _problem(kind, digits)


def solve(text: str) -> str:
    """The correct answer to a task prompt (raises ValueError if it is not one)."""
    return parse_prompt(text).answer
