"""The store's latest-row-per-key rule, vectorised: which stored rows win their key.

A finished row beats an unfinished (error) one whatever their order; among rows of the same
kind the latest `created_at` wins, then the row read last (rows written together share a
timestamp). Most keys have a single row, which wins at once: only keys stored more than once
are sorted, so a table of millions of rows with few retries costs a hash pass, not a sort.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["key_codes", "status_mask", "winner_mask"]

# A missing created_at loses to any timestamp (Arrow sorts nulls last, descending too).
_NO_TIME = np.iinfo(np.int64).min // 2


def key_codes(keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A dense integer per distinct key (by hashing; no sort), one per row."""
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    encoded = pc.dictionary_encode(keys, null_encoding="encode")
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def status_mask(statuses: pa.Array | pa.ChunkedArray, allowed: Iterable[str]) -> np.ndarray:
    """Whether each row's status is one of `allowed` (a null status never is)."""
    value_set = pa.array(sorted(set(allowed)), type=pa.string())
    found = pc.fill_null(pc.is_in(statuses, value_set=value_set), False)
    return np.asarray(found.to_numpy(zero_copy_only=False), dtype=bool)


def winner_mask(
    keys: pa.Array | pa.ChunkedArray,
    created_at: pa.Array | pa.ChunkedArray,
    statuses: pa.Array | pa.ChunkedArray | None = None,
    finished: Iterable[str] | None = None,
) -> np.ndarray:
    """True for the one row per key that the store's rule picks (see the module docstring);
    `finished` (with `statuses`): the statuses that beat any other, None when all rows count
    alike."""
    codes = key_codes(keys)
    repeated = np.bincount(codes)[codes] > 1 if codes.size else np.zeros(0, dtype=bool)
    mask = ~repeated
    if not repeated.any():
        return mask
    rows = np.flatnonzero(repeated)
    times = _times(created_at)[rows]
    done = np.zeros(rows.size, dtype=np.int64)
    if statuses is not None and finished is not None:
        done = status_mask(statuses, finished)[rows].astype(np.int64)
    # np.lexsort sorts by its last key first: key, then finished, latest time, last row first.
    order = np.lexsort((-rows, -times, -done, codes[rows]))
    sorted_codes = codes[rows][order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = sorted_codes[1:] != sorted_codes[:-1]
    mask[rows[order[first]]] = True
    return mask


def _times(created_at: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Timestamps as int64 (their unit's ticks), a missing one as the earliest of all."""
    ticks = pc.cast(created_at, pa.int64())
    return np.asarray(pc.fill_null(ticks, _NO_TIME).to_numpy(zero_copy_only=False))
