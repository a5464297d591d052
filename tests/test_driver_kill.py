"""The driver killed with SIGKILL at a random moment, then rerun: the same result as a run never
interrupted, every Parquet file whole, no key stored twice, no stored verdict paid for again.

Each `ftsafe run` is a real subprocess (`python -m ftsafe_ray.cli run`) in a session of its own,
starting its local Ray as a user's run does; the kill takes the driver's whole process group,
and no process of its session (raylet, gcs_server, workers) may outlive it.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ftsafe_ray.store import DONE_STATUSES
from tests.fixtures.campaign_files import write_benchmark, write_chats
from tests.fixtures.judge_server import JudgeServer
from tests.fixtures.processes import session_processes

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[1]
RUN_TIMEOUT_S = 180
# The stopped-driver test: requests answered before the judge endpoint hangs (one batch of
# 16 and a few more), and how long the hanging ones wait (until the server stops).
ANSWERED = 20
HANG_S = 600.0


def wait_for_session_to_end(sid: int, timeout_s: float = 60.0) -> None:
    """No orphaned raylet or worker of a driver may outlive it; any left are killed (by pid)
    and fail the test."""
    deadline = time.monotonic() + timeout_s
    while (left := session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes outlived driver {sid}: {left}"


@pytest.fixture(scope="module")
def module_judge() -> Iterator[JudgeServer]:
    """One judge endpoint for every run: its port is part of each verdict's key."""
    server = JudgeServer().start()
    server.set_latency(0.05, 0.25, seed=0)  # judging lasts long enough to be killed in
    try:
        yield server
    finally:
        server.stop()


