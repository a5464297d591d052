"""`degenerate_reason` over an Arrow column of answers: the same reason for every answer.

The row-by-row function spends milliseconds an answer on its backtracking character-run regex
and its n-gram counters. Here NumPy screens a batch of answers at once with tests that are
exact *necessary* conditions of a "repeated_..." reason: an answer that passes both screens
gets the reason the screens prove (None, "empty" or "no_words"); the few that do not
(repetitive text, some short answers) go through `degenerate_reason` itself. So no answer's
reason depends on a screen being clever, only on its being sound; each says why it is.

Every measure is in code points of the stripped answer, as Python's `str` counts them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ftsafe_ray.judge.keyword import (
    _LETTER,
    _MAX_NGRAM,
    _MAX_UNIT,
    _MIN_COPIES,
    _MIN_TOKENS_FOR_REPETITION,
    _WORD,
    degenerate_reason,
)

# Answers screened together: bounds the NumPy arrays (a few bytes per character each).
BATCH_ROWS = 1024
# Probe windows hold two copies of the longest unit a character run can repeat.
_WINDOW = 2 * _MAX_UNIT
# Token buckets per answer for the repetition screen, and the hash's shift to reach them.
_BUCKETS = 256
_BUCKET_SHIFT = np.uint32(32 - 8)
_MIN_REPEATS = 3  # copies an n-gram needs before `degenerate_reason` counts its share
_SIGMA = 0x3A3  # lowercases to σ or ς depending on its neighbours


@dataclass(frozen=True)
class _Chars:
    """A batch of stripped answers as one array of characters, with the facts the screens
    read, each asked of the same regexes and `str.lower` as `degenerate_reason` asks."""

    codes: np.ndarray  # code points: uint8 for an all-ASCII batch, else uint32
    bounds: np.ndarray  # row r is codes[bounds[r] : bounds[r + 1]]
    word: np.ndarray  # bool: in _WORD's class, so part of a token
    letter: np.ndarray  # bool: in _LETTER's class
    unsafe: np.ndarray  # where word characters have a longer or context-dependent lowercase


def degenerate_reasons(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """`degenerate_reason` of every text, as a string array (null where it returns None).

    The texts must hold no nulls.
    """
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if texts.null_count:
        raise ValueError("degenerate_reasons: null texts have no reason")
    reasons: list[str | None] = []
    for start in range(0, len(texts), BATCH_ROWS):
        reasons.extend(_batch_reasons(texts.slice(start, BATCH_ROWS)))
    return pa.array(reasons, pa.string())


def _batch_reasons(texts: pa.Array) -> list[str | None]:
    """Reasons of one batch: proved by the screens, or `degenerate_reason`'s where they cannot."""
    chars = _chars(pc.utf8_trim(texts, characters=_python_whitespace()))
    lengths = np.diff(chars.bounds)
    rows = np.flatnonzero(lengths > 0)
    has_letter = np.zeros(len(texts), bool)
    if rows.size:
        has_letter[rows] = np.logical_or.reduceat(chars.letter, chars.bounds[rows])
    unsure = _char_run_suspects(chars) | _repetition_suspects(chars, rows)
    reasons: list[str | None] = [None] * len(texts)
    for row in np.flatnonzero(lengths == 0):
        reasons[row] = "empty"
    for row in np.flatnonzero((lengths > 0) & ~has_letter):
        reasons[row] = "no_words"
    for row in np.flatnonzero(unsure & has_letter):
        reasons[row] = degenerate_reason(texts[int(row)].as_py())
    return reasons


@functools.cache
def _python_whitespace() -> str:
    """Every character `str.strip()` removes: Arrow's trim then strips exactly as Python does."""
    return "".join(c for c in map(chr, range(0x110000)) if c.isspace())


def _chars(stripped: pa.Array) -> _Chars:
    """The batch's characters and their facts. An all-ASCII batch is read as its UTF-8 bytes;
    any other is decoded once, its non-ASCII characters looked up one distinct code at a time."""
    large = pa.types.is_large_string(stripped.type)
    offsets = np.frombuffer(stripped.buffers()[1], np.int64 if large else np.int32)
    offsets = offsets[stripped.offset : stripped.offset + len(stripped) + 1].astype(np.int64)
    data = stripped.buffers()[2]
    raw = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    raw = raw[offsets[0] : offsets[-1]]
    if raw.size == 0 or raw.max() < 0x80:
        return _Chars(raw, offsets - offsets[0], *_ascii_classes(raw), np.zeros(0, np.intp))
    codes = np.frombuffer(raw.tobytes().decode("utf-8").encode("utf-32-le"), np.uint32)
    lengths = pc.utf8_length(stripped).to_numpy(zero_copy_only=False)
    bounds = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    word, letter = _ascii_classes(codes)
    high = np.flatnonzero(codes >= 0x80)
    facts = _facts_of(codes[high])
    word[high], letter[high] = facts[0], facts[1]
    return _Chars(codes, bounds, word, letter, high[facts[0] & facts[3]])


