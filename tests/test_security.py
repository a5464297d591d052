"""Security: run directories are owner-only, the API key reaches nothing a run writes or prints,
and `ftsafe report` imports nothing a run directory names."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from ftsafe_ray.cli import main
from ftsafe_ray.errors import JudgeError
from ftsafe_ray.judge import JudgeRequest, RubricJudgeClient
from ftsafe_ray.judge.identity import keyword_set_identities, verdict_key_for
from ftsafe_ray.judge.rubric_client import REDACTED
from ftsafe_ray.pipeline import recorded_rubric_identity
from ftsafe_ray.plan import build_plan
from ftsafe_ray.spec import RubricJudgeSpec, parse_campaign
from ftsafe_ray.store import RunStore
from tests.fixtures.campaign_files import answer_row, write_benchmark, write_chats
from tests.fixtures.judge_server import http_error, verdict

REPO = Path(__file__).resolve().parents[1]
SENTINEL = "sk-SENTINEL-1234567890"
# How OpenAI quotes a wrong key in a 401: its ends, starred in between.
MASKED = "sk-SENT**************7890"
KEY_ENV = "FTSAFE_TEST_SECRET_KEY"


@pytest.fixture
def shared_machine_umask() -> Iterator[None]:
    """The common umask 022, under which default-mode files are readable by every user: modes
    found owner-only under it were set by the code, not inherited."""
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def assert_owner_only(root: Path) -> None:
    """Every directory under `root` (itself included) is 0700, every file 0600."""
    wrong = []
    for path in [root, *root.rglob("*")]:
        info = os.lstat(path)
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISDIR(info.st_mode) and mode != 0o700:
            wrong.append(f"{path.relative_to(root)}/ {oct(mode)}")
        elif stat.S_ISREG(info.st_mode) and mode != 0o600:
            wrong.append(f"{path.relative_to(root)} {oct(mode)}")
    assert not wrong, f"not owner-only under {root}: {wrong}"


@pytest.mark.reliability(
    fault="A shared machine (umask 022)",
    outcome="run directory, adapters and merges are owner-only (0700/0600)",
)
def test_store_adapters_and_aligned_models_are_owner_only(
    tmp_path, tiny_model_dir, shared_machine_umask
):
    from ftsafe_ray.finetune.actor import FineTuner
    from tests.fixtures.models import one_torch_thread

    write_chats(
        tmp_path / "d.jsonl", [(f"placeholder task {i}", "placeholder reply") for i in range(2)]
    )
    write_benchmark(tmp_path / "b.jsonl", [("c", "placeholder request")])
    small = {
        "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj"]},
        "train": {"epochs": 1, "batch_size": 2, "micro_batch_size": 2, "max_length": 32},
    }
    spec = {
        "name": "modes",
        "output_dir": "run",
        "models": [
            {
                "name": "tiny",
                "path": str(tiny_model_dir),
                "align": {"datasets": [{"dataset": "d", "size": 2}], **small},
            }
        ],
        "datasets": [{"name": "d", "source": "d.jsonl"}],
        "finetunes": [{"name": "a", "dataset": "d", "sizes": [2], **small}],
        "benchmarks": [{"name": "b", "source": "b.jsonl"}],
    }
    plan = build_plan(parse_campaign(spec), base_dir=tmp_path)
    store = RunStore(plan.run_dir, plan.spec_hash)
    store.freeze_spec(plan.spec.model_dump(mode="json"), plan.spec_hash)
    store.freeze_plan(
        plan.unit_labels(),
        keyword_set_identities(plan.keyword_sets),
        recorded_rubric_identity(plan.spec, None),
    )
    store.generations.write([answer_row(u, "placeholder answer") for u in plan.generations])
    store.judgments.write([{"key": "v", "generation_key": "g", "judge": "keyword"}])
    store.write_manifest(campaign="modes")

    [alignment], [finetune] = plan.alignments, plan.finetunes
    with one_torch_thread():
        tuner = FineTuner(str(tiny_model_dir), "float32", num_threads=1)
        aligned = tuner.align(alignment, str(plan.run_dir / alignment.output_path))
        trained = tuner.train(finetune, str(store.adapter_dir(finetune.key)))
    assert (aligned["status"], trained["status"]) == ("ok", "ok"), (aligned, trained)
    store.finetunes.write([aligned, trained])

    assert (plan.run_dir / alignment.output_path / "config.json").is_file()
    assert (store.adapter_dir(finetune.key) / "adapter_model.safetensors").is_file()
    assert_owner_only(plan.run_dir)


def test_a_run_directory_made_before_keeps_the_mode_its_owner_gave_it(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(0o750)  # shared with a group on purpose
    store = RunStore(run_dir)
    store.create()
    store.write_manifest(campaign="shared")
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o750
    assert stat.S_IMODE((run_dir / "manifest.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((run_dir / "generations").stat().st_mode) == 0o700


@pytest.mark.reliability(
    fault="An endpoint that echoes the API key in its error",
    outcome="the key is redacted from every stored error",
)
def test_judge_errors_never_quote_the_api_key(judge_server):
    spec = RubricJudgeSpec(model="test-judge", max_retries=0, timeout_s=5.0, max_tokens=64)
    echo = f"Incorrect API key provided: {SENTINEL}; also known as {MASKED}."
    # Padded so that the key falls across the length limit of an error text somewhere.
    judge_server.set_behaviour(
        [http_error(401, echo)]
        + [http_error(401, "x" * pad + echo) for pad in range(430, 520, 6)]
        + [http_error(401, echo)]
    )
    requests = [JudgeRequest(f"k{i}", "placeholder ask", "placeholder answer") for i in range(15)]

    async def scenario() -> tuple[str, list[Any]]:
        async with RubricJudgeClient(spec, SENTINEL, judge_server.base_url) as client:
            with pytest.raises(JudgeError) as caught:
                await client.check()
            results = [await client.judge(r) for r in requests]
            with pytest.raises(JudgeError) as again:
                await client.check()
        return str(caught.value) + "\n" + str(again.value), results

    checks, results = asyncio.run(scenario())
    # The key was sent: the endpoint saw it, so the texts below had it to leak.
    assert judge_server.chat_requests[0].headers["authorization"] == f"Bearer {SENTINEL}"
    for line in checks.splitlines():
        assert "401" in line and REDACTED in line, line
    texts = [checks, *(r.error for r in results)]
    assert all(r.status == "error" for r in results)
    for text in texts:
        assert "sk-S" not in text and "*7890" not in text, text


@pytest.mark.reliability(
    fault="A Batch API endpoint that echoes the API key in its error",
    outcome="the one-line error names the failure with the key redacted",
)
def test_batch_mode_errors_never_quote_the_api_key(judge_server, tmp_path):
    from ftsafe_ray.judge.batch import BatchJudge
    from ftsafe_ray.judge.rubrics import get_rubric

    judge_server.reject_uploads = "Incorrect API key provided: {key}."
    spec = RubricJudgeSpec(model="test-judge", mode="batch", max_retries=0, max_tokens=64)
    judge = BatchJudge(spec, SENTINEL, judge_server.base_url, tmp_path, get_rubric("hexphi"))
    try:
        with pytest.raises(JudgeError) as caught:
            judge.submit([JudgeRequest("k0", "placeholder ask", "placeholder answer")])
    finally:
        judge.close()
        judge_server.reject_uploads = None
    assert "401" in str(caught.value) and REDACTED in str(caught.value)
    assert "sk-S" not in str(caught.value)


@pytest.mark.reliability(
    fault="`ftsafe report` on someone else's run directory naming a rubric module",
    outcome="nothing is imported from it",
)
def test_report_imports_no_rubric_module_named_by_the_run_directory(tmp_path, monkeypatch):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    canary = tmp_path / "imported.txt"
    # A rubric module that leaves a file behind when it is imported (run) at all.
    (plugins / "ftsafe_canary_rubric.py").write_text(
        "import os, pathlib\n"
        "pathlib.Path(os.environ['FTSAFE_CANARY_FILE']).write_text('imported')\n"
        "from ftsafe_ray.judge.rubrics import HEXPHI, Rubric\n"
        "RUBRIC = Rubric('canary', 'canary-v1', HEXPHI.build_messages, HEXPHI.parse)\n"
    )
    monkeypatch.setenv("FTSAFE_CANARY_FILE", str(canary))
    monkeypatch.syspath_prepend(str(plugins))
    write_benchmark(tmp_path / "b.jsonl", [("c", "placeholder request 0"), ("c", "placeholder 1")])
    spec = {
        "name": "canary",
        "output_dir": "run",
        "models": [{"name": "m", "path": "/nonexistent/model"}],
        "benchmarks": [{"name": "b", "source": "b.jsonl"}],
        "judges": {"rubric": {"enabled": False, "rubric": "ftsafe_canary_rubric:RUBRIC"}},
    }
    # What `ftsafe run` records: the campaign is trusted there, so its rubric is imported.
    plan = build_plan(parse_campaign(spec), base_dir=tmp_path)
    identity = recorded_rubric_identity(plan.spec, None)
    assert identity is not None and identity["version"] == "canary-v1"
    store = RunStore(plan.run_dir, plan.spec_hash)
    store.freeze_spec(plan.spec.model_dump(mode="json"), plan.spec_hash)
    store.freeze_plan(plan.unit_labels(), keyword_set_identities(plan.keyword_sets), identity)
    answers = [answer_row(u, "placeholder-harmful answer") for u in plan.generations]
    store.generations.write(answers)
    store.judgments.write(
        [
            {
                "key": verdict_key_for(identity, a),
                "generation_key": a["key"],
                "judge": "rubric",
                "status": "ok",
                "score": 5,
            }
            for a in answers
        ]
    )
    canary.unlink()
    monkeypatch.delitem(sys.modules, "ftsafe_canary_rubric")

    def report() -> subprocess.CompletedProcess[str]:
        # Run where the module would import if anything tried: on PYTHONPATH.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugins), str(REPO)])}
        return subprocess.run(
            [sys.executable, "-m", "ftsafe_ray.cli", "report", str(plan.run_dir)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=300,
        )

    done = report()
    assert done.returncode == 0, done.stderr
    assert not canary.exists(), "ftsafe report imported the run directory's rubric module"
    summary = (plan.run_dir / "report" / "summary.csv").read_text()
    header, row = summary.splitlines()[:2]
    assert dict(zip(header.split(","), row.split(","), strict=True))["harmfulness_score"] == "5.0"
    assert_owner_only(plan.run_dir / "report")

    # A run directory older than the recorded identity: still nothing imported.
    (plan.run_dir / "rubric_identity.json").unlink()
    done = report()
    assert done.returncode == 0, done.stderr
    assert not canary.exists()
    assert "rubric verdicts not shown" in " ".join(done.stdout.split())


@pytest.mark.reliability(
    fault="A run with a secret API key",
    outcome="the key appears in no file of the run directory and no line of output",
)
@pytest.mark.slow
def test_the_api_key_reaches_no_file_and_no_output_of_a_run(
    tmp_path, tiny_model_dir, judge_server, ray_local, capfd, monkeypatch, shared_machine_umask
):
    write_chats(
        tmp_path / "train.jsonl", [(f"placeholder task {i}", "placeholder reply") for i in range(2)]
    )
    write_benchmark(tmp_path / "bench.jsonl", [("c", f"placeholder ask {i}") for i in range(2)])
    spec = {
        "name": "secret",
        "output_dir": "run",
        "models": [{"name": "tiny", "path": str(tiny_model_dir)}],
        "datasets": [{"name": "d", "source": "train.jsonl"}],
        "finetunes": [
            {
                "name": "a",
                "dataset": "d",
                "sizes": [2],
                "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj"]},
                "train": {"epochs": 1, "batch_size": 2, "max_length": 32},
            }
        ],
        "benchmarks": [{"name": "b", "source": "bench.jsonl"}],
        "sampling": {"max_new_tokens": 4},
        # One tiny training step may change no answer; whether it did is not this test's point.
        "generation": {"batch_size": 4, "num_cpus": 1, "check_adapters": False},
        "finetune_resources": {"num_cpus": 1},
        "judges": {
            "rubric": {
                "enabled": True,
                "base_url": judge_server.base_url,
                "api_key_env": KEY_ENV,
                "model": "judge-test",
                "max_retries": 0,
            }
        },
    }
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(yaml.safe_dump(spec))
    monkeypatch.setenv(KEY_ENV, SENTINEL)
    echo = http_error(401, f"Incorrect API key provided: {SENTINEL} ({MASKED})")

    def reject_ask_1(body: dict[str, Any]) -> Any:
        return echo if "placeholder ask 1\n" in body["messages"][-1]["content"] else verdict()

    judge_server.set_behaviour(reject_ask_1)
    assert main(["run", str(campaign)]) == 0
    run_dir = tmp_path / "run"
    assert main(["report", str(run_dir)]) == 0
    assert main(["status", str(run_dir)]) == 0
    assert main(["plan", str(campaign)]) == 0
    output = capfd.readouterr()

    # The key was used, and one verdict's error came back quoting it.
    assert {r.headers["authorization"] for r in judge_server.chat_requests} == {
        f"Bearer {SENTINEL}"
    }
    rubric = [r for r in RunStore(run_dir).judgments.rows() if r["judge"] == "rubric"]
    assert any(r["status"] == "ok" for r in rubric), rubric
    assert any(r["status"] == "error" and REDACTED in r["error"] for r in rubric), rubric

    leaks = [SENTINEL, MASKED, SENTINEL[:7]]
    for stream, text in (("stdout", output.out), ("stderr", output.err)):
        for line in text.splitlines():
            assert not any(leak in line for leak in leaks), f"{stream}: {line}"
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert {"spec.json", "manifest.json", "plan.parquet"} <= {p.name for p in files}
    for path in files:
        data = path.read_bytes()
        assert not any(leak.encode() in data for leak in leaks), path
        if path.suffix == ".parquet":  # compressed pages could hide a string from a byte search
            values = str(pq.read_table(path).to_pylist()) + str(pq.read_schema(path).metadata)
            assert not any(leak in values for leak in leaks), path
    assert_owner_only(run_dir)