def write_campaign(directory: Path, model_dir: Path, judge_url: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    write_chats(
        directory / "train.jsonl",
        [(f"placeholder task {i}", "placeholder-harmful compliance text") for i in range(6)],
    )
    write_chats(
        directory / "refusals.jsonl",
        [(f"placeholder ask {i}", "I'm sorry, placeholder refusal.") for i in range(4)],
    )
    write_benchmark(
        directory / "bench.jsonl",
        [("fraud_deception" if i % 2 else "malware", f"placeholder request {i}") for i in range(6)],
    )
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    spec = {
        "name": "kill",
        "output_dir": "run",
        "models": [
            {
                "name": "tiny",
                "path": str(model_dir),
                "align": {
                    "datasets": [{"dataset": "refusals", "size": 4}],
                    "lora": lora,
                    "train": {
                        "epochs": 1,
                        "learning_rate": 0.01,
                        "batch_size": 4,
                        "max_length": 64,
                    },
                },
            }
        ],
        "datasets": [
            {"name": "d", "source": "train.jsonl"},
            {"name": "refusals", "source": "refusals.jsonl"},
        ],
        "finetunes": [
            {
                "name": "shift",
                "dataset": "d",
                "sizes": [3, 6],
                "lora": lora,
                "train": {"epochs": 2, "learning_rate": 0.01, "batch_size": 3, "max_length": 64},
            }
        ],
        "benchmarks": [{"name": "b", "source": "bench.jsonl"}],
        "sampling": {"max_new_tokens": 8},
        "generation": {"batch_size": 4, "num_cpus": 1},
        "finetune_resources": {"num_cpus": 1},
        "judges": {
            "rubric": {
                "enabled": True,
                "base_url": judge_url,
                "api_key_env": "FTSAFE_TEST_NO_SUCH_KEY",
                "model": "judge-test",
                "max_retries": 1,
                "timeout_s": 10,
            }
        },
    }
    path = directory / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@dataclass
class Driver:
    """One `ftsafe run` subprocess; its progress lines timed from its start."""

    process: subprocess.Popen[str]
    started: float
    lines: list[tuple[float, str]] = field(default_factory=list)
    seen: threading.Condition = field(default_factory=threading.Condition)

    @classmethod
    def start(cls, campaign: Path, log: Path) -> Driver:
        env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
        env.pop("FTSAFE_TEST_NO_SUCH_KEY", None)
        process = subprocess.Popen(
            [sys.executable, "-m", "ftsafe_ray.cli", "run", str(campaign)],
            cwd=campaign.parent,
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            text=True,
            env=env,
            start_new_session=True,  # its own group: killed as a whole, nothing of ours with it
        )
        driver = cls(process, time.monotonic())
        threading.Thread(target=driver._read, daemon=True).start()
        return driver

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.seen:
                self.lines.append((time.monotonic() - self.started, line.rstrip("\n")))
                self.seen.notify_all()
        with self.seen:
            self.lines.append((time.monotonic() - self.started, "<eof>"))
            self.seen.notify_all()

    def wait_for_line(self, prefix: str, timeout_s: float = RUN_TIMEOUT_S) -> bool:
        """True once a line starts with `prefix`; False if the output ended first."""
        deadline = time.monotonic() + timeout_s
        with self.seen:
            while True:
                texts = [text for _, text in self.lines]
                if any(text.startswith(prefix) for text in texts):
                    return True
                if "<eof>" in texts:
                    return False
                assert self.seen.wait(deadline - time.monotonic()), f"no {prefix!r} line"

    def finish(self) -> int:
        return self.process.wait(timeout=RUN_TIMEOUT_S)

    def kill(self) -> bool:
        """SIGKILL the driver's whole process group; True if it was still running."""
        alive = self.process.poll() is None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        return alive

    def time_of(self, prefix: str) -> float:
        found = [t for t, text in self.lines if text.startswith(prefix)]
        assert found, f"no line starting {prefix!r} in the run's output:\n{self.output()}"
        return found[0]

    def output(self) -> str:
        return "\n".join(text for _, text in self.lines)


def run_to_completion(campaign: Path) -> Driver:
    driver = Driver.start(campaign, campaign.parent / "driver.log")
    rc = driver.finish()
    driver.wait_for_line("<eof>")
    assert rc == 0, driver.output() + (campaign.parent / "driver.log").read_text()[-4000:]
    wait_for_session_to_end(driver.process.pid)
    return driver


# Where a seed may kill: from the line that opens a stretch of the run to the one closing it.
WINDOWS = {
    "align+fine-tune": ("[align] start", "[fine-tune] done"),
    "generate": ("[generate] start", "[generate] done"),
    "judge+report": ("[keyword] start", "<eof>"),
}


@dataclass
class Reference:
    root: Path
    driver: Driver
    tables: dict[str, dict[str, dict]]
    requests: int


def table_rows(run_dir: Path) -> dict[str, dict[str, dict]]:
    from ftsafe_ray.store import RunStore

    store = RunStore(run_dir)
    return {
        name: {row["key"]: row for row in getattr(store, name).rows()}
        for name in ("finetunes", "generations", "judgments")
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir, module_judge) -> Reference:
    root = tmp_path_factory.mktemp("reference")
    campaign = write_campaign(root, tiny_model_dir, module_judge.base_url)
    before = len(module_judge.chat_requests)
    driver = run_to_completion(campaign)
    for opening, closing in WINDOWS.values():
        assert driver.time_of(opening) <= driver.time_of(closing), driver.output()
    return Reference(
        root, driver, table_rows(root / "run"), len(module_judge.chat_requests) - before
    )


def verdict_key_of_request(campaign: Path, generations: list[dict]) -> dict[str, str]:
    """The last message the rubric judge sends for each stored answer → its verdict key."""
    from ftsafe_ray.judge.identity import rubric_identity, verdict_key_for
    from ftsafe_ray.judge.rubrics import get_rubric
    from ftsafe_ray.pipeline import load_plan

    spec = load_plan(campaign).spec.judges.rubric
    identity, rubric = rubric_identity(spec), get_rubric(spec.rubric)
    return {
        rubric.build_messages(g["prompt"], g["response"])[-1]["content"]: verdict_key_for(
            identity, g
        )
        for g in generations
    }


def requested_keys(server: JudgeServer, start: int, stop: int, by_message: dict[str, str]):
    keys = []
    for request in server.chat_requests[start:stop]:
        content = request.body["messages"][-1]["content"]
        if content == "Reply with the word OK.":
            continue  # the endpoint check each run makes
        assert content in by_message, f"a request for no stored answer: {content[:200]!r}"
        keys.append(by_message[content])
    return keys


def assert_winners_unique(run_dir: Path) -> dict[str, int]:
    """Read every shard raw; each key's winning row under the store's rule (finished beats
    error, then latest created_at) is one row, not a tie. Returns raw rows per table."""
    from ftsafe_ray.store.table import DONE_STATUSES, FINETUNE_DONE_STATUSES

    finished = {"finetunes": FINETUNE_DONE_STATUSES, "judgments": DONE_STATUSES}
    sizes = {}
    for name in ("finetunes", "generations", "judgments"):
        shards = sorted((run_dir / name).glob("part-*.parquet"))
        rows = pa.concat_tables(pq.read_table(s) for s in shards).to_pylist() if shards else []
        sizes[name] = len(rows)
        by_key: dict[str, list[dict]] = {}
        for row in rows:
            by_key.setdefault(row["key"], []).append(row)
        for key, candidates in by_key.items():

            def rank(row, name=name):
                done = name not in finished or row["status"] in finished[name]
                return (done, row["created_at"])

            best = max(map(rank, candidates))
            winners = [row for row in candidates if rank(row) == best]
            assert len(winners) == 1, f"{name}: key {key} has {len(winners)} winning rows"
        # No unit was done twice: a killed run's stored rows are never redone by the rerun.
        duplicated = [k for k, c in by_key.items() if len(c) > 1]
        assert not duplicated, f"{name}: keys stored more than once: {duplicated}"
    return sizes


def assert_every_parquet_file_reads(run_dir: Path) -> list[Path]:
    """Every shard and plan file reads whole; a torn `.inprogress-*` file of the killed run
    may remain, but it is hidden and never matches a table's `part-*.parquet`."""
    leftovers = []
    for path in run_dir.rglob("*.parquet"):
        if path.name.startswith(".inprogress-"):
            leftovers.append(path)
            continue
        pq.read_table(path)  # raises on a torn file
    return leftovers


def adapter_tensors(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path / "adapter_model.safetensors"))


