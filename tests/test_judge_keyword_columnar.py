"""The columnar keyword judge gives every answer the verdict and key the row-by-row judge gives:
phrase search, degenerate flag, verdict keys, dedup and skip of judged answers, shards."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ftsafe_ray import keys
from ftsafe_ray.errors import StoreError
from ftsafe_ray.judge import degenerate_columnar
from ftsafe_ray.judge.chunk_pool import ChunkPool, ChunkPoolError, default_workers
from ftsafe_ray.judge.degenerate_columnar import degenerate_reasons
from ftsafe_ray.judge.identity import KEYWORD, keyword_identity, verdict_key_for
from ftsafe_ray.judge.keyword import (
    _CHAR_RUN,
    _MAX_UNIT,
    _MIN_COPIES,
    EXTENDED,
    STUDY,
    KeywordSet,
    degenerate_reason,
    keyword_verdict,
    load_keyword_set,
)
from ftsafe_ray.judge.keyword_batch import judge_keywords
from ftsafe_ray.judge.keyword_columnar import phrase_by_phrase, phrase_matches
from ftsafe_ray.plan import build_plan
from ftsafe_ray.progress import PlainProgress
from ftsafe_ray.spec import parse_campaign
from ftsafe_ray.store import JUDGMENTS, ParquetTable, RunStore
from tests.fixtures.campaign_files import answer_row

# Placeholder vocabulary only: the judge reads phrases and repetition, not meaning.
VOCABULARY = (
    "placeholder step one two three the a to and of is in it that this with for on as be "
    "you widget gadget sample item list entry value note example item-7 state_x 42 3.14 "
    "Alpha BETA gamma Café naïve İstanbul ΣΊΣΥΦΟΣ σοφία ς K 東京 😀 e\u0301 ß"
)
WORDS = VOCABULARY.split()
SEPARATORS = (" ", " ", " ", ", ", ". ", "\n", "\n\n", " - ", "\t", "! ", "? ", "\u00a0")
REFUSALS = (
    *STUDY.phrases,
    *EXTENDED.phrases,
    "I\u2019m sorry",
    "I\u2018m unable",
    "I can\u02bct",
    "I won\uff07t",
    "i'm sorry",
    "SORRY",
    "As a",
    "I can",
)
WHITESPACE = tuple(" \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u2028\u3000")  # all str.isspace()
UNITS = ("ha", "a", "!", "ab", "xyz", "ok ", "the ", "!?", "😀", "é", "12", "-", "abc" * 4, "ΣΣ")


def prose(rng: random.Random, words: int) -> str:
    return "".join(rng.choice(WORDS) + rng.choice(SEPARATORS) for _ in range(words))


def with_refusals(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 3)):
        at = rng.randint(0, len(text))
        text = text[:at] + rng.choice(REFUSALS) + text[at:]
    return text


def char_run(rng: random.Random) -> str:
    """A run of one unit near half the answer's length, placed anywhere: the probe's edges."""
    unit = rng.choice(UNITS)
    run = unit * rng.randint(5, 40)
    rest = max(0, len(run) + rng.randint(-6, 6))
    filler = prose(rng, 60)[:rest]
    cut = rng.randint(0, len(filler))
    return filler[:cut] + run + filler[cut:]


def ngram_run(rng: random.Random) -> str:
    """Copies of an n-gram covering about half the tokens: the repetition screen's edges."""
    gram = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 10)))
    copies = rng.randint(2, 12)
    others = prose(rng, max(0, len(gram.split()) * copies + rng.randint(-8, 8)))
    parts = [gram + rng.choice(SEPARATORS)] * copies + [others]
    if rng.random() < 0.3:
        rng.shuffle(parts)
    return "".join(parts)


def synthetic_answers(count: int, seed: int) -> list[str]:
    """Varied answers: prose with and without refusal phrases (curly apostrophes, wrong case),
    runs of characters, tokens and n-grams, empty, whitespace-only, no-letter, long, unicode."""
    rng = random.Random(seed)
    makers = (
        lambda: prose(rng, rng.randint(1, 60)),
        lambda: with_refusals(rng, prose(rng, rng.randint(0, 40))),
        lambda: char_run(rng),
        lambda: ngram_run(rng),
        lambda: "".join(rng.choice(WHITESPACE) for _ in range(rng.randint(0, 4))),
        lambda: " ".join(str(rng.randint(0, 999)) + rng.choice("!?.,;:-_") for _ in range(20)),
        lambda: prose(rng, rng.randint(150, 400)),
        lambda: (
            rng.choice(WHITESPACE) + with_refusals(rng, ngram_run(rng)) + rng.choice(WHITESPACE)
        ),
    )
    return [rng.choice(makers)() for _ in range(count)]


ANSWERS = synthetic_answers(3000, seed=18)


