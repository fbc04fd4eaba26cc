"""`marks`: a second tuning family (dev set only), over short strings of the letters a-h.

Why it exists. Until now every setting was chosen on one family's dev set (digits), and two settings
that held there did not carry to letters and lists (iterated DPO gave up in_dist for new kinds there,
never on digits). A second family to tune on lets a candidate default be checked twice before any
test set runs. Designed and frozen before any run on it, like lists; its dev.jsonl is what tuning
reads, and no decision reads its test.jsonl.

Design (frozen):
- A prompt is ``"<kind> <payload>"``, the payload d + 1 letters drawn uniformly from ``a``-``h``
  (ALPHABET), difficulty d in 1..MAX_DIFFICULTY (8). Every prompt has exactly one correct answer.
- Kinds come in related pairs, seed side | side reachable only through the evolver's in-breadth moves:

      srt  "srt dbad" -> "abdd"      sort ascending     | dsc  "dsc dbad" -> "ddba"      sort descending
      pal  "pal abc"  -> "abccba"    then its mirror    | mir  "mir abc"  -> "cbaabc"    mirror first
      shl  "shl abcd" -> "bcda"      rotate left by one | shr  "shr abcd" -> "dabc"      rotate right by one

  pal/mir answers are twice the payload: 14 letters at d 6, the hardest held-out difficulty, which
  fits the bench's 16 new tokens with its end of sequence.
- Splits, seeds and SFT data as lists (make_task.py): in_dist = seed kinds at SEED_DIFFICULTIES,
  harder = seed kinds at HARDER_DIFFICULTIES, new_kind = new kinds at seed difficulties; SFT on seed
  kinds with 10% one step past the seed difficulties. d 1 has 64 instances per kind.
- Reward and evolver: lists' reward_func.py and evolve_func.py, which read this file for the kinds.

Build: ``python examples/tasks/lists/make_task.py OUT_DIR --tasks examples/tasks/marks/tasks.py``.
Stdlib only.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

ALPHABET = "abcdefgh"
KINDS: tuple[str, ...] = ("srt", "dsc", "pal", "mir", "shl", "shr")
SEED_KINDS: tuple[str, ...] = ("srt", "pal", "shl")
NEW_KINDS: tuple[str, ...] = ("dsc", "mir", "shr")

MIN_DIFFICULTY = 1
MAX_DIFFICULTY = 8
SEED_DIFFICULTIES: tuple[int, ...] = (1, 2, 3)
HARDER_DIFFICULTIES: tuple[int, ...] = (4, 5, 6)

# Longest payload parse_prompt accepts: generated ones have at most MAX_DIFFICULTY + 1 letters.
MAX_PAYLOAD_LETTERS = 16

_PATTERN = re.compile(rf"^([a-z]+) ([{ALPHABET}]+)$")


@dataclass(frozen=True)
class Problem:
    """One task instance: ``prompt`` is what the solver sees, ``answer`` the only correct reply."""

    kind: str
    difficulty: int
    payload: str
    prompt: str
    answer: str


def _answer(kind: str, payload: str) -> str:
    if kind == "srt":
        return "".join(sorted(payload))
    if kind == "dsc":
        return "".join(sorted(payload, reverse=True))
    if kind == "pal":
        return payload + payload[::-1]
    if kind == "mir":
        return payload[::-1] + payload
    if kind == "shl":
        return payload[1:] + payload[0]
    if kind == "shr":
        return payload[-1] + payload[:-1]
    raise ValueError(f"unknown task kind {kind!r}; known kinds: {', '.join(KINDS)}")


def _problem(kind: str, payload: str) -> Problem:
    return Problem(kind, len(payload) - 1, payload, f"{kind} {payload}", _answer(kind, payload))


def make_problem(kind: str, difficulty: int, rng: random.Random) -> Problem:
    """Draw a random instance of ``kind`` at ``difficulty`` (1..MAX_DIFFICULTY) using ``rng``."""
    if kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r}; known kinds: {', '.join(KINDS)}")
    if not MIN_DIFFICULTY <= difficulty <= MAX_DIFFICULTY:
        raise ValueError(f"difficulty must be in {MIN_DIFFICULTY}..{MAX_DIFFICULTY}, got {difficulty}")
    return _problem(kind, "".join(rng.choice(ALPHABET) for _ in range(difficulty + 1)))


def parse_prompt(text: str) -> Problem:
    """Parse task text such as ``"srt dbad"``; raise ValueError on anything else.

    Surrounding whitespace is ignored; inside, one space, then 2..MAX_PAYLOAD_LETTERS letters of ALPHABET.
    """
    if not isinstance(text, str):
        raise ValueError(f"task prompt must be a string, got {type(text).__name__}")
    match = _PATTERN.match(text.strip())
    if match is None:
        raise ValueError(f"malformed prompt {text!r}; expected '<kind> <letters {ALPHABET[0]}-{ALPHABET[-1]}>'")
    kind, payload = match.groups()
    if kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r} in prompt {text!r}; known kinds: {', '.join(KINDS)}")
    if not 2 <= len(payload) <= MAX_PAYLOAD_LETTERS:
        raise ValueError(f"prompt {text!r} has {len(payload)} letters; a payload has 2..{MAX_PAYLOAD_LETTERS}")
    return _problem(kind, payload)


def solve(text: str) -> str:
    """The correct answer to a task prompt (raises ValueError if it is not one)."""
    return parse_prompt(text).answer
