"""A campaign submitted with the real `ray job submit` to a real `ray start --head`: its results
outlive Ray's copy of the working dir, `ray job stop` leaves no actor behind, a resubmitted job
resumes without redoing finished work, and the judge's key (read from `api_key_file` on the node)
shows in no job info, log, Parquet file, spec.json or manifest.json.

The head runs on its own ports and temp dir, in a process session of its own; it is stopped by
killing exactly its processes, never with a bare `ray stop` (which would stop every Ray on the
machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from ftsafe_ray.errors import JudgeError, SpecError
from ftsafe_ray.judge.cluster import budget_name
from ftsafe_ray.judge.identity import rubric_identity, verdict_key_for
from ftsafe_ray.judge.stage import rubric_access
from ftsafe_ray.plan import RUNS_ROOT_ENV, lasting_path
from ftsafe_ray.spec import RubricJudgeSpec, load_campaign
from ftsafe_ray.store import RunStore
from tests.fixtures.campaign_files import write_benchmark, write_chats
from tests.fixtures.judge_server import JudgeServer

REPO = Path(__file__).resolve().parents[1]
RAY = [sys.executable, "-m", "ray.scripts.scripts"]
SENTINEL = "sk-SENTINEL-cluster-0987654321"
ENDPOINT_CHECK = "Reply with the word OK."
JOB_TIMEOUT_S = 150


# Unit checks: where a relative directory goes under a job, and the key file.


def job_environ(working_dir: str = "gcs://_ray_pkg_0123456789abcdef.zip", **extra: str):
    """The variables `ray job submit` gives a driver (see ray's JobSupervisor)."""
    config = {"runtime_env": {"working_dir": working_dir}, "metadata": {}}
    return {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(config), **extra}


def test_a_relative_output_dir_in_a_job_copy_goes_under_the_runs_root(tmp_path, monkeypatch):
    copy = tmp_path / "_ray_pkg_x"
    (copy / "campaigns").mkdir(parents=True)
    monkeypatch.chdir(copy)  # a job's driver starts in Ray's copy
    base = copy / "campaigns"
    root = tmp_path / "lasting"

    placed = lasting_path("../runs/a", base, "output_dir", job_environ(FTSAFE_RUNS_ROOT=str(root)))
    assert placed == root / "runs" / "a"

    with pytest.raises(SpecError) as refused:
        lasting_path("../runs/a", base, "output_dir", job_environ())
    message = str(refused.value)
    assert message.startswith("output_dir: '../runs/a'")
    assert RUNS_ROOT_ENV in message and "--runs-root" in message and "absolute" in message

    with pytest.raises(SpecError, match="leads out of the submitted working directory"):
        lasting_path("../../a", base, "output_dir", job_environ(FTSAFE_RUNS_ROOT=str(root)))
    # Absolute paths, a `local://` working dir (the node's own directory) and runs outside a
    # job keep the campaign-relative meaning.
    assert lasting_path("/data/run", base, "output_dir", job_environ()) == Path("/data/run")
    in_place = job_environ(working_dir=f"local://{copy}")
    assert lasting_path("../runs/a", base, "output_dir", in_place) == copy / "runs" / "a"
    assert lasting_path("../runs/a", base, "output_dir", {}) == copy / "runs" / "a"


def test_the_key_is_read_from_api_key_file_and_never_quoted(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(f"  {SENTINEL}\n")
    spec = RubricJudgeSpec(api_key_file=str(key_file), base_url="http://127.0.0.1:1/v1")
    access = rubric_access(spec, {"OPENAI_API_KEY": "sk-from-the-environment"})
    assert access is not None and access.api_key == SENTINEL
    # 'auto' turns the judge on for a key file; a missing or empty one is an error naming it.
    assert rubric_access(RubricJudgeSpec(api_key_file=str(key_file)), {}) is not None
    with pytest.raises(JudgeError, match=r"api_key_file: cannot read .*missing"):
        rubric_access(RubricJudgeSpec(api_key_file=str(tmp_path / "missing")), {})
    key_file.write_text("\n")
    with pytest.raises(JudgeError, match="is empty") as empty:
        rubric_access(spec, {})
    assert SENTINEL not in str(empty.value)
    # A relative path would be uploaded with `--working-dir`: refused.
    with pytest.raises(ValueError, match="api_key_file 'key' is relative"):
        RubricJudgeSpec(api_key_file="key")
    # A key from a file is another quota than the variable's: another budget.
    assert budget_name(spec, None) != budget_name(RubricJudgeSpec(base_url=spec.base_url), None)


# The real cluster.


@dataclass
class Head:
    """A `ray start --head` of this test: its dashboard URL, GCS port and temp dir."""

    dashboard: str
    gcs_port: int
    temp_dir: Path
    session: int
    runs_root: Path

    @property
    def token_file(self) -> Path:
        return self.temp_dir / "auth_token"

    def env(self) -> dict[str, str]:
        """Environment for a client of this head: its address and its own auth token."""
        return {
            **os.environ,
            "RAY_ADDRESS": self.dashboard,
            "RAY_API_SERVER_ADDRESS": self.dashboard,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_file),
        }

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`ray ARGS` against this head's dashboard, and no other cluster of the machine."""
        done = subprocess.run(
            [*RAY, *args], capture_output=True, text=True, timeout=timeout, env=self.env()
        )
        assert done.returncode == 0, f"ray {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done

    def alive_actors(self) -> list[str]:
        """Class names of the live actors, job supervisors aside."""
        # The state API `ray list actors` calls, without starting a process per poll.
        query = "filter_keys=state&filter_predicates=%3D&filter_values=ALIVE&limit=10000"
        listed = json.loads(self.get(f"/api/v0/actors?{query}"))["data"]["result"]["result"]
        return [a["class_name"] for a in listed if a["class_name"] != "JobSupervisor"]

    def get(self, path: str) -> str:
        """A GET of the dashboard's HTTP API."""
        token = self.token_file.read_text()
        request = urllib.request.Request(
            self.dashboard + path, headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read().decode()


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def processes_of(head_session: int, marks: tuple[str, ...]) -> list[int]:
    """This head's processes: those of its session, and any (job drivers start sessions of
    their own) whose command line or environment names its temp dir or GCS address."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            text = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if fields[0] != "Z" and (
            int(fields[3]) == head_session > 0 or any(m.encode() in text for m in marks)
        ):
            found.append(int(entry.name))
    return found


def stop_head(head: Head) -> None:
    marks = (str(head.temp_dir), f"127.0.0.1:{head.gcs_port}")
    for sig, wait_s in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        for pid in processes_of(head.session, marks):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while processes_of(head.session, marks) and time.monotonic() < deadline:
            time.sleep(0.2)
    shutil.rmtree(head.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory) -> Iterator[Head]:
    # Short: Ray's unix socket paths live under it.
    temp_dir = Path(tempfile.mkdtemp(prefix="ftsafe-ray-", dir="/tmp"))
    runs_root = tmp_path_factory.mktemp("lasting")
    gcs, dashboard, client, node, objects, agent, agent_grpc, env_agent, metrics = free_ports(9)
    command = [
        *RAY, "start", "--head", "--disable-usage-stats",
        "--temp-dir", str(temp_dir),
        "--node-ip-address", "127.0.0.1",
        "--port", str(gcs),
        "--num-cpus", "2", "--num-gpus", "0",
        "--object-store-memory", str(100 * 2**20),
        "--include-dashboard", "true",
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
        "--ray-client-server-port", str(client),
        "--node-manager-port", str(node), "--object-manager-port", str(objects),
        "--dashboard-agent-listen-port", str(agent),
        "--dashboard-agent-grpc-port", str(agent_grpc),
        "--runtime-env-agent-port", str(env_agent),
        "--metrics-export-port", str(metrics),
        "--min-worker-port", "0", "--max-worker-port", "0",
    ]  # fmt: skip
    head = Head(f"http://127.0.0.1:{dashboard}", gcs, temp_dir, 0, runs_root)
    head.token_file.write_text(secrets.token_hex(32))
    head.token_file.chmod(0o600)
    # As cluster.yaml does: the runs root is set on the node, for every job's driver, and
    # the package is importable there (this checkout standing in for its install).
    python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**head.env(), "RAY_ADDRESS": "", "PYTHONPATH": python_path}
    env[RUNS_ROOT_ENV] = str(runs_root)
    log = temp_dir / "ray-start.log"
    with log.open("w") as out:
        starter = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    head.session = starter.pid
    try:
        assert starter.wait(timeout=120) == 0, log.read_text()
        yield head
    finally:
        stop_head(head)


@pytest.fixture(scope="module")
def slow_judge() -> Iterator[JudgeServer]:
    server = JudgeServer().start()
    server.set_latency(1.5, 2.0)  # judging lasts long enough to stop the job in it
    try:
        yield server
    finally:
        server.stop()


def write_working_dir(root: Path, model_dir: Path, judge_url: str, key_file: Path) -> Path:
    """A project as a user submits it: jobs/run_campaign.py and a campaign in campaigns/."""
    (root / "jobs").mkdir(parents=True)
    (root / "campaigns").mkdir()
    (root / "data").mkdir()
    shutil.copy(REPO / "jobs" / "run_campaign.py", root / "jobs")
    write_chats(
        root / "data" / "train.jsonl", [(f"placeholder task {i}", "fine") for i in range(2)]
    )
    write_benchmark(
        root / "data" / "bench.jsonl", [("c", f"placeholder ask {i}") for i in range(6)]
    )
    spec = {
        "name": "cluster-job",
        "output_dir": "../runs/cluster-job",
        "models": [{"name": "tiny", "path": str(model_dir)}],
        "datasets": [{"name": "d", "source": "../data/train.jsonl"}],
        "finetunes": [
            {
                "name": "a",
                "dataset": "d",
                "sizes": [2],
                "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj"]},
                "train": {"epochs": 1, "batch_size": 2, "max_length": 32},
            }
        ],
        "benchmarks": [{"name": "b", "source": "../data/bench.jsonl"}],
        "sampling": {"max_new_tokens": 4},
        "generation": {"batch_size": 8, "num_cpus": 1, "check_adapters": False},
        "finetune_resources": {"num_cpus": 1},
        "judges": {
            "rubric": {
                "enabled": True,
                "base_url": judge_url,
                "api_key_file": str(key_file),
                "model": "judge-test",
                "max_retries": 0,
                "max_concurrency": 1,
            }
        },
    }
    (root / "campaigns" / "tiny.yaml").write_text(yaml.safe_dump(spec))
    return root


def submit(head: Head, working_dir: Path, submission_id: str) -> None:
    head.cli(
        "job", "submit", "--no-wait", "--submission-id", submission_id,
        "--working-dir", str(working_dir),
        "--", "python", "jobs/run_campaign.py", "campaigns/tiny.yaml",
    )  # fmt: skip


def judge_requests(server: JudgeServer) -> list[str]:
    """The last message of every rubric request, the endpoint checks aside."""
    contents = [r.body["messages"][-1]["content"] for r in server.chat_requests]
    return [c for c in contents if c != ENDPOINT_CHECK]


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def job_info(head: Head, submission_id: str) -> dict:
    """What `ray job status` reports, as the job API gives it."""
    return json.loads(head.get(f"/api/jobs/{submission_id}"))


@pytest.mark.cluster
def test_a_submitted_job_is_stopped_resubmitted_and_keeps_its_results_and_its_secret(
    ray_head, tmp_path, tiny_model_dir, slow_judge
):
    key_file = tmp_path / "secrets" / "judge_key"  # on the node, outside the submitted dir
    key_file.parent.mkdir()
    key_file.write_text(SENTINEL + "\n")
    key_file.chmod(0o600)
    working_dir = write_working_dir(
        tmp_path / "project", tiny_model_dir, slow_judge.base_url, key_file
    )
    run_dir = ray_head.runs_root / "runs" / "cluster-job"

    # 1. Submitted, then stopped while the rubric judge (and its budget actor) is at work.
    submit(ray_head, working_dir, "ftsafe-stopped")

    def judging() -> bool:
        job = json.loads(ray_head.get("/api/jobs/ftsafe-stopped"))
        logs = json.loads(ray_head.get("/api/jobs/ftsafe-stopped/logs"))["logs"]
        assert job["status"] in ("PENDING", "RUNNING"), f"{job}\n{logs}"
        return "JudgeRateBudget" in ray_head.alive_actors() and len(judge_requests(slow_judge)) >= 1

    wait_until(judging, JOB_TIMEOUT_S, "the rubric judge to start")
    ray_head.cli("job", "stop", "ftsafe-stopped", timeout=60)
    assert job_info(ray_head, "ftsafe-stopped")["status"] == "STOPPED"
    # Sooner than the budget's idle exit (30 s): it sees its job has ended.
    wait_until(lambda: not ray_head.alive_actors(), 20, "the stopped job's actors to end")
    store = RunStore(run_dir)
    answers = store.generations.rows()
    judged_at_stop = {row["key"] for row in store.judgments.rows() if row["judge"] == "rubric"}
    requested_before = len(judge_requests(slow_judge))

    # 2. Submitted again: it resumes and succeeds.
    submit(ray_head, working_dir, "ftsafe-resumed")
    logs = ray_head.cli("job", "logs", "--follow", "ftsafe-resumed", timeout=JOB_TIMEOUT_S).stdout
    resumed = job_info(ray_head, "ftsafe-resumed")
    assert resumed["status"] == "SUCCEEDED", logs
    assert f"results in {run_dir}" in logs
    counts = next(line for line in logs.splitlines() if line.startswith("finished in"))
    for nothing_new in ("finetunes_trained", "generations_new", "keyword_verdicts_new"):
        assert f"'{nothing_new}': 0" in counts, counts

    # The run lasts outside Ray's copy of the working dir; every Parquet file reads.
    assert not list(ray_head.temp_dir.rglob("runs/cluster-job"))
    tables = list(run_dir.rglob("part-*.parquet"))
    assert {p.parent.name for p in tables} >= {"finetunes", "generations", "judgments"}
    for path in tables:
        pq.read_table(path)
    store = RunStore(run_dir)
    assert [r["key"] for r in store.generations.rows()] == [r["key"] for r in answers]
    assert len(answers) == 12  # (base + 1 adapter) x 6 prompts
    # Every answer has its verdict (equal answers to one prompt share one), and verdicts
    # stored before the stop were not asked for again.
    identity = rubric_identity(load_campaign(working_dir / "campaigns" / "tiny.yaml").judges.rubric)
    wanted = {verdict_key_for(identity, answer) for answer in answers}
    rubric = [r for r in store.judgments.rows() if r["judge"] == "rubric"]
    assert {r["key"] for r in rubric} == wanted
    assert wanted - judged_at_stop, "the job was stopped after its judging ended"
    assert all(r["status"] == "ok" for r in rubric), rubric
    assert len(judge_requests(slow_judge)) - requested_before == len(wanted - judged_at_stop)
    wait_until(lambda: not ray_head.alive_actors(), 20, "the finished job's actors to end")

    # The key was used, and shows nowhere: job info, job logs, the dashboard's job API,
    # Ray's own logs, the run directory.
    assert {r.headers["authorization"] for r in slow_judge.chat_requests} == {f"Bearer {SENTINEL}"}
    job_api = ray_head.get("/api/jobs/")
    seen = [
        ray_head.cli("job", "list").stdout,
        json.dumps(job_info(ray_head, "ftsafe-stopped")),
        json.dumps(resumed),
        ray_head.cli("job", "logs", "ftsafe-stopped").stdout,
        logs,
        job_api,
    ]
    assert "ftsafe-resumed" in job_api
    assert not [text for text in seen if SENTINEL in text]
    files = [p for p in [*ray_head.temp_dir.rglob("*"), *run_dir.rglob("*")] if p.is_file()]
    assert {"spec.json", "manifest.json"} <= {p.name for p in files}
    for path in files:
        if path.is_symlink():
            continue
        assert SENTINEL.encode() not in path.read_bytes(), path
        if path.suffix == ".parquet":  # compressed pages could hide a string from a byte search
            values = str(pq.read_table(path).to_pylist()) + str(pq.read_schema(path).metadata)
            assert SENTINEL not in values, path