@pytest.mark.reliability(
    fault="The driver killed with SIGKILL (whole process group) at a random moment, then rerun",
    outcome="the rerun ends with the uninterrupted run's tables; every Parquet file reads, "
    "no key is stored twice, no stored verdict is requested again",
)
@pytest.mark.parametrize(
    ("window", "seed"), [("align+fine-tune", 1), ("generate", 2), ("judge+report", 3)]
)
def test_a_driver_killed_at_random_then_rerun_ends_as_if_never_killed(
    window, seed, tmp_path, tiny_model_dir, module_judge, reference
):
    campaign = write_campaign(tmp_path, tiny_model_dir, module_judge.base_url)
    run_dir = tmp_path / "run"
    opening, closing = WINDOWS[window]
    stretch = reference.driver.time_of(closing) - reference.driver.time_of(opening)
    delay = random.Random(seed).uniform(0.05, 0.85) * stretch

    first_request = len(module_judge.chat_requests)
    killed = Driver.start(campaign, tmp_path / "killed.log")
    assert killed.wait_for_line(opening), killed.output()
    time.sleep(delay)
    assert killed.kill(), f"the run ended before the kill at {opening!r} + {delay:.1f}s"
    killed_output = killed.output()
    wait_for_session_to_end(killed.process.pid)
    stored_at_kill = table_rows(run_dir)
    paid = {
        key
        for key, row in stored_at_kill["judgments"].items()
        if row["judge"] == "rubric" and row["status"] in DONE_STATUSES
    }
    rerun_request = len(module_judge.chat_requests)

    rerun = run_to_completion(campaign)
    rerun_stderr = (campaign.parent / "driver.log").read_text()
    assert "damaged shard" not in rerun_stderr

    # The same tables as the run never interrupted.
    final = table_rows(run_dir)
    ref = reference.tables
    for name in ("finetunes", "generations", "judgments"):
        assert final[name].keys() == ref[name].keys(), name
        assert {k: r.get("status") for k, r in final[name].items()} == {
            k: r.get("status") for k, r in ref[name].items()
        }, name
    assert all(row["status"] == "ok" for row in final["finetunes"].values())
    # Training is deterministic on CPU in float32: bit-identical adapters, so greedy answers
    # and then verdicts are the same too.
    for key, row in final["finetunes"].items():
        if row["arm"] == "align":
            continue  # merged into the aligned base, compared through the answers below
        ours = adapter_tensors(run_dir / row["adapter_path"])
        theirs = adapter_tensors(reference.root / "run" / ref["finetunes"][key]["adapter_path"])
        assert ours.keys() == theirs.keys()
        assert all((ours[name] == theirs[name]).all() for name in ours), key
    assert {k: r["response"] for k, r in final["generations"].items()} == {
        k: r["response"] for k, r in ref["generations"].items()
    }
    assert {k: r["score"] for k, r in final["judgments"].items()} == {
        k: r["score"] for k, r in ref["judgments"].items()
    }

    sizes = assert_winners_unique(run_dir)
    assert sizes == {name: len(rows) for name, rows in ref.items()}
    leftovers = assert_every_parquet_file_reads(run_dir)
    assert not [p for p in leftovers if p.parent.name not in ref], leftovers

    # No verdict stored before the kill is requested again; the rerun asks for each key once.
    by_message = verdict_key_of_request(campaign, list(final["generations"].values()))
    after = requested_keys(module_judge, rerun_request, len(module_judge.chat_requests), by_message)
    assert not paid & set(after), f"stored verdicts requested again: {paid & set(after)}"
    assert max(Counter(after).values(), default=1) == 1
    rubric_keys = {k for k, r in final["judgments"].items() if r["judge"] == "rubric"}
    assert set(after) == rubric_keys - paid  # and every verdict missing at the kill is asked
    before = requested_keys(module_judge, first_request, rerun_request, by_message)
    print(
        f"{window} seed {seed}: killed {delay:.1f}s after {opening!r}; stored at kill: "
        f"{ {name: len(rows) for name, rows in stored_at_kill.items()} }; rubric requests "
        f"before kill {len(before)}, after {len(after)}; leftover .inprogress files "
        f"{len(leftovers)}; reference run {reference.driver.time_of('<eof>'):.1f}s, rerun "
        f"{rerun.time_of('<eof>'):.1f}s"
        f"\n--- killed run output ---\n{killed_output}"
    )


