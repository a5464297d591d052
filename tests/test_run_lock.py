"""The run directory's lock: one driver at a time, released however it ends, stale ones taken."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ftsafe_ray.cli import main
from ftsafe_ray.errors import StoreError
from ftsafe_ray.pipeline import load_plan
from ftsafe_ray.store import RunLock
from ftsafe_ray.store.lock import LOCK_FILE
from tests.fixtures.campaign_files import write_benchmark, write_chats

# Another driver: takes the lock, says so, and holds it until killed or `release` appears.
_DRIVER = """
import sys, time
from pathlib import Path
from ftsafe_ray.errors import StoreError
from ftsafe_ray.store import RunLock

run_dir, campaign, release = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
try:
    lock = RunLock(run_dir, campaign).acquire()
except StoreError as error:
    print(f"lost: {error}", flush=True)
    sys.exit(0)
print("won", flush=True)
deadline = time.monotonic() + 60
while not release.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
lock.release()
"""


def start_driver(run_dir: Path, campaign: str, release: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(run_dir), campaign, str(release)],
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def holder(tmp_path):
    """A driver process holding the lock on tmp_path/run; killed at teardown if still alive."""
    driver = start_driver(tmp_path / "run", "camp-a", tmp_path / "release")
    assert driver.stdout is not None and driver.stdout.readline().strip() == "won"
    yield driver
    if driver.poll() is None:
        driver.kill()
    driver.wait(timeout=30)


@pytest.mark.reliability(
    fault="A second driver on a run directory in use",
    outcome="one-line error naming the holder's pid, host, start and campaign; nothing written",
)
def test_a_second_driver_gets_one_line_naming_the_first(tmp_path, holder):
    run_dir = tmp_path / "run"
    with pytest.raises(StoreError) as refused:
        RunLock(run_dir, "camp-b").acquire()
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{run_dir} is in use by pid {holder.pid} on host ")
    assert f"on host {socket.gethostname()} since " in message and "(campaign camp-a)" in message
    assert message.endswith(
        "wait for it or, if that process is gone, rerun — a stale lock is taken over automatically"
    )
    # the refused attempt leaves the holder's record alone
    assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == holder.pid


@pytest.mark.reliability(
    fault="The driver killed with SIGKILL, then rerun",
    outcome="its lock is taken over at once (flock dies with its holder)",
)
def test_the_lock_of_a_killed_driver_is_taken_over(tmp_path, holder):
    run_dir = tmp_path / "run"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    lock_file = run_dir / LOCK_FILE
    assert json.loads(lock_file.read_text())["pid"] == holder.pid  # left behind, stale
    with RunLock(run_dir, "camp-b"):
        record = json.loads(lock_file.read_text())
        assert (record["pid"], record["campaign"]) == (os.getpid(), "camp-b")
    assert not lock_file.exists()


def test_a_driver_that_finishes_lets_the_next_one_in(tmp_path, holder):
    (tmp_path / "release").touch()
    assert holder.wait(timeout=30) == 0
    assert not (tmp_path / "run" / LOCK_FILE).exists()
    RunLock(tmp_path / "run", "camp-b").acquire().release()


@pytest.mark.reliability(
    fault="A run ending in an exception or Ctrl-C",
    outcome="the run directory lock is released",
)
@pytest.mark.parametrize("interruption", [RuntimeError, KeyboardInterrupt])
def test_the_lock_is_released_however_the_run_ends(tmp_path, interruption):
    run_dir = tmp_path / "run"
    with pytest.raises(interruption), RunLock(run_dir, "camp-a"):
        raise interruption()
    assert not (run_dir / LOCK_FILE).exists()
    # another process can take it at once
    driver = start_driver(run_dir, "camp-b", tmp_path / "release")
    (tmp_path / "release").touch()
    assert driver.communicate(timeout=60)[0].strip() == "won"


@pytest.mark.reliability(
    fault="Several drivers started at the same moment",
    outcome="exactly one runs; the others get the one-line error",
)
def test_drivers_starting_together_get_exactly_one_winner(tmp_path):
    release = tmp_path / "release"
    drivers = [start_driver(tmp_path / "run", f"camp-{i}", release) for i in range(4)]
    try:
        # every driver answers before the winner may release, so all of them overlap
        answers = [d.stdout.readline().strip() for d in drivers if d.stdout is not None]
    finally:
        release.touch()
        for driver in drivers:
            driver.wait(timeout=60)
    assert sorted(a.split(":")[0] for a in answers) == ["lost", "lost", "lost", "won"]
    assert all("is in use by pid" in a for a in answers if a != "won")


def write_campaign(tmp_path: Path) -> Path:
    write_chats(tmp_path / "train.jsonl", [("placeholder request", "placeholder answer")] * 2)
    write_benchmark(tmp_path / "bench.jsonl", [("fraud_deception", "placeholder request")])
    spec = {
        "name": "locked",
        "output_dir": "run",
        "models": [{"name": "m", "path": "/models/placeholder"}],
        "datasets": [{"name": "d", "source": "train.jsonl"}],
        "finetunes": [{"name": "a", "dataset": "d", "sizes": [2]}],
        "benchmarks": [{"name": "b", "source": "bench.jsonl"}],
    }
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_ftsafe_run_refuses_a_run_directory_another_driver_holds(tmp_path, capsys):
    campaign = write_campaign(tmp_path)
    run_dir = load_plan(campaign).run_dir
    driver = start_driver(run_dir, "locked", tmp_path / "release")
    try:
        assert driver.stdout is not None and driver.stdout.readline().strip() == "won"
        started = time.monotonic()
        assert main(["run", str(campaign)]) == 2
        assert time.monotonic() - started < 30  # refused before Ray or any stage starts
    finally:
        (tmp_path / "release").touch()
        driver.wait(timeout=60)
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {run_dir} is in use by pid {driver.pid} on host ")
    assert not (run_dir / "spec.json").exists()  # nothing was written under the lock
