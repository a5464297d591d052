"""Judge pool benchmark: share of a provider's limit the real judge stage uses, per behaviour.

    python bench/judge.py                       # 4 behaviours × 2 binding limits, ~12 minutes
    python bench/judge.py --behaviours second --binding requests --requests 300   # one quick run

A local OpenAI-compatible server (tests/fixtures/judge_server.py, real HTTP) enforces a
requests/min and a tokens/min limit the way a real provider does, in one of these behaviours:

  minute          a sliding 60 s window; x-ratelimit-* headers describe the minute
  second          token buckets one second deep (a 60th of each limit); the limit header is
                  per minute, remaining and reset describe the current second
  second-ms       the same buckets; every header describes the second (limit = a 60th);
                  429s carry only retry-after-ms
  second-charged  the same buckets as `second`; a rejected request still takes its cost

It answers each admitted request after a uniform 0.3-2 s. The judge stage runs as `ftsafe run`
runs it (real Ray, two judge actors sharing the cluster-wide budget, Parquet rows) over
answers of 800-1,600 characters, once where requests/min binds and once where tokens/min
binds. As in `ftsafe run`, the judge pool is started before the answers are stored (the
pipeline starts it while generation runs), then the stage is timed from its call with the
answers stored to its end. Per run it prints: steady share of the binding limit (admissions
between the 10th and 90th percentile admission time ÷ that span), overall share (everything
admitted ÷ the stage's wall time, endpoint check, reading the answers and the last replies
included), the same from the endpoint's first request, 429 share, lost rows, duplicate
admissions, the stage's time and when its first request reached the endpoint. The last line
is a JSON summary: `min_steady_utilization`, `min_overall_utilization` (worst over all runs),
`max_rate_429`, `lost`, `duplicates`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.judge_server import JudgeServer  # noqa: E402

LATENCY_S = (0.3, 2.0)
MAX_TOKENS = 128
ANSWER_CHARS = (800, 1600)
# (requests/min, tokens/min): the first binds in "requests", the second in "tokens" (a request
# costs ~1,100 tokens, so 600,000 tokens/min fit ~550 requests/min, under the 1,200).
LIMITS = {"requests": (600, 6_000_000), "tokens": (1200, 600_000)}
BEHAVIOURS: dict[str, dict[str, Any]] = {
    "minute": {"mode": "sliding", "window_s": 60.0},
    "second": {"mode": "bucket", "window_s": 1.0},
    "second-ms": {
        "mode": "bucket",
        "window_s": 1.0,
        "header_limit": "window",
        "retry_after": "ms",
    },
    "second-charged": {"mode": "bucket", "window_s": 1.0, "count_rejected": True},
}
TARGETS = {"steady": 0.97, "overall": 0.93, "rate_429": 0.01}


def answers(n: int, seed: int = 0) -> list[str]:
    """Answers of 800-1,600 characters."""
    rng = random.Random(seed)
    words = [
        "the",
        "model",
        "explains",
        "each",
        "step",
        "of",
        "the",
        "request",
        "in",
        "some",
        "detail",
        "and",
        "adds",
    ]
    out = []
    for _ in range(n):
        length = rng.randint(*ANSWER_CHARS)
        text = ""
        while len(text) < length:
            text += rng.choice(words) + " "
        out.append(text[:length])
    return out


def campaign(tmp: Path, n: int, base_url: str, rpm: int, tpm: int) -> Path:
    import yaml

    bench = tmp / "bench.jsonl"
    bench.write_text(
        "\n".join(
            json.dumps({"id": f"q{i}", "category": f"c{i % 11}", "prompt": f"request {i}"})
            for i in range(n)
        )
    )
    spec = {
        "name": "judge-bench",
        "output_dir": "run",
        "models": [{"name": "m", "path": "/bench/none"}],
        "benchmarks": [{"name": "b", "source": str(bench)}],
        "judges": {
            "keyword": {"enabled": False},
            "rubric": {
                "enabled": True,
                "base_url": base_url,
                "model": "bench-judge",
                "api_key_env": "FTSAFE_BENCH_NO_KEY",
                "num_actors": 2,
                "max_concurrency": 16,
                "max_retries": 5,
                "timeout_s": 30,
                "max_tokens": MAX_TOKENS,
                "requests_per_minute": rpm,
                "tokens_per_minute": tpm,
            },
        },
    }
    path = tmp / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def store_generations(plan: Any, texts: list[str]) -> Any:
    from ftsafe_ray.store import RunStore

    store = RunStore(plan.run_dir, plan.spec_hash)
    store.create()
    store.generations.write(
        [
            {
                "key": unit.key, "adapter_key": unit.target.adapter_key,
                "model": unit.target.model, "arm": unit.target.arm,
                "benchmark": unit.benchmark, "benchmark_kind": unit.benchmark_kind,
                "item_id": unit.item.item_id, "category": unit.item.category,
                "prompt": unit.item.prompt, "response": text,
            }
            for unit, text in zip(plan.generations, texts, strict=True)
        ]
    )  # fmt: skip
    return store


def limited_server(behaviour: str, rpm: int, tpm: int) -> JudgeServer:
    settings = dict(BEHAVIOURS[behaviour])
    scale = settings.pop("window_s") / 60.0
    server = JudgeServer().start()
    server.set_rate_limit(round(rpm * scale), round(tpm * scale), window_s=60.0 * scale, **settings)
    server.set_latency(*LATENCY_S)
    return server


@dataclass(frozen=True)
class Run:
    behaviour: str
    binding: str
    requests: int
    ok: int
    errors: int
    lost: int
    duplicates: int
    http_requests: int
    rejected: int
    seconds: float
    steady: float
    overall: float
    overall_at_endpoint: float
    first_request_s: float

    @property
    def rate_429(self) -> float:
        return self.rejected / max(self.http_requests, 1)


def steady_share(admitted: list[tuple[float, float]], per_minute: int) -> float:
    """Admissions (count or tokens) between the 10th and 90th percentile admission time ÷ that
    span, as a share of the limit."""
    times = sorted(t for t, _ in admitted)
    low, high = times[len(times) // 10], times[(9 * len(times)) // 10]
    inside = sum(w for t, w in admitted if low <= t <= high)
    return inside / (high - low) * 60.0 / per_minute


def run_pool(behaviour: str, binding: str, n: int) -> Run:
    from ftsafe_ray.judge.stage import rubric_access, run_judge_stage, start_judge_pool
    from ftsafe_ray.pipeline import load_plan, start_ray
    from ftsafe_ray.progress import PlainProgress

    rpm, tpm = LIMITS[binding]
    server = limited_server(behaviour, rpm, tpm)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            plan = load_plan(campaign(Path(tmp), n, server.base_url, rpm, tpm))
            store = store_generations(plan, answers(n))
            start_ray(None)
            access = rubric_access(plan.spec.judges.rubric, {})
            # Started ahead, as the pipeline starts it while generation runs.
            pool = start_judge_pool(plan, access)
            assert pool is not None and pool.ready(timeout_s=120)
            try:
                started = time.monotonic()
                run_judge_stage(plan, store, PlainProgress(interval_s=30), access, pool=pool)
                ended = time.monotonic()
            finally:
                pool.close()
            seconds = ended - started
            rows = [r for r in store.judgments.rows() if r["judge"] == "rubric"]
        first = min(r.at for r in server.chat_requests)
        prompts = Counter(p for p in server.admitted_prompts if p.startswith("request "))
        limit = rpm if binding == "requests" else tpm
        weighted = [(t, 1.0 if binding == "requests" else c) for t, c in server.admitted]
        return Run(
            behaviour=behaviour,
            binding=binding,
            requests=n,
            ok=sum(r["status"] == "ok" for r in rows),
            errors=sum(r["status"] == "error" for r in rows),
            lost=n - len({r["key"] for r in rows if r["status"] != "error"}),
            duplicates=sum(count - 1 for count in prompts.values()),
            http_requests=len(server.chat_requests),
            rejected=server.rejected,
            seconds=seconds,
            steady=steady_share(weighted, limit),
            overall=sum(w for _, w in weighted) / seconds * 60.0 / limit,
            overall_at_endpoint=sum(w for _, w in weighted) / (ended - first) * 60.0 / limit,
            first_request_s=first - started,
        )
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600, help="requests per run")
    parser.add_argument("--behaviours", nargs="+", choices=list(BEHAVIOURS), default=None)
    parser.add_argument("--binding", nargs="+", choices=list(LIMITS), default=None)
    args = parser.parse_args()
    runs = []
    print(f"latency {LATENCY_S} s, answers of {ANSWER_CHARS} characters, {args.requests} requests")
    print(
        "| behaviour | binding | steady | overall | overall from 1st request | 429s | lost "
        "| duplicates | rows ok/error "
        "| stage s | first request at s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for behaviour in args.behaviours or BEHAVIOURS:
        for binding in args.binding or LIMITS:
            run = run_pool(behaviour, binding, args.requests)
            runs.append(run)
            rpm, tpm = LIMITS[binding]
            limit = f"{rpm}/min" if binding == "requests" else f"{tpm:,} tokens/min"
            print(
                f"| {behaviour} | {binding} ({limit}) | {run.steady:.1%} | {run.overall:.1%} "
                f"| {run.overall_at_endpoint:.1%} "
                f"| {run.rejected}/{run.http_requests} ({run.rate_429:.2%}) | {run.lost} "
                f"| {run.duplicates} | {run.ok}/{run.errors} | {run.seconds:.1f} "
                f"| {run.first_request_s:.1f} |",
                flush=True,
            )
    summary = {
        "min_steady_utilization": round(min(r.steady for r in runs), 4),
        "min_overall_utilization": round(min(r.overall for r in runs), 4),
        "max_rate_429": round(max(r.rate_429 for r in runs), 4),
        "lost": sum(r.lost for r in runs),
        "duplicates": sum(r.duplicates for r in runs),
        "targets": TARGETS,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
