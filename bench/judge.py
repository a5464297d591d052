"""Judge pool benchmark: achieved rate against a rate-limited local endpoint.

    python bench/judge.py --quick        # ~3 minutes on 2 cores
    python bench/judge.py                # ~6 minutes

A local OpenAI-compatible server (tests/fixtures/judge_server.py) enforces a requests/min and
a tokens/min limit over a sliding 60 s window and answers after 0.3-2 s. The judge stage runs
as `ftsafe run` runs it (real Ray, two judge actors sharing the cluster-wide budget, Parquet
rows), then a reference-style loop judges one request at a time with the same client. It
prints the figures and, as the last line, a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ftsafe_ray.judge.hexphi import build_rubric_messages  # noqa: E402
from ftsafe_ray.judge.limiter import estimate_request_tokens  # noqa: E402
from tests.fixtures.judge_server import JudgeServer  # noqa: E402

RPM = 600
TPM = 500_000
LATENCY_S = (0.3, 2.0)
MAX_TOKENS = 128


def answers(n: int, seed: int = 0) -> list[str]:
    """Answers of very different lengths, so tokens/min binds for part of the run."""
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
    return [" ".join(rng.choices(words, k=rng.choice([10, 60, 250, 700]))) for _ in range(n)]


def campaign(tmp: Path, n: int, base_url: str) -> Path:
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
                "requests_per_minute": RPM,
                "tokens_per_minute": TPM,
            },
        },
    }
    path = tmp / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def store_generations(plan, texts: list[str]):
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


def limited_server() -> JudgeServer:
    server = JudgeServer().start()
    server.set_rate_limit(RPM, TPM, window_s=60.0)
    server.set_latency(*LATENCY_S)
    return server


def admitted_rates(server: JudgeServer) -> tuple[float, float, float]:
    """Requests/min and tokens/min the server admitted, over the span it admitted them."""
    times = [t for t, _ in server.admitted]
    span = max(times) - min(times)
    tokens = sum(cost for _, cost in server.admitted)
    return len(times) / span * 60, tokens / span * 60, span


def run_pool(n: int) -> dict:
    from ftsafe_ray.judge.stage import rubric_access, run_judge_stage
    from ftsafe_ray.pipeline import load_plan, start_ray
    from ftsafe_ray.progress import PlainProgress

    server = limited_server()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = campaign(Path(tmp), n, server.base_url)
            plan = load_plan(path)
            texts = answers(n)
            store = store_generations(plan, texts)
            start_ray(None)
            access = rubric_access(plan.spec.judges.rubric, {})
            started = time.monotonic()
            result = run_judge_stage(plan, store, PlainProgress(interval_s=20), access)
            seconds = time.monotonic() - started
            rows = [r for r in store.judgments.rows() if r["judge"] == "rubric"]
        rpm, tpm, span = admitted_rates(server)
        costs = [
            estimate_request_tokens(build_rubric_messages(f"request {i}", t), MAX_TOKENS)
            for i, t in enumerate(texts)
        ]
        return {
            "requests": n,
            "rows": len(rows),
            "new": result.rubric_new,
            "ok": sum(r["status"] == "ok" for r in rows),
            "errors": sum(r["status"] == "error" for r in rows),
            "lost": n - len({r["key"] for r in rows}),
            "http_requests": len(server.chat_requests),
            "rejected_429": server.rejected,
            "seconds": seconds,
            "span_s": span,
            "admitted_rpm": rpm,
            "admitted_tpm": tpm,
            "mean_request_tokens": sum(costs) / n,
        }
    finally:
        server.stop()


def run_sequential(seconds: float) -> dict:
    """The reference code's way: one request at a time, sleep and retry on any error."""
    import openai

    server = limited_server()
    client = openai.OpenAI(base_url=server.base_url, api_key="k", timeout=30)
    texts = answers(10_000, seed=1)
    done = failed = 0
    started = time.monotonic()
    try:
        for i, text in enumerate(texts):
            if time.monotonic() - started >= seconds:
                break
            for _ in range(5):
                try:
                    client.chat.completions.create(
                        model="bench-judge",
                        messages=build_rubric_messages(f"request {i}", text),  # type: ignore[arg-type]
                        temperature=0,
                        max_tokens=MAX_TOKENS,
                    )
                    done += 1
                    break
                except openai.OpenAIError:
                    time.sleep(1)
            else:
                failed += 1
        elapsed = time.monotonic() - started
    finally:
        client.close()
        server.stop()
    return {"done": done, "failed": failed, "seconds": elapsed, "rpm": done / elapsed * 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (~3 minutes)")
    args = parser.parse_args()
    n = 1000 if args.quick else 2500
    print(f"server: {RPM} requests/min, {TPM:,} tokens/min (60 s window), latency {LATENCY_S} s")
    pool = run_pool(n)
    seq = run_sequential(30.0 if args.quick else 60.0)
    utilization = max(pool["admitted_rpm"] / RPM, pool["admitted_tpm"] / TPM)
    rate_429 = pool["rejected_429"] / max(pool["http_requests"], 1)
    pool_rpm = pool["ok"] / pool["seconds"] * 60
    print(
        f"pool: {pool['requests']} requests → {pool['rows']} rows ({pool['ok']} ok, "
        f"{pool['errors']} error, {pool['lost']} lost) in {pool['seconds']:.1f}s; "
        f"mean request {pool['mean_request_tokens']:.0f} tokens"
    )
    print(
        f"pool: server admitted {pool['admitted_rpm']:.0f} requests/min "
        f"({pool['admitted_rpm'] / RPM:.1%} of {RPM}) and {pool['admitted_tpm']:,.0f} tokens/min "
        f"({pool['admitted_tpm'] / TPM:.1%} of {TPM:,}) over {pool['span_s']:.0f}s; "
        f"429s {pool['rejected_429']}/{pool['http_requests']} ({rate_429:.2%})"
    )
    print(
        f"sequential loop: {seq['done']} done, {seq['failed']} failed in {seq['seconds']:.0f}s "
        f"= {seq['rpm']:.0f} requests/min; pool end-to-end {pool_rpm:.0f} requests/min"
    )
    summary = {
        "utilization": round(utilization, 4),
        "rate_429": round(rate_429, 4),
        "lost": pool["lost"],
        "vs_sequential": round(pool_rpm / seq["rpm"], 2),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