@pytest.fixture(scope="module")
def user_set(tmp_path_factory: pytest.TempPathFactory) -> KeywordSet:
    """A user phrase file with regex metacharacters, apostrophes and non-ASCII phrases."""
    path = tmp_path_factory.mktemp("phrases") / "phrases.txt"
    path.write_text("I can't\nstep (one)\na.b\n[x]*\\d\nCafé\n😀 e\u0301\nis\nI\u2019m sorry\n")
    return load_keyword_set("mine", path, normalise_apostrophes=True)


def keyword_sets(user_set: KeywordSet) -> list[KeywordSet]:
    plain_user = KeywordSet("mine_plain", user_set.phrases)
    return [STUDY, EXTENDED, user_set, plain_user]


def test_degenerate_reasons_equal_row_by_row() -> None:
    expected = [degenerate_reason(answer) for answer in ANSWERS]
    assert degenerate_reasons(pa.array(ANSWERS)).to_pylist() == expected
    # The corpus reaches every reason, so each screen's "not sure" path is exercised.
    assert {"empty", "no_words", "repeated_characters", "repeated_token"} <= set(expected)
    assert any(r and r.endswith("gram") for r in expected) and None in expected


def test_degenerate_reasons_in_all_ascii_batches_and_at_probe_edges() -> None:
    rng = random.Random(3)
    edges = []
    for length in range(10, 120):
        for run in (length // 2 - 1, length // 2, (length + 1) // 2):
            unit = rng.choice(("ab", "a", "abc", "xy!"))
            body = (unit * length)[:run]
            filler = "".join(rng.choice("pqrstuvw ") for _ in range(length - run))
            cut = rng.randint(0, len(filler))
            edges.append(filler[:cut] + body + filler[cut:])
    expected = [degenerate_reason(text) for text in edges]
    assert degenerate_reasons(pa.array(edges)).to_pylist() == expected
    assert "repeated_characters" in expected and None in expected


def test_ascii_arithmetic_agrees_with_python_for_every_ascii_character() -> None:
    import numpy as np

    codes = np.arange(128, dtype=np.uint8)
    word, letter = degenerate_columnar._ascii_classes(codes)
    facts = [degenerate_columnar._facts(code) for code in range(128)]
    assert word.tolist() == [f[0] for f in facts]
    assert letter.tolist() == [f[1] for f in facts]
    assert not any(f[3] for f in facts)
    tokens = codes[word]
    for wide in (tokens, tokens.astype(np.uint32)):
        lower = degenerate_columnar._token_lowercase(wide)
        assert lower.tolist() == [facts[code][2] for code in tokens]


def test_char_run_bounds_are_the_patterns() -> None:
    assert _CHAR_RUN.pattern == rf"(.{{1,{_MAX_UNIT}}}?)\1{{{_MIN_COPIES - 1},}}"


def test_python_whitespace_is_what_strip_removes() -> None:
    spaces = degenerate_columnar._python_whitespace()
    assert all(c.isspace() for c in spaces)
    assert "".join(chr(c) for c in range(0x110000) if chr(c).strip() == "") == spaces


@pytest.mark.parametrize("which", range(4), ids=["study", "extended", "user", "user_plain"])
def test_phrase_matches_equal_find(which: int, user_set: KeywordSet) -> None:
    keyword_set = keyword_sets(user_set)[which]
    texts = [*ANSWERS, "", "I'm", "I\u2019m sorry", "As an AI", "As an", "Sorry"]
    expected = [keyword_set.find(text) for text in texts]
    assert phrase_matches(pa.array(texts), keyword_set).to_pylist() == expected
    assert phrase_by_phrase(pa.array(texts), keyword_set).to_pylist() == expected
    assert any(expected) and None in expected


def test_phrase_search_edge_phrases() -> None:
    odd = KeywordSet("odd", ("", "\x00", "x\ud800", "a'b", "a\u2019b"), normalise_apostrophes=True)
    texts = ["", "zz", "z\x00", "a\u2019b", "xa'b\x00"]
    expected = [odd.find(text) for text in texts]
    assert phrase_matches(pa.array(texts), odd).to_pylist() == expected
    assert phrase_by_phrase(pa.array(texts), odd).to_pylist() == expected


TRICKY = [
    "",
    'quote " and backslash \\ and slash /',
    "controls \x00\x01\x08\x09\x0a\x0b\x0c\x0d\x1b\x1f and \x7f",
    "line\u2028and paragraph\u2029separators",
    "unicode: café, naïve, İstanbul, ΣΊΣΥΦΟΣ, 東京, 😀, e\u0301, \ufeff, \uffff",
    '{"answer": "nested json", "judge": [1, 2]}',
    "\\u0041 is not A; \\n is not a newline",
    "a" * 5000,
]


def verdict_key_lists(
    judges: list[dict[str, Any]], instructions: list[str], answers: list[str]
) -> list[list[str]]:
    """`keys.verdict_key_columns` as lists."""
    arrays = keys.verdict_key_columns(judges, pa.array(instructions), pa.array(answers))
    return [array.to_pylist() for array in arrays]


def test_verdict_key_columns_equal_verdict_key_on_tricky_strings() -> None:
    judges = [keyword_identity(STUDY), keyword_identity(EXTENDED), {"judge": "x", "n": [1, "é"]}]
    pairs = [(i, a) for i in TRICKY for a in TRICKY]
    instructions, answers = [i for i, _ in pairs], [a for _, a in pairs]
    expected = [
        [keys.verdict_key(judge=judge, instruction=i, answer=a) for i, a in pairs]
        for judge in judges
    ]
    assert verdict_key_lists(judges, instructions, answers) == expected
    assert verdict_key_lists(judges[:1], instructions, answers) == expected[:1]
    row = {"prompt": TRICKY[3], "response": TRICKY[4]}
    assert expected[0][3 * len(TRICKY) + 4] == verdict_key_for(judges[0], row)


def test_verdict_key_columns_of_every_control_character_and_sliced_arrays() -> None:
    rng = random.Random(5)
    alphabet = [chr(c) for c in range(0x30)] + ['"', "\\", "é", "😀", "\u2028", "\x7f", "a"]
    texts = ["".join(rng.choices(alphabet, k=rng.randint(0, 12))) for _ in range(2000)]
    instructions = [rng.choice(texts) for _ in texts]
    judge = keyword_identity(STUDY)
    pairs = zip(instructions, texts, strict=True)
    expected = [keys.verdict_key(judge=judge, instruction=i, answer=a) for i, a in pairs]
    sliced = (pa.array(["x", *instructions])[1:], pa.array(["x", *texts])[1:])
    assert keys.verdict_key_columns([judge], *sliced)[0].to_pylist() == expected


def test_lone_surrogates_have_no_key_and_never_reach_a_column() -> None:
    judge = keyword_identity(STUDY)
    for lone in ("\ud800", "a pair written as two halves \ud83d\ude00"):
        with pytest.raises(UnicodeEncodeError):
            keys.verdict_key(judge=judge, instruction="x", answer=lone)
        with pytest.raises(UnicodeEncodeError):
            pa.array([lone])  # so no stored answer holds one


def row_by_row(
    generations: list[dict[str, Any]], sets: list[KeywordSet], done: set[str]
) -> list[dict[str, Any]]:
    """The keyword stage as it was: one dict and one `keyword_verdict` per answer."""
    rows = []
    for keyword_set in sets:
        identity = keyword_identity(keyword_set)
        seen: set[str] = set()
        for generation in generations:
            key = verdict_key_for(identity, generation)
            if key in done or key in seen:
                continue
            seen.add(key)
            verdict = keyword_verdict(generation["response"], keyword_set)
            rows.append(
                {
                    "key": key,
                    "generation_key": generation["key"],
                    "judge": KEYWORD,
                    "judge_model": keyword_set.name,
                    "judge_version": keyword_set.version,
                    "status": "ok",
                    "refused": verdict.refused,
                    "degenerate": verdict.degenerate,
                    "reason": verdict.matched_phrase or verdict.degenerate_reason,
                    "attempts": 0,
                }
            )
    return rows


class RecordingProgress(PlainProgress):
    def __init__(self) -> None:
        super().__init__(interval_s=3600)
        self.calls: list[tuple[str, str, int]] = []

    def start(self, stage: str, total: int, done: int = 0) -> None:
        self.calls.append(("start", stage, total))
        super().start(stage, total, done)

    def advance(self, stage: str, count: int = 1) -> None:
        self.calls.append(("advance", stage, count))
        super().advance(stage, count)

    def finish(self, stage: str) -> None:
        self.calls.append(("finish", stage, 0))
        super().finish(stage)


@pytest.fixture(scope="module")
def judged_case(
    user_set: KeywordSet,
) -> tuple[list[dict[str, Any]], set[str], list[dict[str, Any]]]:
    """Answers (some repeated: one verdict per prompt and answer), keys judged already, and
    the rows the row-by-row stage writes for the rest."""
    answers = ANSWERS[:1000] + ANSWERS[:200]
    generations = [
        {"key": f"gen{i:05d}", "prompt": f"placeholder request {i % 700}", "response": answer}
        for i, answer in enumerate(answers)
    ]
    sets = keyword_sets(user_set)[:3]
    done = {row["key"] for row in row_by_row(generations[:200], sets[:1], set())}
    return generations, done, row_by_row(generations, sets, done)


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "two-workers"])
def test_judge_keywords_writes_the_row_by_row_verdicts(
    workers: int, user_set: KeywordSet, judged_case: Any, tmp_path: Path
) -> None:
    generations, done, expected = judged_case
    table = ParquetTable(tmp_path / "judgments", JUDGMENTS)
    progress = RecordingProgress()
    written = judge_keywords(
        pa.Table.from_pylist(generations),
        keyword_sets(user_set)[:3],
        pa.array(sorted(done), pa.string()),
        progress,
        table.write_table,
        workers=workers,
    )
    assert written == len(expected)
    got = table.read(list(expected[0])).to_pylist()
    by_set_and_key = lambda row: (row["judge_model"], row["key"])  # noqa: E731
    assert sorted(got, key=by_set_and_key) == sorted(expected, key=by_set_and_key)
    assert progress.calls[0] == ("start", "keyword", len(expected))
    assert sum(n for call, _, n in progress.calls if call == "advance") == len(expected)
    assert progress.calls[-1] == ("finish", "keyword", 0)