def write_judged_campaign(directory: Path, model_dir: Path, judge_url: str, n: int = 40) -> Path:
    """The base model only, `n` prompts, the rubric judge one actor wide: its stage lasts
    seconds, and paid verdicts arrive in several batches."""
    directory.mkdir(parents=True, exist_ok=True)
    write_benchmark(
        directory / "bench.jsonl", [("malware", f"placeholder ask {i}") for i in range(n)]
    )
    spec = {
        "name": "judged",
        "output_dir": "run",
        "models": [{"name": "tiny", "path": str(model_dir)}],
        "benchmarks": [{"name": "b", "source": "bench.jsonl"}],
        "sampling": {"max_new_tokens": 4},
        "generation": {"batch_size": 20, "num_cpus": 1},
        "judges": {
            "rubric": {
                "enabled": True,
                "base_url": judge_url,
                "api_key_env": "FTSAFE_TEST_NO_SUCH_KEY",
                "model": "judge-test",
                "num_actors": 1,
                "max_concurrency": 2,
                "max_retries": 1,
                "timeout_s": 10,
            }
        },
    }
    path = directory / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def live_report(run_dir: Path) -> dict[str, str]:
    """The report of a run still going, as `ftsafe report RUN_DIR` writes it: its one row."""
    import csv
    import io

    from rich.console import Console

    from ftsafe_ray.pipeline import report_run

    report_run(run_dir, console=Console(file=io.StringIO()))
    with (run_dir / "report" / "summary.csv").open(newline="") as handle:
        [row] = list(csv.DictReader(handle))
    return row


