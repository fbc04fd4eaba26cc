"""Filters that reject unusable children before they reach the buffer.

A filter is a function registered in ``FILTERS`` (``@register_filter("name")``) and called as
``fn(child, parent, seen) -> str | None``: it returns a short rejection reason, or None to keep the
child. ``seen`` holds the normalised text (see ``normalize_text``) of the existing prompts plus the
children kept so far in this ``apply_filters`` call. Built-ins: ``empty``, ``unchanged``,
``duplicate``.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Iterable, Sequence

from .registry import FILTERS, register_filter

if TYPE_CHECKING:  # evolve imports this module; importing it back at runtime would be circular
    from .evolve import Child, Parent


def normalize_text(text: str) -> str:
    """Lower-case with runs of whitespace collapsed: the form in which prompts count as equal."""
    return " ".join(text.split()).casefold()


@register_filter("empty")
def reject_empty(child: Child, parent: Parent, seen: set[str]) -> str | None:
    """Reject a child with no visible text."""
    return "empty prompt" if not child.prompt.strip() else None


@register_filter("unchanged")
def reject_unchanged(child: Child, parent: Parent, seen: set[str]) -> str | None:
    """Reject a child equal to its parent up to whitespace and case."""
    return "same as its parent" if normalize_text(child.prompt) == normalize_text(parent.prompt) else None


@register_filter("duplicate")
def reject_duplicate(child: Child, parent: Parent, seen: set[str]) -> str | None:
    """Reject a child equal (up to whitespace and case) to an existing prompt or an earlier child."""
    return "duplicate prompt" if normalize_text(child.prompt) in seen else None


def apply_filters(
    children: Sequence[Child],
    parents: Sequence[Parent],
    names: Sequence[str] = ("empty", "unchanged", "duplicate"),
    existing: Iterable[str] = (),
) -> tuple[list[Child], list[tuple[Child, str]], Counter[str]]:
    """Run the filters ``names`` in order on each child; the first rejection wins.

    ``parents`` is the list given to ``evolve`` (children find theirs by ``parent_index``);
    ``existing`` are prompt texts the children must not duplicate (seeds, buffer). Returns
    ``(kept, rejected, counts)``: rejected pairs carry ``"<filter>: <reason>"`` and ``counts`` maps
    each filter name to how many children it rejected.
    """
    filters = [(name, FILTERS.get(name)) for name in names]
    seen = {normalize_text(text) for text in existing}
    kept: list[Child] = []
    rejected: list[tuple[Child, str]] = []
    counts: Counter[str] = Counter({name: 0 for name in names})
    for child in children:
        parent = parents[child.parent_index]
        for name, fn in filters:
            reason = fn(child, parent, seen)
            if reason is not None:
                rejected.append((child, f"{name}: {reason}"))
                counts[name] += 1
                break
        else:
            kept.append(child)
            seen.add(normalize_text(child.prompt))
    return kept, rejected, counts
