"""The offline path: verdicts through the OpenAI Batch API, resumable across driver restarts.

Each submitted job has a state file in `<run dir>/judge_batches/`, written before the job is
created and updated with its id right after, so a restarted driver polls the jobs it
already paid for instead of submitting the same requests again. custom_id = verdict key.

The state file also records what a job's rows need besides the reply (each key's generation
key, the judge model, rubric and version), so its results are stored even when their keys are
no longer on the driver's to-do list: after a spec change or a restart, paid is kept.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ftsafe_ray.errors import JudgeError
from ftsafe_ray.judge.rubric_client import (
    JudgeRequest,
    JudgeResult,
    error_result,
    redact_secret,
    result_from_completion,
)
from ftsafe_ray.judge.rubrics import BUILTIN_RUBRICS, Rubric, rubric_failure
from ftsafe_ray.judge.verdict import ParsedVerdict

if TYPE_CHECKING:
    from ftsafe_ray.spec import RubricJudgeSpec

ENDPOINT: Literal["/v1/chat/completions"] = "/v1/chat/completions"
FINISHED = frozenset({"completed", "failed", "expired", "cancelled"})
STATE_DIR = "judge_batches"


@dataclass
class BatchJob:
    """One Batch API job as persisted in the run directory."""

    name: str
    keys: list[str]
    batch_id: str | None = None
    input_file_id: str | None = None
    status: str = "submitting"  # then the API's statuses, then "ingested"
    # Absent from state files of older versions: those rows get today's spec and no
    # generation key.
    generation_keys: dict[str, str] = field(default_factory=dict)
    judge_model: str | None = None
    rubric: str | None = None
    judge_version: str | None = None
    max_tokens: int | None = None

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}.json"
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(json.dumps(vars(self)))
        temporary.replace(path)

    @classmethod
    def load_pending(cls, directory: Path) -> list[BatchJob]:
        jobs = [cls(**json.loads(p.read_text())) for p in sorted(directory.glob("*.json"))]
        return [job for job in jobs if job.status != "ingested"]


def batch_line(request: JudgeRequest, spec: RubricJudgeSpec, rubric: Rubric) -> str:
    """One JSONL line of a Batch API input file."""
    body = {
        "model": spec.model,
        "messages": rubric.build_messages(request.instruction, request.answer),
        "temperature": 0,
        "max_tokens": spec.max_tokens,
    }
    return json.dumps({"custom_id": request.key, "method": "POST", "url": ENDPOINT, "body": body})


class BatchJudge:
    """Submits requests as Batch API jobs, polls them and turns their output into results."""

    def __init__(
        self,
        spec: RubricJudgeSpec,
        api_key: str,
        base_url: str | None,
        state_dir: Path,
        rubric: Rubric,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        import openai

        self.spec = spec
        self.rubric = rubric
        self.state_dir = Path(state_dir)
        self._client = openai.OpenAI(
            base_url=base_url, api_key=api_key, max_retries=spec.max_retries, timeout=120.0
        )
        self._sleep = sleep
        self._api_key = api_key
        # Requests whose messages the rubric could not build: error rows, never submitted.
        self.unbuildable: list[JudgeResult] = []

    def pending(self) -> list[BatchJob]:
        """Jobs submitted by an earlier driver and not ingested yet."""
        return BatchJob.load_pending(self.state_dir) if self.state_dir.is_dir() else []

    def submit(
        self, requests: Sequence[JudgeRequest], generation_keys: Mapping[str, str] | None = None
    ) -> list[BatchJob]:
        """Upload and create jobs of at most `batch_max_requests` requests each.

        `generation_keys` (verdict key -> generation key) is kept in each job's state file.
        A request the rubric cannot build messages for is left out and added to `unbuildable`
        as an error row (nothing was paid for it).
        """
        lines: list[tuple[str, str]] = []
        for request in requests:
            try:
                lines.append((request.key, batch_line(request, self.spec, self.rubric)))
            except Exception as error:  # a custom rubric's bug fails its row, not the job
                message = rubric_failure("build_messages", error)
                self.unbuildable.append(error_result(request.key, message, 0, 0.0))
        size = self.spec.batch_max_requests
        known = generation_keys or {}
        return [self._submit(lines[i : i + size], known) for i in range(0, len(lines), size)]

    def _submit(self, lines: Sequence[tuple[str, str]], known: Mapping[str, str]) -> BatchJob:
        job = BatchJob(
            name=f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}",
            keys=[key for key, _ in lines],
            generation_keys={key: known[key] for key, _ in lines if key in known},
            judge_model=self.spec.model,
            rubric=self.spec.rubric,
            judge_version=self.rubric.version,
            max_tokens=self.spec.max_tokens,
        )
        data = "".join(line + "\n" for _, line in lines)
        job.save(self.state_dir)
        self._create(job, data.encode())
        return job

    def _create(self, job: BatchJob, data: bytes) -> None:
        try:
            uploaded = self._client.files.create(file=("batch.jsonl", data), purpose="batch")
            job.input_file_id = uploaded.id
            job.save(self.state_dir)
            batch = self._client.batches.create(
                input_file_id=uploaded.id,
                endpoint=ENDPOINT,
                completion_window="24h",
                metadata={"ftsafe_job": job.name},
            )
        except Exception as error:
            detail = redact_secret(" ".join(str(error).split()), self._api_key)
            raise JudgeError(
                f"judges.rubric (batch mode): submitting a batch failed: {detail}; "
                "check the endpoint supports /v1/files and /v1/batches, or set mode: online"
            ) from None
        job.batch_id, job.status = batch.id, batch.status
        job.save(self.state_dir)

    def recover(self, job: BatchJob) -> BatchJob | None:
        """A job whose driver died between upload and create: find it by metadata, or drop it."""
        if job.batch_id is not None:
            return job
        for batch in self._client.batches.list(limit=100):
            if (batch.metadata or {}).get("ftsafe_job") == job.name:
                job.batch_id, job.status = batch.id, batch.status
                job.save(self.state_dir)
                return job
        job.status = "ingested"  # never created: its keys are simply still to do
        job.save(self.state_dir)
        return None

    def collect(
        self,
        jobs: Sequence[BatchJob],
        on_results: Callable[[BatchJob, list[JudgeResult]], None],
    ) -> int:
        """Poll until every job has finished; hand each job's results over as it finishes."""
        waiting = [j for j in (self.recover(job) for job in jobs) if j is not None]
        count = 0
        while waiting:
            still = []
            for job in waiting:
                try:
                    assert job.batch_id is not None  # only created jobs wait
                    batch = self._client.batches.retrieve(job.batch_id)
                    job.status = batch.status
                    if batch.status not in FINISHED:
                        still.append(job)
                        continue
                    results = self._ingest(job, batch)
                except JudgeError:
                    raise
                except Exception as error:
                    detail = redact_secret(" ".join(str(error).split()), self._api_key)
                    raise JudgeError(
                        f"judges.rubric (batch mode): polling batch {job.batch_id} failed: "
                        f"{detail}; its id is kept in {self.state_dir}, rerun to resume"
                    ) from None
                on_results(job, results)
                count += len(results)
                job.status = "ingested"
                job.save(self.state_dir)
            waiting = still
            if waiting:
                self._sleep(self.spec.batch_poll_s)
        return count

    def _lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if not file_id:
            return []
        text = self._client.files.content(file_id).text
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def rubric_of(self, job: BatchJob) -> Rubric:
        """The rubric that asked a job's questions, to read its replies with.

        A job from before a spec change may have used another rubric or version: its replies
        are read by that one if it is built in (or the spec's) at that version, else stored
        unread (raw kept). A `module:object` named only by the state file is never imported:
        a file in the run directory must not choose code to run.
        """
        name = job.rubric or self.spec.rubric
        version = job.judge_version or self.rubric.version
        rubric = self.rubric if name == self.spec.rubric else BUILTIN_RUBRICS.get(name)
        if rubric is not None and rubric.version == version:
            return rubric
        reason = f"reply to rubric {name} {version}, which is not the spec's at that version"
        unread = ParsedVerdict("unparseable", None, reason)
        return Rubric(name, version, _no_messages, lambda _reply: unread)

    def _ingest(self, job: BatchJob, batch: Any) -> list[JudgeResult]:
        from openai.types.chat import ChatCompletion

        rubric = self.rubric_of(job)
        max_tokens = job.max_tokens or self.spec.max_tokens
        wanted = set(job.keys)
        results: dict[str, JudgeResult] = {}
        for line in self._lines(batch.output_file_id) + self._lines(batch.error_file_id):
            key = line.get("custom_id")
            if key not in wanted or key in results:
                continue
            response = line.get("response") or {}
            body = response.get("body") or {}
            if response.get("status_code") == 200:
                completion = ChatCompletion.model_validate(body)
                # A reply cut off at max_tokens is stored 'truncated' (flagged, final). Unlike
                # the online path it is not retried with more room: that would take a second
                # batch and another wait of up to 24 h for what is rare with a sane max_tokens.
                results[key] = result_from_completion(key, completion, rubric, 1, 0.0, max_tokens)
            else:
                detail = (line.get("error") or body.get("error") or {}).get("message", "")
                code = response.get("status_code")
                results[key] = error_result(key, f"batch request HTTP {code}: {detail}", 1, 0.0)
        for key in job.keys:
            if key not in results:
                message = f"batch {job.batch_id} ended {batch.status} with no result for it"
                results[key] = error_result(key, message, 1, 0.0)
        return [results[key] for key in job.keys]

    def close(self) -> None:
        self._client.close()


def _no_messages(instruction: str, answer: str) -> list[dict[str, str]]:
    raise JudgeError("a stand-in rubric only reads replies")