def _ascii_classes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Word and letter flags of ASCII code points, by arithmetic (the tests check it against
    `_facts` for every ASCII character); False for any other."""
    letter = ((codes | 0x20) - ord("a")) < 26
    return letter | ((codes - ord("0")) < 10), letter


def _token_lowercase(codes: np.ndarray) -> np.ndarray:
    """The lowercase of token (word) characters as `_facts` gives it: an ASCII one is a letter
    or a digit, whose lowercase sets bit 5 (digits have it set); others are looked up."""
    lower = codes | 0x20
    if codes.dtype != np.uint8:
        high = np.flatnonzero(codes >= 0x80)
        if high.size:
            lower[high] = _facts_of(codes[high])[2]
    return lower


def _facts_of(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`_facts` of many code points as arrays, asked once per distinct code point."""
    present, which = np.unique(codes, return_inverse=True)
    word, letter, lower, unsafe = zip(*(_facts(int(code)) for code in present), strict=True)
    return (
        np.array(word, bool)[which],
        np.array(letter, bool)[which],
        np.array(lower, np.uint32)[which],
        np.array(unsafe, bool)[which],
    )


@functools.lru_cache(maxsize=65536)
def _facts(code: int) -> tuple[bool, bool, int, bool]:
    """A character's word flag, letter flag, lowercase code point and unsafe flag."""
    char = chr(code)
    low = char.lower()
    return (
        _WORD.match(char) is not None,
        _LETTER.match(char) is not None,
        ord(low) if len(low) == 1 else code,
        len(low) != 1 or code == _SIGMA,
    )


