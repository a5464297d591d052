"""Verdict keys of many stored answers at once: `keys.verdict_key`, a column at a time.

The report finds an answer's verdict by its content key, a SHA-256 of the judge's identity, the
prompt and the answer in canonical JSON. Built row by row that JSON costs more than the hash;
here the text goes into the JSON as it is stored (Arrow's UTF-8 bytes, joined column-wise),
and only the few values JSON must escape (a quote, a backslash, a control character such as a
newline) pass through `keys.canonical_json` one by one.
"""

from __future__ import annotations

import binascii
import hashlib
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ftsafe_ray import keys

__all__ = ["verdict_key_columns"]

# JSON escapes control characters (bytes below 0x20), the quote and the backslash. In UTF-8
# these bytes only ever stand for themselves: every byte of a multi-byte character is >= 0x80.
_CONTROL_BELOW, _QUOTE, _BACKSLASH = 0x20, ord('"'), ord("\\")


def verdict_key_columns(
    identities: Sequence[Mapping[str, Any]], prompts: pa.Array, responses: pa.Array
) -> list[pa.Array]:
    """For each judge identity, `keys.verdict_key(judge=identity, instruction=prompt,
    answer=response)` of every row, as a string array."""
    prompts, responses = _plain(prompts), _plain(responses)
    instructions, answers = _json_text(prompts), _json_text(responses)
    missing = np.flatnonzero(
        np.asarray(pc.or_(pc.is_null(prompts), pc.is_null(responses)).to_numpy(False))
    )
    columns = []
    for identity in identities:
        judge = keys.canonical_json(dict(identity))
        joined = pc.binary_join_element_wise(
            'verdict\n{"answer":"', answers, '","instruction":"', instructions,
            f'","judge":{judge}}}', "",
        )  # fmt: skip
        digests = _digests(joined)
        if missing.size:  # `null` is not a quoted string: those keys are built the slow way
            slow = [
                keys.verdict_key(
                    judge=dict(identity),
                    instruction=prompts[int(row)].as_py(),
                    answer=responses[int(row)].as_py(),
                )
                for row in missing
            ]
            mask = np.zeros(len(digests), dtype=bool)
            mask[missing] = True
            digests = pc.replace_with_mask(digests, pa.array(mask), pa.array(slow, pa.string()))
        columns.append(digests)
    return columns


def _digests(messages: pa.StringArray) -> pa.StringArray:
    """The content key of each message: the first KEY_LENGTH hex digits of its SHA-256. The
    messages are hashed straight from Arrow's buffer, and the keys assembled in one buffer."""
    count = len(messages)
    _, offsets_buffer, data_buffer = messages.buffers()
    if count == 0 or offsets_buffer is None or data_buffer is None:
        return pa.array([None] * count, pa.string())
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[
        messages.offset : messages.offset + count + 1
    ].tolist()
    data = memoryview(data_buffer)
    sha256 = hashlib.sha256
    digests = b"".join(
        [sha256(data[start:end]).digest() for start, end in itertools.pairwise(offsets)]
    )
    width = keys.KEY_LENGTH // 2  # digest bytes per key (KEY_LENGTH hex digits, an even number)
    kept = np.frombuffer(digests, dtype=np.uint8).reshape(count, -1)[:, :width]
    text = binascii.hexlify(kept.tobytes())
    key_offsets = np.arange(0, (count + 1) * keys.KEY_LENGTH, keys.KEY_LENGTH, dtype=np.int32)
    hex_keys = pa.StringArray.from_buffers(
        count, pa.py_buffer(key_offsets.tobytes()), pa.py_buffer(text)
    )
    valid = messages.is_valid()
    if messages.null_count == 0:
        return hex_keys
    return pc.if_else(valid, hex_keys, pa.scalar(None, pa.string()))


def _plain(values: pa.Array | pa.ChunkedArray) -> pa.StringArray:
    """One contiguous string array (not chunked, not large_string)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values.cast(pa.string()) if values.type != pa.string() else values


def _json_text(values: pa.StringArray) -> pa.StringArray:
    """Each string as JSON writes it between its quotes (`keys.canonical_json`)."""
    escaped = _needs_escaping(values)
    if not escaped.any():
        return values
    rows = np.flatnonzero(escaped)
    texts = values.take(pa.array(rows)).to_pylist()
    inner = [None if t is None else keys.canonical_json(t)[1:-1] for t in texts]
    return pc.replace_with_mask(values, pa.array(escaped), pa.array(inner, type=pa.string()))


def _needs_escaping(values: pa.StringArray) -> np.ndarray:
    """Whether each string holds a byte JSON escapes, found on the array's data buffer at once."""
    flags = np.zeros(len(values), dtype=bool)
    _, offsets_buffer, data_buffer = values.buffers()
    if len(values) == 0 or data_buffer is None or offsets_buffer is None:
        return flags
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[
        values.offset : values.offset + len(values) + 1
    ]
    data = np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0] : offsets[-1]]
    # Most texts escape nothing: a quick look (a minimum, two byte searches) usually ends here.
    found = (
        [np.flatnonzero(data < _CONTROL_BELOW)] if data.min(initial=255) < _CONTROL_BELOW else []
    )
    text = data.tobytes()
    found += [
        np.flatnonzero(data == byte) for byte in (_QUOTE, _BACKSLASH) if chr(byte).encode() in text
    ]
    if found:
        positions = np.concatenate(found) + offsets[0]
        flags[np.searchsorted(offsets, positions, side="right") - 1] = True
    return flags
