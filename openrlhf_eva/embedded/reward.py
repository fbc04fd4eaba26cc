"""Graded reward for the embedded tasks.

score = 1.0 for an exact answer, else PARTIAL_CREDIT * (1 - levenshtein / max(len(pred), len(gold))).
Edit distance (rather than per-position matching) credits answers that are right but shifted by a
character, which is the typical near-miss on rev/rot/add. Capping partial credit below 1 keeps a
clear gap between "almost" and "correct", and the spread among n samples is what eva's
informativeness metrics (A_min, A_avg, ...) feed on.
"""

from __future__ import annotations

PARTIAL_CREDIT = 0.8


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def score(response: str, answer: str) -> float:
    """Reward in [0, 1] for ``response`` against the gold ``answer``; 1.0 iff they match exactly.

    Surrounding whitespace on both is ignored (OpenRLHF's non-template SFT path writes ``" </s>"``).
    """
    pred = response.strip()
    gold = answer.strip()
    if pred == gold:
        return 1.0
    longest = max(len(pred), len(gold))
    similarity = 1.0 - edit_distance(pred, gold) / longest
    return PARTIAL_CREDIT * similarity
