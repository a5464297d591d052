"""The offline path: verdicts through the OpenAI Batch API, resumable across driver restarts.

Each submitted job has a state file in `<run dir>/judge_batches/`, written before the job is
created and updated with its id right after, so a restarted driver polls the jobs it
already paid for instead of submitting the same requests again. custom_id = verdict key.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftsafe_ray.errors import JudgeError
from ftsafe_ray.judge.rubric_client import (
    JudgeRequest,
    JudgeResult,
    error_result,
    result_from_completion,
)
from ftsafe_ray.judge.rubrics import Rubric

if TYPE_CHECKING:
    from ftsafe_ray.spec import RubricJudgeSpec

ENDPOINT = "/v1/chat/completions"
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

    def pending(self) -> list[BatchJob]:
        """Jobs submitted by an earlier driver and not ingested yet."""
        return BatchJob.load_pending(self.state_dir) if self.state_dir.is_dir() else []

    def submit(self, requests: Sequence[JudgeRequest]) -> list[BatchJob]:
        """Upload and create jobs of at most `batch_max_requests` requests each."""
        size = self.spec.batch_max_requests
        return [self._submit(requests[i : i + size]) for i in range(0, len(requests), size)]

    def _submit(self, requests: Sequence[JudgeRequest]) -> BatchJob:
        job = BatchJob(name=f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}", keys=[])
        job.keys = [r.key for r in requests]
        data = "".join(batch_line(r, self.spec, self.rubric) + "\n" for r in requests)
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
            detail = " ".join(str(error).split())
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
        self, jobs: Sequence[BatchJob], on_results: Callable[[list[JudgeResult]], None]
    ) -> int:
        """Poll until every job has finished; hand each job's results over as it finishes."""
        waiting = [j for j in (self.recover(job) for job in jobs) if j is not None]
        count = 0
        while waiting:
            still = []
            for job in waiting:
                try:
                    batch = self._client.batches.retrieve(job.batch_id)
                    job.status = batch.status
                    if batch.status not in FINISHED:
                        still.append(job)
                        continue
                    results = self._ingest(job, batch)
                except JudgeError:
                    raise
                except Exception as error:
                    detail = " ".join(str(error).split())
                    raise JudgeError(
                        f"judges.rubric (batch mode): polling batch {job.batch_id} failed: "
                        f"{detail}; its id is kept in {self.state_dir}, rerun to resume"
                    ) from None
                on_results(results)
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

    def _ingest(self, job: BatchJob, batch: Any) -> list[JudgeResult]:
        from openai.types.chat import ChatCompletion

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
                results[key] = result_from_completion(
                    key, completion, self.rubric, 1, 0.0, self.spec.max_tokens
                )
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
