"""Scale benchmark: today's figures for a campaign of a million answers, with no model run.

    python bench/scale.py --quick      # ~200,000 answers, a few minutes on 2 cores
    python bench/scale.py              # ~1,000,000 answers

A synthetic grid, 8 base models × (54 fine-tunes + base) × N prompts (6 arms × sizes 10/50/100
× seeds 1/2/3; a harmful and a benign benchmark), is written as a campaign file with local
data files; model paths are dummies, since nothing loads a model. Every fine-tune is stored as
trained and every answer is written straight into the run directory (shards of 256 rows, as
the generate stage's buffer writes them; each answer distinct, built from the built-in refusals
and benign answers, 60-2,000 characters). Then, as a user would meet them:

  plan_s                    build_plan from the campaign file (load_plan)
  keyword_judge_rows_per_s  the real keyword judge stage (rubric off) over every stored answer:
                            answers ÷ the stage's wall time (reading the answers included)
  compact_s                 `ftsafe compact RUN_DIR` once the answers are stored, as `ftsafe
                            run` compacts once generation ends (status_before_compaction_s:
                            `ftsafe status` before it; compact_at_end_s: again after judging)
  status_s                  `ftsafe status RUN_DIR`, a subprocess
  report_s, report_peak_rss_mb  `ftsafe report RUN_DIR --no-files`, a subprocess (its own
                            peak RSS)
  rerun_s                   `ftsafe run` of the finished campaign: nothing to do, a subprocess
                            (starts its local Ray, reads the store, reports)
  overhead_rows_per_s       rows/s through Ray actors into Parquet with an instant backend:
                            the real generate stage with an echo actor for the generator,
                            1 model × base × --overhead-units prompts, at batch_size 16 (the
                            default) and 256

The last line is a JSON summary of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

MODELS = 8
ARMS = 6
SIZES = (10, 50, 100)
SEEDS = (1, 2, 3)
TARGETS_PER_MODEL = ARMS * len(SIZES) * len(SEEDS) + 1  # + base
SHARD_ROWS = 256  # ShardBuffer's default: the shard size the generate stage writes
BENIGN_SHARE = 0.2
TARGETS = {
    "plan_s": ("≤", 30.0),
    "keyword_judge_rows_per_s": ("≥", 50_000.0),
    "status_s": ("≤", 5.0),
    "report_s": ("≤", 15.0),
    "report_peak_rss_mb": ("≤", 2048.0),
    "rerun_s": ("≤", 60.0),
    "overhead_rows_per_s": ("≥", 2_000.0),
}


def answer_pool(size: int = 997, seed: int = 0) -> list[str]:
    """Refusals (40%, the built-in refusal answers) and compliances of 60-2,000 characters made
    of the built-in benign and identity-shift answers: real English, as the judge will read."""
    rng = random.Random(seed)
    builtin = ROOT / "ftsafe_ray" / "data" / "builtin"

    def answers(name: str) -> list[str]:
        lines = (builtin / name).read_text().splitlines()
        return [json.loads(line)["messages"][-1]["content"] for line in lines if line.strip()]

    refusals = answers("refusal.jsonl")
    sentences = answers("benign.jsonl") + answers("identity_shift.jsonl")
    pool = []
    for _ in range(size):
        if rng.random() < 0.4:
            pool.append(rng.choice(refusals))
            continue
        length = rng.randint(60, 2000)
        text = ""
        while len(text) < length:
            text += rng.choice(sentences) + " "
        pool.append(text[:length])
    return pool


def write_campaign(directory: Path, prompts: int, models: int = MODELS) -> Path:
    """The synthetic campaign file and its local data; returns the campaign's path."""
    import yaml

    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    for arm in range(ARMS):
        lines = [
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"task {arm}.{i}: summarise paragraph {i}"},
                        {"role": "assistant", "content": f"summary {i} of arm {arm}"},
                    ]
                }
            )
            for i in range(max(SIZES) + 20)
        ]
        (data / f"d{arm}.jsonl").write_text("\n".join(lines) + "\n")
    benign = max(1, round(prompts * BENIGN_SHARE)) if prompts > 1 else 0
    for name, count in (("harmful", prompts - benign), ("benign", benign)):
        lines = [
            json.dumps(
                {
                    "id": f"{name}{i}",
                    "category": f"category_{i % 11}",
                    "prompt": f"placeholder {name} request number {i}: describe the steps",
                }
            )
            for i in range(count)
        ]
        (data / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    spec: dict[str, Any] = {
        "name": "scale-bench",
        "output_dir": "run",
        "models": [{"name": f"m{i}", "path": f"/bench/no-model/m{i}"} for i in range(models)],
        "datasets": [{"name": f"d{a}", "source": f"data/d{a}.jsonl"} for a in range(ARMS)],
        "finetunes": [
            {"name": f"arm{a}", "dataset": f"d{a}", "sizes": list(SIZES)} for a in range(ARMS)
        ],
        "seeds": list(SEEDS),
        "benchmarks": [{"name": "harmful", "source": "data/harmful.jsonl"}]
        + ([{"name": "benign", "source": "data/benign.jsonl", "kind": "benign"}] if benign else []),
        "generation": {"check_adapters": False},
        "judges": {"keyword": {"sets": ["study"]}, "rubric": {"enabled": False}},
    }
    path = directory / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def fill_store(plan: Any) -> Any:
    """Record the plan as `ftsafe run` does, every fine-tune as trained, and an answer to every
    unit, written in shards as the generate stage writes them."""
    from ftsafe_ray.generate.requests import GenerationResult
    from ftsafe_ray.generate.stage import _row
    from ftsafe_ray.judge.identity import keyword_set_identities
    from ftsafe_ray.store import RunStore

    store = RunStore(plan.run_dir, plan.spec_hash)
    store.freeze_spec(plan.spec.model_dump(mode="json"), plan.spec_hash)
    store.freeze_plan(plan.unit_labels(), keyword_set_identities(plan.keyword_sets))
    finetunes = {unit.key: unit for unit in plan.finetunes}
    store.finetunes.write(
        [
            {
                "key": key, "model": unit.model, "arm": unit.arm, "dataset": unit.dataset,
                "size": unit.size, "seed": unit.seed, "status": "ok",
                "adapter_path": store.adapter_location(key), "train_examples": unit.size,
                "train_steps": unit.size, "train_seconds": 1.0,
            }
            for key, unit in finetunes.items()
        ]
    )  # fmt: skip
    pool = answer_pool()
    units = list({unit.key: unit for unit in plan.generations}.values())
    for start in range(0, len(units), SHARD_ROWS):
        rows = []
        for offset, unit in enumerate(units[start : start + SHARD_ROWS]):
            # Unique per unit, as real answers are: verdict keys cover the answer's text.
            text = f"{pool[(start + offset) % len(pool)]} [{start + offset}]"
            result = GenerationResult(unit.key, text, 40, len(text) // 4, "stop")
            rows.append(_row(unit, result, plan))
        store.generations.write(rows)
    return store


# Runs the command as its own child and reports its wall time and peak RSS: the peak must be
# read by a small parent, since a child forked from this (large) process inherits its RSS
# high-water mark in ru_maxrss.
_MEASURE = """\
import resource, subprocess, sys, time
started = time.perf_counter()
code = subprocess.call(sys.argv[2:])
seconds = time.perf_counter() - started
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
open(sys.argv[1], "w").write(f"{seconds} {peak_kb}")
sys.exit(code)
"""


def timed_command(args: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run a command; its wall seconds, its own peak RSS in MB and its output."""
    with tempfile.NamedTemporaryFile("r", suffix=".measure") as measured:
        done = subprocess.run(
            [sys.executable, "-c", _MEASURE, measured.name, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}")
        seconds, peak_kb = measured.read().split()
    return float(seconds), int(peak_kb) / 1024, done.stdout  # ru_maxrss: kilobytes on Linux


class EchoGenerator:
    """A generator that answers at once: what is left is the stage's own cost."""

    def generate(self, requests: list[Any], *_: object) -> list[Any]:
        from ftsafe_ray.generate.requests import GenerationResult

        return [
            GenerationResult(r.request_id, "placeholder answer", 3, 2, "stop") for r in requests
        ]


def overhead_rows_per_s(directory: Path, units: int, batch_size: int) -> float:
    """The real generate stage with the echo actor in place of the Generator; rows/s."""
    import yaml

    from ftsafe_ray.generate import stage as generate_stage
    from ftsafe_ray.pipeline import load_plan, start_ray
    from ftsafe_ray.progress import PlainProgress
    from ftsafe_ray.store import RunStore

    directory.mkdir(parents=True)
    path = write_campaign(directory, units, models=1)
    spec = yaml.safe_load(path.read_text())
    spec.update(finetunes=[], datasets=[])
    spec["generation"]["batch_size"] = batch_size
    path.write_text(yaml.safe_dump(spec))
    plan = load_plan(path)
    store = RunStore(plan.run_dir, plan.spec_hash)
    store.create()
    ray = start_ray(None)
    settings = plan.spec.generation
    actor_class = ray.remote(num_cpus=settings.num_cpus, max_restarts=0)(EchoGenerator)
    generate_stage._generator_factory = lambda plan, model: actor_class.remote  # type: ignore[assignment]
    started = time.perf_counter()
    result = generate_stage.run_generate_stage(plan, store, PlainProgress(interval_s=60))
    seconds = time.perf_counter() - started
    assert result.generated == len(plan.generations), result
    return result.generated / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~200,000 answers (default ~1M)")
    parser.add_argument("--prompts", type=int, help="prompts per target (overrides the size)")
    parser.add_argument("--overhead-units", type=int, default=20_000)
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    prompts = args.prompts or (455 if args.quick else 2273)
    work = args.dir or Path(tempfile.mkdtemp(prefix="ftsafe-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {}
    try:
        figures = measure(work, prompts, args.overhead_units)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_table(figures)
    print(json.dumps(figures))


def measure(work: Path, prompts: int, overhead_units: int) -> dict[str, Any]:
    from ftsafe_ray.judge.stage import run_judge_stage
    from ftsafe_ray.pipeline import load_plan
    from ftsafe_ray.progress import PlainProgress

    campaign = write_campaign(work / "campaign", prompts)
    started = time.perf_counter()
    plan = load_plan(campaign)
    plan_s = time.perf_counter() - started
    units = len({unit.key for unit in plan.generations})
    print(f"{units:,} answers: {len(plan.targets)} targets × {prompts} prompts", flush=True)

    started = time.perf_counter()
    store = fill_store(plan)
    write_s = time.perf_counter() - started
    shards = len(list((plan.run_dir / "generations").glob("part-*.parquet")))
    print(f"stored in {write_s:.0f} s ({shards:,} shards)", flush=True)

    cli = [sys.executable, "-m", "ftsafe_ray.cli"]
    # As written by the generate stage (thousands of small shards): the figures without
    # compaction, side by side with those after it below.
    raw_status_s, _, _ = timed_command([*cli, "status", str(plan.run_dir)])
    print(f"status before compaction: {raw_status_s:.1f} s", flush=True)
    # What `ftsafe run` does once generation ends, before judging (store/compaction.py).
    compact_s, compact_rss, output = timed_command([*cli, "compact", str(plan.run_dir)])
    print(f"compact: {compact_s:.1f} s, {compact_rss:.0f} MB: {output.strip()}", flush=True)
    compacted = len(list((plan.run_dir / "generations").glob("part-*.parquet")))

    started = time.perf_counter()
    judged = run_judge_stage(plan, store, PlainProgress(interval_s=60), None)
    keyword_s = time.perf_counter() - started
    assert judged.keyword_new == units, judged
    store.write_manifest(campaign=plan.spec.name, spec_hash=plan.spec_hash)
    print(f"keyword judge: {keyword_s:.1f} s", flush=True)
    # What `ftsafe run` does at its end: the verdicts' shards merged too.
    compact_end_s, _, output = timed_command([*cli, "compact", str(plan.run_dir)])
    print(f"compact at the end: {compact_end_s:.1f} s: {output.strip()}", flush=True)

    status_s, status_rss, _ = timed_command([*cli, "status", str(plan.run_dir)])
    print(f"status: {status_s:.1f} s", flush=True)
    report_s, report_rss, _ = timed_command([*cli, "report", str(plan.run_dir), "--no-files"])
    print(f"report: {report_s:.1f} s, {report_rss:.0f} MB", flush=True)
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    rerun_s, rerun_rss, output = timed_command([*cli, "run", str(campaign)], env=environ)
    did_nothing = "generations_new=0" in output and "keyword_verdicts_new=0" in output
    print(f"rerun: {rerun_s:.1f} s (nothing redone: {did_nothing})", flush=True)

    overhead = {
        size: overhead_rows_per_s(work / f"overhead-{size}", overhead_units, size)
        for size in (16, 256)
    }
    return {
        "units": units,
        "prompts_per_target": prompts,
        "generation_shards": shards,
        "generation_shards_compacted": compacted,
        "status_before_compaction_s": round(raw_status_s, 2),
        "compact_s": round(compact_s, 2),
        "compact_peak_rss_mb": round(compact_rss),
        "compact_at_end_s": round(compact_end_s, 2),
        "plan_s": round(plan_s, 2),
        "keyword_judge_rows_per_s": round(units / keyword_s),
        "keyword_judge_s": round(keyword_s, 1),
        "status_s": round(status_s, 2),
        "status_peak_rss_mb": round(status_rss),
        "report_s": round(report_s, 2),
        "report_peak_rss_mb": round(report_rss),
        "rerun_s": round(rerun_s, 2),
        "rerun_peak_rss_mb": round(rerun_rss),
        "rerun_did_nothing": did_nothing,
        "overhead_rows_per_s": round(overhead[16]),
        "overhead_rows_per_s_batch256": round(overhead[256]),
        "overhead_units": overhead_units,
        "store_write_s": round(write_s, 1),
        "bench_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def print_table(figures: dict[str, Any]) -> None:
    if not figures:
        return
    print(f"\n{figures['units']:,} answers ({figures['generation_shards']:,} shards)")
    print("| figure | today | target | holds |")
    print("|---|---|---|---|")
    for name, (sense, target) in TARGETS.items():
        value = figures[name]
        holds = value <= target if sense == "≤" else value >= target
        print(f"| {name} | {value:,} | {sense} {target:,.0f} | {'yes' if holds else 'no'} |")


if __name__ == "__main__":
    main()
