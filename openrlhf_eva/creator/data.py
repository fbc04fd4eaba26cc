"""Reading prompt files and writing JSONL atomically.

``read_prompts`` accepts JSONL (one object per line) or a ``.json`` file holding a list of objects.
Every problem is reported as ``PromptFileError("<file>: row <i>: <what>")`` with a 1-based row: the
line number for JSONL, the list position for ``.json`` (the line number for undecodable bytes or
invalid JSON there, since no row exists yet).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Iterable


class PromptFileError(ValueError):
    """A prompt file that cannot be read; the message names the file and the row."""


def read_prompts(path: str | os.PathLike, prompt_key: str = "prompt", label_key: str | None = None) -> list[dict]:
    """Read prompts from a JSONL or ``.json`` file into ``{"prompt", "label", "metadata"}`` dicts.

    ``metadata`` holds every other field of the row; ``label`` is ``row[label_key]`` (required in
    every row when ``label_key`` is given, else None). Blank JSONL lines are skipped. Raises
    ``PromptFileError`` naming the file and 1-based row for invalid JSON, non-UTF-8 bytes, a row
    that is not an object, a missing key, or a prompt that is not a non-empty string.
    """
    path = os.fspath(path)
    with open(path, "rb") as file:
        data = file.read()

    numbered_rows: list[tuple[int, Any]] = []
    if path.endswith(".json"):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            line = data[: error.start].count(b"\n") + 1
            raise PromptFileError(f"{path}: line {line}: not valid UTF-8 ({error.reason})") from None
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise PromptFileError(f"{path}: line {error.lineno}: invalid JSON ({error.msg})") from None
        if not isinstance(rows, list):
            raise PromptFileError(f"{path}: a .json prompt file must hold a list, got {type(rows).__name__}")
        numbered_rows = list(enumerate(rows, start=1))
    else:
        for row_number, raw_line in enumerate(data.split(b"\n"), start=1):
            try:
                # utf-8-sig drops a byte-order mark, which only ever appears on the first line.
                line = raw_line.decode("utf-8-sig" if row_number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise PromptFileError(f"{path}: row {row_number}: not valid UTF-8 ({error.reason})") from None
            if not line.strip():
                continue
            try:
                numbered_rows.append((row_number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise PromptFileError(f"{path}: row {row_number}: invalid JSON ({error.msg})") from None

    prompts = []
    for row_number, row in numbered_rows:
        where = f"{path}: row {row_number}"
        if not isinstance(row, dict):
            raise PromptFileError(f"{where}: expected a JSON object, got {type(row).__name__}")
        if prompt_key not in row:
            raise PromptFileError(f"{where}: missing prompt key {prompt_key!r} (keys: {sorted(row)})")
        prompt = row[prompt_key]
        if not isinstance(prompt, str):
            raise PromptFileError(f"{where}: prompt {prompt_key!r} must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise PromptFileError(f"{where}: prompt {prompt_key!r} is empty")
        if label_key is not None and label_key not in row:
            raise PromptFileError(f"{where}: missing label key {label_key!r} (keys: {sorted(row)})")
        metadata = {key: value for key, value in row.items() if key not in (prompt_key, label_key)}
        prompts.append({"prompt": prompt, "label": row[label_key] if label_key else None, "metadata": metadata})
    return prompts


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    """Write ``rows`` as JSONL to ``path`` atomically: a crash leaves the old file or none, never half.

    The rows go to a temporary file in the same directory, which is fsynced and then renamed over
    ``path`` with ``os.replace`` (atomic on POSIX and Windows when both are on one file system).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            for row in rows:
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        os.unlink(tmp_path)
        raise
