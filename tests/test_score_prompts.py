"""Prompt scoring: the judge reply parser (malformed replies included) and the score_prompts CLI's
CSV/JSON/PNG outputs on a scripted judge."""

import csv
import json

import pytest

from openrlhf_eva.creator import judge_prompts, parse_judgement
from openrlhf_eva.score_prompts import main, parse_sets


@pytest.mark.parametrize("reply, complexity, quality, topic", [
    ("Complexity: 4\nQuality: 3\nTopic: math", 4.0, 3.0, "math"),
    ("**Complexity**: 2/5\n**Quality**: 5/5\n**Topic**: Coding", 2.0, 5.0, "coding"),
    ('{"complexity": 3, "quality": 4.5, "topic": "science"}', 3.0, 4.5, "science"),
    ("Complexity (1-5): 3\nQuality (1-5): 2\nTopic: astrology", 3.0, 2.0, "other"),
    ("Complexity: 7\nQuality: 0\nTopic: writing", None, None, "writing"),
    ("I cannot rate this prompt.", None, None, None),
    ("Complexity: high\nQuality: 4", None, 4.0, None),
    ("Topic: reasoning and math", None, None, "reasoning"),  # the first topic named wins
    ("", None, None, None),
])
def test_parse_judgement(reply, complexity, quality, topic):
    judgement = parse_judgement(reply)
    assert (judgement.complexity, judgement.quality, judgement.topic) == (complexity, quality, topic)


def test_judge_prompts_batches_and_checks_counts():
    calls = []

    def generate(prompts):
        calls.append(prompts)
        return ["Complexity: 1\nQuality: 2\nTopic: advice"] * len(prompts)

    judgements = judge_prompts(generate, ["How do I tie a tie?", "Prove Fermat's last theorem."])
    assert len(calls) == 1 and "Prove Fermat's last theorem." in calls[0][1] and "Topic: one of math," in calls[0][1]
    assert [(j.complexity, j.quality, j.topic) for j in judgements] == [(1.0, 2.0, "advice")] * 2
    assert judge_prompts(generate, []) == []
    with pytest.raises(ValueError, match="returned 1 judgements for 2 prompts"):
        judge_prompts(lambda prompts: ["x"], ["a", "b"])


def scripted_judge(prompts):
    """Longer prompts score higher; a prompt mentioning 'broken' gets an unreadable reply."""
    replies = []
    for prompt in prompts:
        text = prompt.split("<<<\n", 1)[1].split("\n>>>", 1)[0]
        if "broken" in text:
            replies.append("no idea")
        else:
            size = min(5, len(text.split()))
            replies.append(f"Complexity: {size}\nQuality: {6 - size}\nTopic: {'coding' if 'code' in text else 'math'}")
    return replies


def test_score_prompts_writes_csv_json_and_png(tmp_path):
    seed = tmp_path / "seed.jsonl"
    seed.write_text("\n".join(json.dumps({"prompt": p}) for p in ["add 1+2", "copy 12", "a broken one"]) + "\n")
    evolved = tmp_path / "round1.txt"
    evolved.write_text("write code that adds two long numbers\nexplain the sum of a series step by step\n")
    out = tmp_path / "scores"
    summary = main(["--sets", f"seed={seed}", f"round1={evolved}", "--judge_model", "unused", "--output_dir",
                    str(out), "--batch_size", "2"], generate=scripted_judge)

    seed_stats, round_stats = summary["sets"]["seed"], summary["sets"]["round1"]
    assert list(summary["sets"]) == ["seed", "round1"]
    assert seed_stats["prompts"] == 3 and seed_stats["complexity_mean"] == 2.0 and seed_stats["quality_mean"] == 4.0
    assert seed_stats["complexity_unparsed"] == seed_stats["topic_unparsed"] == 1
    assert round_stats["complexity_mean"] == 5.0 and round_stats["topics"] == {"math": 0.5, "coding": 0.5}
    assert round_stats["complexity_mean"] > seed_stats["complexity_mean"]

    rows = list(csv.DictReader(open(out / "prompt_scores.csv", encoding="utf-8")))
    assert [(r["set"], r["index"], r["complexity"], r["topic"]) for r in rows] == [
        ("seed", "0", "2.0", "math"), ("seed", "1", "2.0", "math"), ("seed", "2", "", ""),
        ("round1", "0", "5.0", "coding"), ("round1", "1", "5.0", "math")]
    assert json.loads((out / "prompt_scores.json").read_text()) == summary
    matplotlib_image = pytest.importorskip("matplotlib.image")
    image = matplotlib_image.imread(out / "prompt_scores.png")
    assert image.shape[0] > 300 and image.shape[1] > 600 and image.std() > 0.05  # a drawn figure, not blank


def test_score_prompts_samples_and_rejects_bad_sets(tmp_path):
    many = tmp_path / "many.txt"
    many.write_text("\n".join(f"prompt number {k}" for k in range(50)) + "\n")
    summary = main(["--sets", f"big={many}", "--judge_model", "x", "--output_dir", str(tmp_path / "o"),
                    "--max_prompts", "7"], generate=scripted_judge)
    assert summary["sets"]["big"]["prompts"] == 7
    with pytest.raises(ValueError, match="--sets takes NAME=FILE"):
        parse_sets(["just_a_file.jsonl"])
    with pytest.raises(ValueError, match="the name 'a' is used twice"):
        parse_sets(["a=x.jsonl", "a=y.jsonl"])
