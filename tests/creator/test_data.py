import json
import os

import pytest

from openrlhf_eva.creator import PromptFileError, read_prompts, write_jsonl


def test_read_jsonl_with_label_metadata_blank_lines_bom_and_crlf(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(
        "\ufeff".encode() + b'{"question": "1+1?", "answer": "2", "src": "gsm"}\r\n'
        b"\n"
        b'{"question": "caf\xc3\xa9?", "answer": null}\n'
    )
    rows = read_prompts(path, prompt_key="question", label_key="answer")
    assert rows == [
        {"prompt": "1+1?", "label": "2", "metadata": {"src": "gsm"}},
        {"prompt": "caf\u00e9?", "label": None, "metadata": {}},
    ]


def test_read_json_list(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([{"prompt": "a"}, {"prompt": "b", "id": 3}]))
    assert read_prompts(path) == [
        {"prompt": "a", "label": None, "metadata": {}},
        {"prompt": "b", "label": None, "metadata": {"id": 3}},
    ]


@pytest.mark.parametrize(
    "content, label_key, message",
    [
        (b'{"prompt": "ok"}\n{"prompt": "ok2"}\n{"prompt": \n', None, r"row 3: invalid JSON"),
        (b'{"prompt": "ok"}\n{"text": "x"}\n', None, r"row 2: missing prompt key 'prompt' \(keys: \['text'\]\)"),
        (b'{"prompt": "ok"}\n{"prompt": ""}\n', None, r"row 2: prompt 'prompt' is empty"),
        (b'{"prompt": " \\t\\n "}\n', None, r"row 1: prompt 'prompt' is empty"),
        (b'{"prompt": "ok"}\n\n{"prompt": 5}\n', None, r"row 3: prompt 'prompt' must be a string, got int"),
        (b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n', None, r"row 2: not valid UTF-8"),
        (b'["prompt"]\n', None, r"row 1: expected a JSON object, got list"),
        (b'{"prompt": "ok", "y": 1}\n{"prompt": "ok"}\n', "y", r"row 2: missing label key 'y'"),
    ],
)
def test_jsonl_errors_name_file_and_row(tmp_path, content, label_key, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(PromptFileError, match=message) as caught:
        read_prompts(path, label_key=label_key)
    assert str(caught.value).startswith(f"{path}: row ")


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"prompt": "a"}', r"must hold a list, got dict"),
        (b'[{"prompt": "a"},\n {"prompt": "b"},\n {}]', r"row 3: missing prompt key"),
        (b'[{"prompt": "a"},\n {"prompt": }]', r"line 2: invalid JSON"),
        (b'[{"prompt": "a"},\n {"prompt": "\xff"}]', r"line 2: not valid UTF-8"),
    ],
)
def test_json_errors_name_file_and_position(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(PromptFileError, match=message) as caught:
        read_prompts(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_write_jsonl_round_trip_and_creates_directories(tmp_path):
    path = tmp_path / "out" / "rows.jsonl"
    rows = [{"prompt": "\u00e9t\u00e9", "n": 1}, {"prompt": "b", "n": [2]}]
    write_jsonl(path, rows)
    assert path.read_text(encoding="utf-8").splitlines()[0] == '{"prompt": "\u00e9t\u00e9", "n": 1}'
    assert read_prompts(path) == [{"prompt": r["prompt"], "label": None, "metadata": {"n": r["n"]}} for r in rows]


def test_write_jsonl_crash_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"prompt": "old"}])

    def rows_then_crash():
        yield {"prompt": "new"}
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError, match="crash while writing"):
        write_jsonl(path, rows_then_crash())
    assert path.read_text() == '{"prompt": "old"}\n'
    assert os.listdir(tmp_path) == ["rows.jsonl"]
    with pytest.raises(TypeError):
        write_jsonl(path, [{"bad": object()}])
    assert path.read_text() == '{"prompt": "old"}\n'
