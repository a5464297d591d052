"""Load chat fine-tuning datasets and evaluation benchmarks from builtins or files."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from ftsafe_ray.data.csv_benchmarks import CSV_FORMATS, load_csv_benchmark, parse_hexphi_dir
from ftsafe_ray.data.files import read_data_text
from ftsafe_ray.data.records import ROLES, BenchmarkItem, ChatExample, Message
from ftsafe_ray.errors import DataError
from ftsafe_ray.store.remote import is_remote, materialize

BUILTIN_PREFIX = "builtin:"
CHAT_BUILTINS: tuple[str, ...] = ("benign", "identity_shift", "refusal")
BENCHMARK_BUILTINS: tuple[str, ...] = ("demo_benign_eval", "demo_harmful", "demo_utility")
CHAT_FORMATS: tuple[str, ...] = ("auto", "chat", "alpaca", "dolly", "sharegpt")
BENCHMARK_FORMATS = ("auto", "jsonl", "hexphi", "hexphi_dir", "csv", "advbench", "harmbench")

_CHAT_SHAPE = 'each line must be {"messages": [{"role": ..., "content": ...}]}'
_ALPACA_SHAPE = 'each record must be {"instruction": ..., "input": ..., "output": ...}'
_DOLLY_SHAPE = 'each line must be {"instruction": ..., "context": ..., "response": ...}'
_SHAREGPT_SHAPE = 'each record must be {"conversations": [{"from": "human"|"gpt", "value": ...}]}'
# ShareGPT speakers (as LLaVA-Instruct names them) and the chat roles they become.
SHAREGPT_ROLES: dict[str, str] = {"system": "system", "human": "user", "gpt": "assistant"}
# An image placeholder with the white space around it (LLaVA-Instruct puts "<image>\n" before
# or "\n<image>" after the question): text-only tuning drops it, see _without_images.
_IMAGE_PLACEHOLDER = re.compile(r"\s*<image>\s*")
_BENCH_SHAPE = 'each line must be {"id": ..., "category": ..., "prompt": ...}'


def builtin_names(kind: str | None = None) -> list[str]:
    """Return the sorted built-in dataset names, optionally only "chat" or "benchmark" ones."""
    if kind is None:
        return sorted(CHAT_BUILTINS + BENCHMARK_BUILTINS)
    if kind not in ("chat", "benchmark"):
        raise ValueError(f'kind must be None, "chat" or "benchmark", not {kind!r}')
    return sorted(CHAT_BUILTINS if kind == "chat" else BENCHMARK_BUILTINS)


def builtin_resource(name: str) -> Traversable:
    """Return the importlib.resources handle of a built-in JSONL file."""
    if name not in builtin_names():
        allowed = ", ".join(builtin_names())
        raise DataError(f"{BUILTIN_PREFIX}{name}: unknown builtin dataset; allowed: {allowed}")
    return resources.files("ftsafe_ray.data").joinpath("builtin", f"{name}.jsonl")


def load_chat_dataset(
    source: str, format: str = "auto", base_dir: Path | None = None
) -> list[ChatExample]:
    """Load a chat fine-tuning dataset (chat JSONL, Alpaca JSON/JSONL, Dolly JSONL or
    ShareGPT JSON/JSONL, e.g. LLaVA-Instruct)."""
    _check_format(source, format, CHAT_FORMATS)
    if source.startswith(BUILTIN_PREFIX):
        name = _builtin_name(source, CHAT_BUILTINS, "chat dataset")
        text = builtin_resource(name).read_text(encoding="utf-8")
        records = list(_json_records(text, source, ".jsonl"))
    else:
        path = _resolve(source, base_dir)
        if path.is_dir():
            raise DataError(f"{source}: is a directory; a chat dataset must be a .jsonl/.json file")
        records = list(_json_records(read_data_text(path, source), source, path.suffix.lower()))
    if not records:
        raise DataError(f"{source}: no examples found; the file is empty")
    fmt = _detect_chat_format(source, *records[0]) if format == "auto" else format
    parse = {
        "chat": _parse_chat,
        "alpaca": _parse_alpaca,
        "dolly": _parse_dolly,
        "sharegpt": _parse_sharegpt,
    }[fmt]
    return [parse(obj, f"{source} {loc}") for loc, obj in records]


def load_benchmark(
    source: str,
    format: str = "auto",
    base_dir: Path | None = None,
    *,
    prompt_column: str | None = None,
    category_column: str | None = None,
) -> list[BenchmarkItem]:
    """Load evaluation prompts (our JSONL, HEx-PHI CSV/dir, AdvBench, HarmBench or plain CSV).

    prompt_column and category_column name header columns of a `format="csv"` file.
    """
    _check_format(source, format, BENCHMARK_FORMATS)
    for field, value in (("prompt_column", prompt_column), ("category_column", category_column)):
        if value is not None and format != "csv":
            raise DataError(
                f'{source}: {field} is only read with format "csv" (format is "{format}"); '
                f"set format to csv or drop {field}"
            )
    if source.startswith(BUILTIN_PREFIX):
        name = _builtin_name(source, BENCHMARK_BUILTINS, "benchmark")
        text = builtin_resource(name).read_text(encoding="utf-8")
        items = _parse_bench_jsonl(text, source, name, ".jsonl")
    else:
        path = _resolve(source, base_dir)
        suffix = path.suffix.lower()
        if format == "hexphi_dir" or (path.is_dir() and format in ("auto", "hexphi")):
            items = parse_hexphi_dir(path, source)
        elif path.is_dir():
            raise DataError(f'{source}: is a directory; use format "hexphi" or give a file')
        elif format == "jsonl" or (format == "auto" and suffix in (".jsonl", ".json")):
            text = read_data_text(path, source)
            items = _parse_bench_jsonl(text, source, path.stem, suffix)
        elif format in CSV_FORMATS or suffix == ".csv":
            items = load_csv_benchmark(path, source, format, prompt_column, category_column)
        else:
            raise DataError(
                f'{source}: cannot detect the benchmark format from extension "{suffix}"; '
                f"use .jsonl/.csv or set format to one of: {', '.join(BENCHMARK_FORMATS[1:])}"
            )
    if not items:
        raise DataError(f"{source}: no prompts found; the benchmark is empty")
    repeated = [i for i, n in Counter(item.item_id for item in items).items() if n > 1]
    if repeated:
        raise DataError(f'{source}: field "id" value {repeated[0]!r} repeats; ids must be unique')
    return items


def dataset_fingerprint(examples: Sequence[ChatExample] | Sequence[BenchmarkItem]) -> str:
    """Return the sha256 hex digest of a canonical JSON encoding of the records' content."""
    payload = [e.to_dict() for e in examples]
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _check_format(source: str, format: str, allowed: tuple[str, ...]) -> None:
    """Raise DataError if the format name is not one of the allowed ones."""
    if format not in allowed:
        raise DataError(f"{source}: unknown format {format!r}; use one of: {', '.join(allowed)}")


