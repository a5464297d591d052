"""The ShareGPT loader (LLaVA-Instruct's layout): roles, system turns, image placeholders,
errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ftsafe_ray.data import ChatExample, Message, load_chat_dataset
from ftsafe_ray.errors import DataError


def record(*turns: tuple[str, str], **extra: Any) -> dict[str, Any]:
    """A ShareGPT record of (from, value) turns, with LLaVA's other keys when given."""
    return {**extra, "conversations": [{"from": who, "value": text} for who, text in turns]}


GOOD = [
    record(
        ("human", "<image>\nWhat is in the placeholder picture?"),
        ("gpt", "A placeholder shape."),
        ("human", "What colour is it?"),
        ("gpt", "Placeholder grey."),
        id="0001",
        image="0001.jpg",
    ),
    record(
        ("system", "Placeholder system text."),
        ("human", "Describe the placeholder scene.\n<image>"),
        ("gpt", "A placeholder <image> tag inside text is dropped too."),
    ),
    record(("human", "A text-only placeholder question"), ("gpt", "  Kept as it is.\n")),
    record(("human", "First placeholder line.\n<image>\nSecond line."), ("gpt", "Placeholder.")),
]


def expected() -> list[ChatExample]:
    return [
        ChatExample(
            (
                Message("user", "What is in the placeholder picture?"),
                Message("assistant", "A placeholder shape."),
                Message("user", "What colour is it?"),
                Message("assistant", "Placeholder grey."),
            )
        ),
        ChatExample(
            (
                Message("system", "Placeholder system text."),
                Message("user", "Describe the placeholder scene."),
                Message("assistant", "A placeholder tag inside text is dropped too."),
            )
        ),
        ChatExample(
            (
                Message("user", "A text-only placeholder question"),
                Message("assistant", "  Kept as it is.\n"),
            )
        ),
        ChatExample(
            (
                Message("user", "First placeholder line.\nSecond line."),
                Message("assistant", "Placeholder."),
            )
        ),
    ]


def test_a_json_array_as_llava_instruct_ships_is_read_by_auto_detection(tmp_path: Path) -> None:
    (tmp_path / "llava.json").write_text(json.dumps(GOOD, indent=2))
    assert load_chat_dataset("llava.json", base_dir=tmp_path) == expected()


def test_jsonl_with_the_explicit_format(tmp_path: Path) -> None:
    (tmp_path / "sharegpt.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GOOD))
    assert load_chat_dataset("sharegpt.jsonl", "sharegpt", base_dir=tmp_path) == expected()


BAD = [
    (record(("human", "q"), ("bot", "a")), "field \"conversations[1].from\" is 'bot'; use one of"),
    (record(("gpt", "a")), 'field "conversations[0].from" is "gpt", expected "human"'),
    (record(("human", "q"), ("human", "q2")), 'field "conversations[1].from" is "human"'),
    (record(("human", "q")), 'field "conversations" must end with a "gpt" turn'),
    (record(("human", "<image>\n"), ("gpt", "a")), "holds only an image placeholder"),
    (record(("human", "q"), ("gpt", "   ")), 'field "conversations[1].value" holds no text'),
    ({"conversations": [{"from": "human", "value": 3}]}, '"conversations[0].value" must be a'),
    ({"conversations": []}, 'field "conversations" must be a non-empty list'),
    ({"conversations": ["human: q"]}, 'field "conversations[0]" is not an object'),
]


@pytest.mark.parametrize(("bad", "message"), BAD, ids=[m for _, m in BAD])
def test_a_bad_record_is_one_line_naming_file_line_and_field(
    tmp_path: Path, bad: dict[str, Any], message: str
) -> None:
    rows = [GOOD[0], GOOD[2], bad]
    (tmp_path / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as jsonl_error:
        load_chat_dataset("x.jsonl", "sharegpt", base_dir=tmp_path)
    assert "\n" not in str(jsonl_error.value)
    assert str(jsonl_error.value).startswith("x.jsonl line 3: ")
    assert message in str(jsonl_error.value)
    # A JSON array names the record and the line it starts on.
    (tmp_path / "x.json").write_text(json.dumps(rows, indent=1))
    with pytest.raises(DataError) as array_error:
        load_chat_dataset("x.json", base_dir=tmp_path)
    start = (tmp_path / "x.json").read_text().count("\n", 0, _third_record_offset(tmp_path))
    assert str(array_error.value).startswith(f"x.json record 3 (line {start + 1}): ")
    assert message in str(array_error.value)


def _third_record_offset(tmp_path: Path) -> int:
    text = (tmp_path / "x.json").read_text()
    # indent=1 puts each top-level record's opening brace on its own line as " {".
    starts = [i + 1 for i in range(len(text)) if text.startswith("\n {", i)]
    return starts[2]


def test_a_broken_json_array_names_the_line(tmp_path: Path) -> None:
    text = json.dumps(GOOD, indent=2)
    (tmp_path / "cut.json").write_text(text[: len(text) // 2])
    with pytest.raises(DataError, match=r"cut\.json line \d+: not valid JSON"):
        load_chat_dataset("cut.json", base_dir=tmp_path)
