"""Content keys: one hash of everything that determines a unit of work's result."""

from __future__ import annotations

import binascii
import hashlib
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

KEY_LENGTH = 20


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal content always hashes equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_key(kind: str, payload: dict[str, Any]) -> str:
    """A short hex digest of a kind tag and its payload."""
    digest = hashlib.sha256(f"{kind}\n{canonical_json(payload)}".encode()).hexdigest()
    return digest[:KEY_LENGTH]


def finetune_key(
    *,
    model: dict[str, Any],
    dataset_hash: str,
    size: int | str,
    mix: list[dict[str, Any]],
    system_prompt: str | None,
    lora: dict[str, Any],
    train: dict[str, Any],
    seed: int,
) -> str:
    """Key of one LoRA fine-tune: base model, data content, recipe, hyperparameters and seed."""
    return content_key(
        "finetune",
        {
            "model": model,
            "dataset": dataset_hash,
            "size": size,
            "mix": mix,
            "system_prompt": system_prompt,
            "lora": lora,
            "train": train,
            "seed": seed,
        },
    )


def base_key(model: dict[str, Any]) -> str:
    """Key of the un-tuned base model (the baseline 'adapter')."""
    return content_key("base", {"model": model})


def generation_key(
    *, adapter_key: str, messages: list[dict[str, str]], sampling: dict[str, Any], seed: int
) -> str:
    """Key of one generation: which weights, the exact conversation and the decoding settings."""
    return content_key(
        "generation",
        {"adapter": adapter_key, "messages": messages, "sampling": sampling, "seed": seed},
    )


def verdict_key(*, judge: dict[str, Any], instruction: str, answer: str) -> str:
    """Key of one verdict: the judge's identity and settings, the instruction and the answer."""
    return content_key("verdict", {"judge": judge, "instruction": instruction, "answer": answer})


# The encoder `json.dumps(ensure_ascii=False)` applies to every string it writes.
_json_string: Callable[[str], str] = json.encoder.encode_basestring


def verdict_key_columns(
    judges: Sequence[Mapping[str, Any]], instructions: pa.Array, answers: pa.Array
) -> list[pa.Array]:
    """`verdict_key` of every (instruction, answer) pair of two Arrow string columns without
    nulls, under each judge: one string array per judge, the same keys byte for byte.

    No payload dict per pair: `canonical_json` sorts the payload's keys as answer,
    instruction, judge, so the hashed text is a fixed prefix, the answer and the instruction
    as json writes them (built here in Arrow), then the judge's canonical JSON, the same for
    every pair. Judges share the hash of all before their part.
    """
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(instructions)  # few distinct instructions: write each once
    heads = pc.binary_join_element_wise(
        'verdict\n{"answer":',
        _json_strings(answers),
        ',"instruction":',
        _json_strings(encoded.dictionary).take(encoded.indices),
        "",
    )
    tails = [f',"judge":{canonical_json(dict(judge))}}}'.encode() for judge in judges]
    return _digests(heads, tails)


# What `json.dumps(ensure_ascii=False)` writes for the control characters it names; any other
# below 0x20 it writes as \u00XX, and it escapes nothing else but '"' and backslash.
_NAMED_CONTROLS = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _json_strings(texts: pa.Array) -> pa.Array:
    """`json.dumps(text, ensure_ascii=False)` of every string: quoted, with backslash, '"' and
    the named control characters escaped in Arrow; a string holding another control character
    (rare) is written by json itself."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    data, offsets = _utf8_buffers(texts)
    # UTF-8 writes every character below 0x80 as that one byte, and no other byte below 0x80.
    special = np.flatnonzero((data < 0x20) | (data == ord('"')) | (data == ord("\\")))
    escape = _rows_of(special, offsets)
    found = data[special]
    named = np.isin(found, np.frombuffer("".join(_NAMED_CONTROLS).encode(), np.uint8))
    by_json = _rows_of(special[(found < 0x20) & ~named], offsets)
    escaped = texts
    if escape.any():
        chosen = texts.filter(pa.array(escape))
        for char, escape_as in (("\\", "\\\\"), ('"', '\\"'), *_NAMED_CONTROLS.items()):
            chosen = pc.replace_substring(chosen, char, escape_as)
        escaped = pc.replace_with_mask(texts, pa.array(escape), chosen)
    quoted = pc.binary_join_element_wise('"', escaped, '"', "")
    if by_json.any():
        mask = pa.array(by_json)
        written = [_json_string(text) for text in texts.filter(mask).to_pylist()]
        quoted = pc.replace_with_mask(quoted, mask, pa.array(written, pa.string()))
    return quoted


def _utf8_buffers(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A string array's UTF-8 bytes and its offsets into them (from 0)."""
    import numpy as np
    import pyarrow as pa

    large = pa.types.is_large_string(texts.type)
    offsets = np.frombuffer(texts.buffers()[1], np.int64 if large else np.int32)
    offsets = offsets[texts.offset : texts.offset + len(texts) + 1].astype(np.int64)
    buffer = texts.buffers()[2]
    data = np.frombuffer(buffer, np.uint8) if buffer is not None else np.zeros(0, np.uint8)
    return data[offsets[0] : offsets[-1]], offsets - offsets[0]


def _rows_of(positions: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Which rows hold any of these byte positions, as a mask."""
    import numpy as np

    rows = np.zeros(len(offsets) - 1, bool)
    rows[np.searchsorted(offsets, positions, side="right") - 1] = True
    return rows


def _digests(texts: pa.Array, tails: list[bytes]) -> list[pa.Array]:
    """Per tail, the key of each string's UTF-8 bytes followed by that tail, as a string array
    (made from one buffer of hex digits, not a string object per key)."""
    data, offsets = _utf8_buffers(texts)
    view, sha256, size = data.data, hashlib.sha256, KEY_LENGTH // 2  # bytes per key (even)
    digests: list[list[bytes]] = [[] for _ in tails]
    for start, end in itertools.pairwise(offsets.tolist()):
        shared = sha256(view[start:end])
        for tail, out in zip(tails, digests, strict=True):
            digest = shared.copy() if len(tails) > 1 else shared
            digest.update(tail)
            out.append(digest.digest()[:size])
    return [_hex_strings(b"".join(out), len(texts)) for out in digests]


def _hex_strings(digests: bytes, count: int) -> pa.Array:
    """`count` strings of KEY_LENGTH hex digits, from their bytes laid end to end."""
    import numpy as np
    import pyarrow as pa

    offsets = np.arange(count + 1, dtype=np.int32) * KEY_LENGTH
    hexed = binascii.hexlify(digests)
    return pa.Array.from_buffers(
        pa.string(), count, [None, pa.py_buffer(offsets), pa.py_buffer(hexed)]
    )