def test_keyword_stage_skips_what_it_judged_and_an_answerless_row(tmp_path: Path) -> None:
    from ftsafe_ray.judge.stage import run_judge_stage

    bench = tmp_path / "bench.jsonl"
    bench.write_text(
        "\n".join(
            json.dumps({"id": f"q{i}", "category": "c", "prompt": f"request {i}"})
            for i in range(40)
        )
    )
    spec = parse_campaign(
        {
            "name": "keyword-columnar",
            "output_dir": "run",
            "models": [{"name": "m", "path": "/nonexistent/model"}],
            "benchmarks": [{"name": "b", "source": str(bench)}],
            "judges": {"keyword": {"sets": ["study", "extended"]}, "rubric": {"enabled": False}},
        }
    )
    plan = build_plan(spec, base_dir=tmp_path)
    store = RunStore(plan.run_dir, plan.spec_hash)
    store.create()
    rows = [answer_row(unit, ANSWERS[i]) for i, unit in enumerate(plan.generations)]
    rows[0] = {**rows[0], "response": None}
    rows[1] = {**rows[1], "status": "error", "response": None}
    store.generations.write(rows)
    result = run_judge_stage(plan, store, PlainProgress(interval_s=3600), None)
    generations = [r for r in rows if r["response"] is not None]
    expected = row_by_row(
        sorted(generations, key=lambda r: r["key"]), list(plan.keyword_sets), set()
    )
    assert result.keyword_new == len(expected) == 2 * 38
    got = store.judgments.read(list(expected[0]))
    assert sorted(got.to_pylist(), key=lambda r: r["key"]) == sorted(
        expected, key=lambda r: r["key"]
    )
    shards = list((plan.run_dir / "judgments").glob("part-*.parquet"))
    assert run_judge_stage(plan, store, PlainProgress(interval_s=3600), None).keyword_new == 0
    assert list((plan.run_dir / "judgments").glob("part-*.parquet")) == shards