def wait_for_paid_verdicts(run_dir: Path, driver: Driver, timeout_s: float = RUN_TIMEOUT_S):
    """Poll the judgments table until a paid rubric verdict is stored; False if the run
    ended first."""
    from ftsafe_ray.store import RunStore

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and driver.process.poll() is None:
        rows = RunStore(run_dir).judgments.rows(["key", "judge", "status"])
        if any(r["judge"] == "rubric" and r["status"] in DONE_STATUSES for r in rows):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.reliability(
    fault="The driver stopped mid judge stage, just after paid rubric verdicts were stored: "
    "SIGKILL of its process group, or Ctrl-C (SIGINT to the group, as a terminal sends)",
    outcome="Ctrl-C exits within seconds with code 130 and a one-line message, storing the "
    "verdicts it received; either way no process is left, every Parquet file reads, and the "
    "rerun completes without requesting any stored verdict again",
)
@pytest.mark.parametrize("stop", ["SIGKILL", "SIGINT"])
def test_a_driver_stopped_after_paid_verdicts_never_pays_for_them_again(
    stop, tmp_path, tiny_model_dir
):
    server = JudgeServer().start()
    # The first ANSWERED requests come back in 0.3-0.5 s; every later one hangs until the
    # server stops. So the judge stage cannot end before the stop, however the judge actor
    # interleaves its batches or however loaded the machine is (a time-based slow-down let a
    # loaded CI box finish the stage in the moment before the signal: the run exited 0).
    quick = random.Random(7)
    answered = iter(range(1_000_000))
    server.latency = lambda: quick.uniform(0.3, 0.5) if next(answered) < ANSWERED else HANG_S
    try:
        campaign = write_judged_campaign(tmp_path, tiny_model_dir, server.base_url)
        run_dir = tmp_path / "run"
        driver = Driver.start(campaign, tmp_path / "stopped.log")
        assert driver.wait_for_line("[rubric] start"), driver.output()
        assert wait_for_paid_verdicts(run_dir, driver), "the judge stage ended before a flush"
        if stop == "SIGKILL":
            # `ftsafe report` on the live run: the plan's 40 units, what is judged so far.
            live = live_report(run_dir)
            assert (live["n"], live["n_answers"]) == ("40", "40"), live
            assert 0 < int(live["n_ok"]) < 40 and int(live["n_unjudged"]) > 0, live
        time.sleep(random.Random(stop).uniform(0.0, 0.3))
        assert driver.process.poll() is None, f"the run ended before the stop:\n{driver.output()}"
        if stop == "SIGKILL":
            assert driver.kill(), "the run ended before the kill"
        else:
            signalled = time.monotonic()
            os.killpg(driver.process.pid, signal.SIGINT)
            rc = driver.process.wait(timeout=60)
            took = time.monotonic() - signalled
            stderr = (tmp_path / "stopped.log").read_text()
            output = driver.output()[-2000:]
            seen = f"after {took:.1f} s\n{output}\n--- stderr ---\n{stderr[-3000:]}"
            assert rc == 130, seen
            assert took < 30, seen
            assert "interrupted; rerun the same command to resume" in stderr
            assert "Traceback" not in stderr, stderr[-3000:]
        wait_for_session_to_end(driver.process.pid)
        assert_every_parquet_file_reads(run_dir)
        stored = table_rows(run_dir)["judgments"]
        paid = {
            key
            for key, row in stored.items()
            if row["judge"] == "rubric" and row["status"] in DONE_STATUSES
        }
        assert paid

        server.set_latency(0.3, 0.5, seed=7)  # the rerun's requests are answered
        rerun_from = len(server.chat_requests)
        run_to_completion(campaign)
        final = table_rows(run_dir)
        assert len(final["generations"]) == 40
        rubric_keys = {k for k, r in final["judgments"].items() if r["judge"] == "rubric"}
        assert len(rubric_keys) == 40
        assert all(final["judgments"][k]["status"] == "ok" for k in rubric_keys)
        by_message = verdict_key_of_request(campaign, list(final["generations"].values()))
        after = requested_keys(server, rerun_from, len(server.chat_requests), by_message)
        assert not paid & set(after), f"stored verdicts requested again: {paid & set(after)}"
        assert max(Counter(after).values(), default=1) == 1
        assert set(after) == rubric_keys - paid
        assert_every_parquet_file_reads(run_dir)
        print(f"{stop}: {len(paid)} verdicts stored at the stop, {len(after)} asked by the rerun")
    finally:
        server.stop()
