"""Refusal-phrase search over an Arrow column: `KeywordSet.find` of every answer at once."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ftsafe_ray.judge.keyword import CURLY_APOSTROPHES, KeywordSet


def phrase_matches(texts: pa.Array | pa.ChunkedArray, keyword_set: KeywordSet) -> pa.Array:
    """`keyword_set.find` of every text: the phrase that occurs earliest (the longest of those
    starting there), or null.

    One regular expression does it: the phrases as alternatives, longest first. RE2 (Arrow's
    engine) finds the leftmost match and, there, prefers the earlier alternative, which is
    the longest phrase starting there: the rule of `find`. Apostrophe normalisation becomes a
    character class in place of each ASCII apostrophe (so the found text is normalised back
    to the phrase), and a phrase holding a curly apostrophe, which never occurs in normalised
    text, is left out."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    phrases = _matchable_phrases(keyword_set)
    if not phrases:
        return pa.nulls(len(texts), pa.string())
    normalise = keyword_set.normalise_apostrophes
    alternatives = "|".join(
        _regex_literal(p, normalise) for p in sorted(phrases, key=len, reverse=True)
    )
    try:
        found = pc.struct_field(pc.extract_regex(texts, f"(?P<phrase>{alternatives})"), [0])
    except pa.ArrowInvalid:  # RE2 refuses patterns beyond its memory budget: huge phrase lists
        return phrase_by_phrase(texts, keyword_set)
    return _normalised(found) if normalise else found


def phrase_by_phrase(texts: pa.Array, keyword_set: KeywordSet) -> pa.Array:
    """`phrase_matches` by one substring search per phrase: slower, for any number of phrases."""
    phrases = _matchable_phrases(keyword_set)
    if keyword_set.normalise_apostrophes:
        texts = _normalised(texts)
    lengths = np.array([len(phrase) for phrase in phrases], np.int64)
    best = np.full(len(texts), -1, np.int64)
    best_at = np.zeros(len(texts), np.int64)
    for index, phrase in enumerate(phrases):
        # Byte offsets order matches as character offsets do (UTF-8 keeps order).
        at = pc.find_substring(texts, phrase).to_numpy(zero_copy_only=False)
        longer = lengths[index] > lengths[best.clip(0)]
        better = (at >= 0) & ((best < 0) | (at < best_at) | ((at == best_at) & longer))
        best[better], best_at[better] = index, at[better]
    return pa.array(phrases, pa.string()).take(pa.array(best, mask=best < 0))


def _matchable_phrases(keyword_set: KeywordSet) -> list[str]:
    """The set's distinct phrases that can occur in valid UTF-8 text (after normalisation)."""
    phrases = []
    for phrase in dict.fromkeys(keyword_set.phrases):
        try:
            phrase.encode()
        except UnicodeEncodeError:  # a lone surrogate: never in text read from the store
            continue
        if keyword_set.normalise_apostrophes and any(a in phrase for a in CURLY_APOSTROPHES):
            continue
        phrases.append(phrase)
    return phrases


def _regex_literal(phrase: str, apostrophes: bool) -> str:
    """RE2 syntax matching exactly `phrase`; with `apostrophes`, any apostrophe for "'"."""
    parts = []
    for char in phrase:
        if apostrophes and char == "'":
            parts.append("[" + "".join(_escaped(a) for a in ("'", *CURLY_APOSTROPHES)) + "]")
        elif char.isascii() and char.isalnum():
            parts.append(char)
        else:
            parts.append(_escaped(char))
    return "".join(parts)


def _escaped(char: str) -> str:
    return f"\\x{{{ord(char):x}}}"


def _normalised(texts: pa.Array) -> pa.Array:
    """`normalise_apostrophes` of every text."""
    for apostrophe in CURLY_APOSTROPHES:
        texts = pc.replace_substring(texts, apostrophe, "'")
    return texts