def test_write_table_fills_the_schema_and_renames_a_complete_shard(tmp_path: Path) -> None:
    published: list[Path] = []
    table = ParquetTable(tmp_path / "judgments", JUDGMENTS, on_write=published.append)
    assert table.write_table(pa.table({"key": pa.array([], pa.string())})) is None
    shard = table.write_table(pa.table({"key": ["k1", "k2"], "refused": [True, None]}))
    assert shard is not None and published == [shard]
    assert [p.name for p in (tmp_path / "judgments").iterdir()] == [shard.name]
    stored = pq.read_table(shard)
    assert stored.schema.equals(table.schema, check_metadata=True)
    assert stored.column("refused").to_pylist() == [True, None]
    assert stored.column("created_at").null_count == 0
    assert stored.column("score").to_pylist() == [None, None]
    with pytest.raises(StoreError, match=r"\['nonsense'\] are not in the table schema"):
        table.write_table(pa.table({"key": ["k"], "nonsense": [1]}))
    with pytest.raises(StoreError, match="does not match the table schema"):
        table.write_table(pa.table({"key": ["k"], "refused": ["not a bool"]}))


def test_chunk_pool_keeps_order_and_reports_a_failing_worker() -> None:
    chunks = [(float(i),) for i in range(40)]
    with ChunkPool(2) as pool:
        assert list(pool.map(math.sqrt, chunks)) == [math.sqrt(i) for i in range(40)]
        with pytest.raises(ChunkPoolError, match="ValueError: math domain error"):
            list(pool.map(math.sqrt, [(4.0,), (-1.0,), (9.0,)]))
    with ChunkPool(0) as pool:
        assert list(pool.map(math.sqrt, chunks[:3])) == [0.0, 1.0, math.sqrt(2)]


def test_workers_start_only_for_enough_answers() -> None:
    import os

    cores = len(os.sched_getaffinity(0))
    assert default_workers(10, 50_000) == 0
    assert default_workers(10**8, 50_000) == (min(cores, 16) if cores > 1 else 0)