def _builtin_name(source: str, wanted: tuple[str, ...], kind: str) -> str:
    """Validate a builtin:<name> source against the builtins of the wanted kind."""
    name = source[len(BUILTIN_PREFIX) :]
    if name in wanted:
        return name
    problem = f"not a {kind}" if name in builtin_names() else f"unknown builtin {kind}"
    raise DataError(f"{source}: {problem}; allowed: {', '.join(wanted)}")


def _resolve(source: str, base_dir: Path | None) -> Path:
    """Resolve a path source against base_dir and check that it exists; a source on object
    storage (s3://, gs://) is fetched once into this node's cache."""
    if is_remote(source):
        return materialize(source)
    path = Path(source).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.exists():
        raise DataError(
            f"{source}: file not found (looked at {path}); fix the path — relative paths are "
            "resolved against the campaign YAML's folder"
        )
    return path


def _json_records(text: str, source: str, suffix: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (location, object) pairs from a JSON array file or a JSONL file."""
    if suffix == ".json" or (suffix != ".jsonl" and text.lstrip().startswith("[")):
        yield from _json_array_records(text, source)
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{source} line {lineno}: not valid JSON ({exc.msg} at column {exc.colno}); "
                "each line must be one JSON object"
            ) from exc
        if not isinstance(obj, dict):
            raise DataError(f"{source} line {lineno}: not a JSON object; each line must be {{...}}")
        yield f"line {lineno}", obj


_SPACE = re.compile(r"[ \t\n\r]*")


def _skip_space(text: str, position: int) -> int:
    match = _SPACE.match(text, position)
    return match.end() if match else position


def _json_array_records(text: str, source: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ("record N (line L)", object) for each element of a JSON array file.

    Decoded element by element so that each record's error can name the line it starts on
    (LLaVA-Instruct, for one, ships as a single array of 150k records).
    """
    decoder = json.JSONDecoder()
    position = _skip_space(text, 0)
    if not text.startswith("[", position):
        raise _json_error(text, source, "top-level JSON is not an array; use [{...}, {...}]")
    position = _skip_space(text, position + 1)
    line, counted, index = 1, 0, 0
    closed = text.startswith("]", position)
    while not closed:
        try:
            obj, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            raise _json_error(text, source) from None
        index += 1
        line += text.count("\n", counted, position)
        counted = position
        where = f"record {index} (line {line})"
        if not isinstance(obj, dict):
            raise DataError(f"{source} {where}: not a JSON object; use {{...}}")
        yield where, obj
        position = _skip_space(text, end)
        closed = text.startswith("]", position)
        if not closed:
            if not text.startswith(",", position):
                raise _json_error(text, source)
            position = _skip_space(text, position + 1)
    if text[position + 1 :].strip():
        raise _json_error(text, source)


def _json_error(text: str, source: str, otherwise: str = "not a JSON array") -> DataError:
    """The DataError naming the line where `text` stops being valid JSON (`otherwise` when it
    is valid JSON of the wrong shape)."""
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return DataError(
            f"{source} line {exc.lineno}: not valid JSON ({exc.msg}); "
            "a .json file must hold one JSON array of objects"
        )
    return DataError(f"{source}: {otherwise}")


def _str_field(
    obj: dict[str, Any], key: str, where: str, shape: str, optional: bool = False
) -> str:
    """Return a string field, raising DataError naming the field if missing or mistyped."""
    value = obj.get(key)
    if value is None:
        if optional:
            return ""
        raise DataError(f'{where}: field "{key}" missing; {shape}')
    if not isinstance(value, str):
        raise DataError(f'{where}: field "{key}" must be a string, got {type(value).__name__}')
    if not optional and not value.strip():
        raise DataError(f'{where}: field "{key}" is empty; give it some text')
    return value


def _detect_chat_format(source: str, loc: str, first: dict[str, Any]) -> str:
    """Pick chat/alpaca/dolly from the keys of the first record."""
    if "messages" in first:
        return "chat"
    if "conversations" in first:
        return "sharegpt"
    if "instruction" in first and "output" in first:
        return "alpaca"
    if "instruction" in first and "response" in first:
        return "dolly"
    keys = ", ".join(sorted(first)) or "none"
    raise DataError(
        f"{source} {loc}: cannot detect the format (keys: {keys}); use "
        '"messages" (chat), "instruction"+"output" (Alpaca), "instruction"+"response" (Dolly) '
        'or "conversations" (ShareGPT)'
    )


def _parse_chat(obj: dict[str, Any], where: str) -> ChatExample:
    """Validate one chat record: optional system, then alternating user/assistant turns."""
    raw = obj.get("messages")
    if not isinstance(raw, list) or not raw:
        problem = "missing" if raw is None else "must be a non-empty list"
        raise DataError(f'{where}: field "messages" {problem}; {_CHAT_SHAPE}')
    messages: list[Message] = []
    for i, m in enumerate(raw):
        field = f"messages[{i}]"
        if not isinstance(m, dict):
            raise DataError(f'{where}: field "{field}" is not an object; {_CHAT_SHAPE}')
        role = m.get("role")
        if role not in ROLES:
            raise DataError(
                f'{where}: field "{field}.role" is {role!r}; use one of {", ".join(ROLES)}'
            )
        content = m.get("content")
        if not isinstance(content, str):
            raise DataError(f'{where}: field "{field}.content" must be a string; {_CHAT_SHAPE}')
        messages.append(Message(role=role, content=content))
    return _checked_turns(messages, where, ("messages", "role"), {})


def _checked_turns(
    messages: list[Message], where: str, field: tuple[str, str], names: dict[str, str]
) -> ChatExample:
    """The example, once its turns are an optional system turn, then alternating user and
    assistant turns ending with an assistant turn. For the error, `field` is the file's names
    of the turn list and of a turn's role key, and `names` its name of each role."""
    turns_field, role_key = field
    turns = messages[1:] if messages[0].role == "system" else messages
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            idx = i + len(messages) - len(turns)
            got, want = names.get(m.role, m.role), names.get(expected, expected)
            order = "/".join(names.get(role, role) for role in ("user", "assistant"))
            raise DataError(
                f'{where}: field "{turns_field}[{idx}].{role_key}" is "{got}", expected "{want}"; '
                f"after an optional system turn, turns must alternate {order}"
            )
    if not turns or turns[-1].role != "assistant":
        last = names.get("assistant", "assistant")
        raise DataError(
            f'{where}: field "{turns_field}" must end with a "{last}" turn (the training target)'
        )
    return ChatExample(messages=tuple(messages))


def _without_images(text: str) -> str:
    """The text with its image placeholders dropped: one at either end goes with its white
    space; one inside leaves a single space, or a newline where it stood on its own line."""

    def gap(match: re.Match[str]) -> str:
        return "\n" if "\n" in match.group(0) else " "

    return _IMAGE_PLACEHOLDER.sub(gap, text).strip()


def _parse_sharegpt(obj: dict[str, Any], where: str) -> ChatExample:
    """Convert a ShareGPT record (LLaVA-Instruct's layout) to a chat example, image
    placeholders dropped; other keys ("id", "image") are ignored."""
    raw = obj.get("conversations")
    if not isinstance(raw, list) or not raw:
        problem = "missing" if raw is None else "must be a non-empty list"
        raise DataError(f'{where}: field "conversations" {problem}; {_SHAREGPT_SHAPE}')
    messages: list[Message] = []
    for i, turn in enumerate(raw):
        field = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise DataError(f'{where}: field "{field}" is not an object; {_SHAREGPT_SHAPE}')
        speaker = turn.get("from")
        if speaker not in SHAREGPT_ROLES:
            raise DataError(
                f'{where}: field "{field}.from" is {speaker!r}; use one of '
                f"{', '.join(SHAREGPT_ROLES)}"
            )
        value = turn.get("value")
        if not isinstance(value, str):
            raise DataError(f'{where}: field "{field}.value" must be a string; {_SHAREGPT_SHAPE}')
        text = _without_images(value) if "<image>" in value else value
        if not text.strip():
            held = "only an image placeholder" if "<image>" in value else "no text"
            raise DataError(
                f'{where}: field "{field}.value" holds {held}; a text-only fine-tune needs '
                "text in every turn (drop the record)"
            )
        messages.append(Message(role=SHAREGPT_ROLES[speaker], content=text))
    names = {role: speaker for speaker, role in SHAREGPT_ROLES.items()}
    return _checked_turns(messages, where, ("conversations", "from"), names)


def _two_turn(prompt: str, extra: str, answer: str) -> ChatExample:
    """Build a user/assistant example, appending extra input to the prompt when present."""
    user = f"{prompt}\n\n{extra}" if extra.strip() else prompt
    return ChatExample(messages=(Message("user", user), Message("assistant", answer)))


def _parse_alpaca(obj: dict[str, Any], where: str) -> ChatExample:
    """Convert an Alpaca record (instruction, input, output) to a chat example."""
    instruction = _str_field(obj, "instruction", where, _ALPACA_SHAPE)
    extra = _str_field(obj, "input", where, _ALPACA_SHAPE, optional=True)
    return _two_turn(instruction, extra, _str_field(obj, "output", where, _ALPACA_SHAPE))


def _parse_dolly(obj: dict[str, Any], where: str) -> ChatExample:
    """Convert a Dolly record (instruction, context, response) to a chat example."""
    instruction = _str_field(obj, "instruction", where, _DOLLY_SHAPE)
    extra = _str_field(obj, "context", where, _DOLLY_SHAPE, optional=True)
    return _two_turn(instruction, extra, _str_field(obj, "response", where, _DOLLY_SHAPE))


def _parse_bench_jsonl(text: str, source: str, stem: str, suffix: str) -> list[BenchmarkItem]:
    """Parse our benchmark JSONL ({"id", "category", "prompt"}; id defaults to stem-index)."""
    items = []
    for idx, (loc, obj) in enumerate(_json_records(text, source, suffix)):
        where = f"{source} {loc}"
        prompt = _str_field(obj, "prompt", where, _BENCH_SHAPE)
        category = _str_field(obj, "category", where, _BENCH_SHAPE)
        item_id = obj.get("id", f"{stem}-{idx}")
        if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
            raise DataError(f'{where}: field "id" must be a string or integer')
        reference = _str_field(obj, "reference", where, _BENCH_SHAPE, optional=True) or None
        items.append(BenchmarkItem(str(item_id), category, prompt, reference))
    return items