def _char_run_suspects(chars: _Chars) -> np.ndarray:
    """Rows that may hold a character run of at least half their length; no other row does.

    Why it is exact: a run `degenerate_reason` finds is a unit of k ≤ 12 characters repeated
    m ≥ 10 times, a stretch [a, a+M) with text[i] == text[i+k] for a ≤ i < a+M-k. It counts
    when M ≥ L/2 (L: the stripped length), so only rows with L ≥ 10 can have one, with
    k ≤ L // 10. Let w = min(24, L // 2) and s = L // 2 - w + 1 ≥ 1. Probing at 0, s, 2s, ...:
    the first probe q ≥ a has q ≤ a + s - 1, so q + w ≤ a + L // 2 ≤ a + M and the window
    [q, q+w) lies inside the stretch, where it has period k. A row none of whose windows has
    a period k ≤ min(12, L // 10) holds no such run. Natural text fails this within a few
    characters. Window places past w (in short rows) are masked, never compared.
    """
    lengths = np.diff(chars.bounds)
    rows = np.flatnonzero(lengths >= _MIN_COPIES)
    suspects = np.zeros(len(lengths), bool)
    if rows.size == 0:
        return suspects
    length = lengths[rows]
    half = length // 2
    width = np.minimum(_WINDOW, half)
    step = half - width + 1
    count = (length - width) // step + 1
    probe_row = np.repeat(np.arange(rows.size), count)
    nth = np.arange(probe_row.size) - np.repeat(np.cumsum(count) - count, count)
    start = chars.bounds[rows][probe_row] + nth * step[probe_row]
    columns = np.arange(_WINDOW)
    window = chars.codes[np.minimum(start[:, None] + columns, chars.codes.size - 1)]
    outside = columns >= width[probe_row][:, None]
    longest_unit = np.minimum(_MAX_UNIT, length // _MIN_COPIES)[probe_row]
    periodic = np.zeros(probe_row.size, bool)
    for unit in range(1, _MAX_UNIT + 1):
        # First the window's first character against the next unit's (inside the window, as
        # unit ≤ L // 10 < w), then all of it for the few probes that pass.
        maybe = np.flatnonzero((window[:, 0] == window[:, unit]) & (unit <= longest_unit))
        same = (window[maybe, unit:] == window[maybe, :-unit]) | outside[maybe, unit:]
        periodic[maybe[same.all(axis=1)]] = True
    suspects[rows[probe_row[periodic]]] = True
    return suspects


def _repetition_suspects(chars: _Chars, rows: np.ndarray) -> np.ndarray:
    """Rows whose n-gram test may call them repetitive; every other row's test says None.

    `rows`: the non-empty rows. Why it is exact: with T ≥ 10 tokens the test flags a row when,
    for some n ≤ N = min(10, T // 3), c ≥ 3 non-overlapping copies of one n-gram cover
    n·c ≥ T / 2 tokens; so c ≥ t = max(3, ⌈T / 2N⌉). Each of the n-gram's at most n distinct
    (lowercased) tokens occurs in every copy, so at least t times, and together they fill the
    ≥ T / 2 covered places. Counting tokens in 256 buckets by a hash of their lowercase form
    only merges tokens, never splits one, so at most N buckets of at least t tokens each then
    hold at least T / 2: a row whose N fullest buckets, counting only buckets of t or more,
    hold fewer is not repetitive. Rows with fewer than 10 tokens never are. Where a token has
    a character whose lowercase depends on its neighbours (Σ) or is longer (İ), the hash of
    per-character lowercases might split equal tokens, so such rows are suspects.
    """
    starts, lasts, tokens = _tokens(chars, rows)
    total = np.zeros(len(chars.bounds) - 1, np.int64)
    total[rows] = tokens
    suspects = np.zeros(total.size, bool)
    suspects[np.searchsorted(chars.bounds, chars.unsafe, side="right") - 1] = True
    cell = np.repeat(np.arange(total.size) * _BUCKETS, total) + _bucket(chars.codes, starts, lasts)
    suspects |= 2 * _fullest_buckets(np.bincount(cell), total) >= total
    return suspects & (total >= _MIN_TOKENS_FOR_REPETITION)


def _fullest_buckets(counts: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Per row (`counts` holds 256 buckets a row, `total` its tokens): the tokens in its
    N = min(10, T // 3) fullest buckets among those holding t = max(3, ⌈T / 2N⌉) or more."""
    longest = np.clip(total // 3, 1, _MAX_NGRAM)
    least = np.maximum(_MIN_REPEATS, -(-total // (2 * longest)))
    cells = np.flatnonzero(counts >= _MIN_REPEATS)
    row, held = cells // _BUCKETS, counts[cells]
    kept = held >= least[row]
    row, held = row[kept], held[kept]
    # Fullest first within each row: sort on the row, then on the count downwards.
    order = np.argsort((row << 32) | (0xFFFFFFFF - held))
    row, held = row[order], held[order]
    rank = np.arange(row.size) - np.searchsorted(row, row)
    kept = rank < longest[row]
    return np.bincount(row[kept], weights=held[kept], minlength=total.size).astype(np.int64)


def _tokens(chars: _Chars, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each token's first and last character, in order, and the number of tokens in each of
    `rows` (the non-empty rows): tokens are maximal runs of word characters within a row."""
    word = chars.word
    opens = np.empty_like(word)
    closes = np.empty_like(word)
    if word.size:
        np.greater(word[1:], word[:-1], out=opens[1:])  # a word character after a non-word one
        np.greater(word[:-1], word[1:], out=closes[:-1])
        firsts, lasts = chars.bounds[rows], chars.bounds[rows + 1] - 1
        opens[firsts] = word[firsts]
        closes[lasts] = word[lasts]
    starts = np.flatnonzero(opens)
    before = np.searchsorted(starts, chars.bounds)
    return starts, np.flatnonzero(closes), np.diff(before)[rows]


def _bucket(codes: np.ndarray, starts: np.ndarray, lasts: np.ndarray) -> np.ndarray:
    """A bucket in [0, 256) from a token's length and the lowercase of its first two and last
    characters: equal lowercase tokens always share one."""
    longer = lasts > starts
    mixed = (lasts - starts).astype(np.uint32) * np.uint32(0x165667B1)
    mixed += _token_lowercase(codes[starts]) * np.uint32(0x9E3779B1)
    mixed += _token_lowercase(codes[starts + longer]) * np.uint32(0x85EBCA77)
    mixed += _token_lowercase(codes[lasts]) * np.uint32(0xC2B2AE3D)
    mixed ^= mixed >> np.uint32(15)
    mixed *= np.uint32(0x27D4EB2F)
    return (mixed >> _BUCKET_SHIFT).astype(np.intp)
