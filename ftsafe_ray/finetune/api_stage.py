"""Fine-tunes of API models through an OpenAI-compatible fine-tuning API, run from the driver.

Each unit: its rows as chat JSONL, uploaded (purpose fine-tune), a job created with the base
model, n_epochs, the arm's API hyperparameters and the seed, the unit's content key in the
job's suffix and metadata; the job id is stored at once (a `submitted` row), then the job is
polled with a growing wait until it ends. A driver that stops meanwhile re-attaches on the
next run: to the job its `submitted` row names, else to a job whose metadata carries the key
(created just before the stop). A job the provider rejects becomes an error row carrying the
provider's reason.
"""

from __future__ import annotations

import functools
import itertools
import json
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ftsafe_ray.api_access import (
    ApiAccess,
    api_access,
    call_with_retries,
    error_text,
    sync_client,
    training_cost,
    training_jsonl,
    training_tokens,
)
from ftsafe_ray.errors import StageError
from ftsafe_ray.finetune.actor import unit_row
from ftsafe_ray.finetune.api_moderation import flagged_share
from ftsafe_ray.plan import FinetuneUnit, Plan
from ftsafe_ray.progress import Progress
from ftsafe_ray.store import RunStore

SUBMITTED = "submitted"  # a job exists (job_id); neither done nor failed
KEY_METADATA = "ftsafe_key"
SUFFIX_LENGTH = 18  # the shortest suffix limit OpenAI has had
POLL_GROWTH = 1.5
# Jobs at the provider run for minutes to hours: a driver told to stop (Ctrl-C) must not wait
# for them. Set by stop_api_finetunes; its jobs keep running and the next run re-attaches.
_STOP = threading.Event()
# Jobs looked through for one a stopped driver created but did not record (newest first).
MAX_LISTED_JOBS = 1000
ENDED = frozenset({"succeeded", "failed", "cancelled"})
REJECTED = frozenset({400, 413, 422})  # the request refused for what it holds, not for access


def stop_api_finetunes() -> None:
    """Stop waiting for API fine-tuning jobs (the driver is stopping); jobs are left running."""
    _STOP.set()


def _stoppable_sleep(seconds: float) -> None:
    if _STOP.wait(seconds):
        raise _Stopped


def start_api_finetunes(
    plan: Plan, store: RunStore, progress: Progress, units: list[FinetuneUnit], stage: str
) -> Future[list[dict[str, Any]]] | None:
    """Run `units` (API fine-tunes) in a thread of their own, beside local training; the
    future's result is their rows. A daemon thread: a driver that stops never waits for it."""
    if not units:
        return None
    future: Future[list[dict[str, Any]]] = Future()

    def work() -> None:
        try:
            future.set_result(ApiFinetunes(plan, store, progress).run(units, stage))
        except BaseException as error:
            future.set_exception(error)

    threading.Thread(target=work, name="api-finetunes", daemon=True).start()
    return future


def api_units(plan: Plan, units: list[FinetuneUnit]) -> list[FinetuneUnit]:
    """The units whose base model is an API model (provider openai)."""
    return [u for u in units if plan.model_spec(u.model).provider == "openai"]


def spent_usd(store: RunStore, model: str) -> float:
    """What this model's API fine-tunes and answers stored in the run cost so far."""
    total = 0.0
    for table in (store.finetunes, store.generations):
        rows = table.latest(["model", "cost_usd"]).to_pylist()
        total += sum(r["cost_usd"] or 0.0 for r in rows if r["model"] == model)
    return total


class ApiFinetunes:
    """Runs the API fine-tunes of one plan; `sleep` waits between polls and retries."""

    def __init__(
        self,
        plan: Plan,
        store: RunStore,
        progress: Progress,
        environ: dict[str, str] | None = None,
        sleep: Callable[[float], None] = _stoppable_sleep,
    ) -> None:
        self.plan, self.store, self.progress = plan, store, progress
        self.environ, self.sleep = environ, sleep
        self._lock = threading.Lock()
        self._reserved: dict[str, float] = {}
        self._stage = ""

    def run(self, units: list[FinetuneUnit], stage: str) -> list[dict[str, Any]]:
        """Run every unit (jobs of one model at most `api.max_concurrent_jobs` at once) and
        return the rows of those that ended; a unit still running stays `submitted`."""
        _STOP.clear()
        self._stage = stage
        rows: list[dict[str, Any]] = []
        for model_name in dict.fromkeys(u.model for u in units):
            mine = [u for u in units if u.model == model_name]
            model = self.plan.model_spec(model_name)
            access = api_access(model, self.environ)
            client = sync_client(access, model.endpoint().timeout_s)
            try:
                known = self._known_jobs(client, access, mine)
                workers = min(model.endpoint().max_concurrent_jobs, len(mine))
                one = functools.partial(self._one, client, access, known)
                rows += [row for row in _in_daemon_threads(one, mine, workers) if row]
            finally:
                client.close()
        return rows

    def _known_jobs(self, client: Any, access: ApiAccess, units: list[FinetuneUnit]) -> dict:
        """Job ids to re-attach to, by unit key: stored `submitted` rows first; for the units
        with none, a job at the provider whose metadata names the unit (one list call)."""
        table = self.store.finetunes.latest(["key", "status", "job_id"]).to_pylist()
        known = {r["key"]: r["job_id"] for r in table if r["status"] == SUBMITTED and r["job_id"]}
        wanted = {u.key for u in units} - set(known)
        if not wanted:
            return known
        api = self.plan.model_spec(units[0].model).endpoint()
        try:
            jobs = call_with_retries(
                lambda: list(
                    itertools.islice(client.fine_tuning.jobs.list(limit=100), MAX_LISTED_JOBS)
                ),
                api.max_retries,
                self.sleep,
            )
        except Exception as error:
            raise _stage_error("listing fine-tuning jobs", error, access) from None
        for job in jobs:
            key = (getattr(job, "metadata", None) or {}).get(KEY_METADATA)
            if key in wanted and job.status not in ("failed", "cancelled"):
                known.setdefault(key, job.id)
        return known

    def _one(
        self, client: Any, access: ApiAccess, known: dict[str, str], unit: FinetuneUnit
    ) -> dict[str, Any] | None:
        """The unit's final row (stored), or None when its job is still running."""
        job_id = known.get(unit.key)
        model = self.plan.model_spec(unit.model)
        api = model.endpoint()
        arm = next(a for a in self.plan.spec.finetunes if a.name == unit.arm)
        price = self.plan.spec.judges.prices.get(model.path)
        estimate = training_tokens(unit.examples, arm.train.epochs)
        base = {
            **unit_row(unit),
            "adapter_path": None,
            "settings_json": json.dumps(
                {
                    "provider": "openai",
                    "endpoint": api.host(),
                    "base_model": model.path,
                    "n_epochs": arm.train.epochs,
                    "hyperparameters": arm.api.model_dump(mode="json"),
                    "system_prompt": unit.system_prompt,
                    "estimated_trained_tokens": estimate,
                },
                sort_keys=True,
            ),
        }
        if _STOP.is_set():
            return None
        try:
            if job_id is None:
                if not self._fits_budget(unit, training_cost(price, estimate)):
                    return None
                if api.moderation:
                    base = self._moderated(client, unit, base)
                job_id = self._create(client, access, unit, arm, model.path)
                self._store({**base, "status": SUBMITTED, "job_id": job_id})
            else:
                self.progress.log(f"fine-tune {unit.arm}: re-attached to job {job_id}")
            job = self._wait(client, job_id, api)
        except _Stopped:
            if job_id is not None:
                self.progress.log(
                    f"fine-tune {unit.arm}: job {job_id} left running (rerun to resume)"
                )
            return None
        except _Rejected as rejected:
            return self._store({**base, "status": "error", "error": str(rejected)})
        except Exception as error:  # a transient failure outlasting the retries: rerun resumes
            self.progress.log(
                f"fine-tune {unit.arm}: {error_text(error, access.api_key)}; "
                f"{'job ' + job_id + ' is' if job_id else 'nothing was'} left as it is "
                "(rerun to resume)"
            )
            return None
        row = {**base, "job_id": job_id, "trained_tokens": getattr(job, "trained_tokens", None)}
        if job.status == "succeeded":
            cost = training_cost(price, row["trained_tokens"] or estimate)
            return self._store(
                {**row, "status": "ok", "cost_usd": cost, "provider_model": job.fine_tuned_model}
            )
        failure = getattr(job, "error", None)
        reason = getattr(failure, "message", None) or f"job {job.status}"
        code = getattr(failure, "code", None)
        reason = f"provider: {reason}" + (f" ({code})" if code else "")
        return self._store({**row, "status": "error", "error": reason})

    def _fits_budget(self, unit: FinetuneUnit, cost: float | None) -> bool:
        """Reserve the job's estimated cost against the model's api.budget_usd, if any."""
        model = self.plan.model_spec(unit.model)
        budget = model.endpoint().budget_usd
        if budget is None:
            return True
        with self._lock:
            if unit.model not in self._reserved:
                self._reserved[unit.model] = spent_usd(self.store, unit.model)
            if self._reserved[unit.model] + (cost or 0.0) > budget:
                self.progress.log(
                    f"fine-tune {unit.arm}: not started, its ~${cost or 0:.2f} would pass "
                    f"models ({unit.model}).api.budget_usd ${budget:.2f}"
                )
                return False
            self._reserved[unit.model] += cost or 0.0
        return True

    def _moderated(self, client: Any, unit: FinetuneUnit, base: dict) -> dict:
        """`base` with the share of the unit's rows the moderation endpoint flags recorded."""
        api = self.plan.model_spec(unit.model).endpoint()
        share = flagged_share(
            client, unit.examples, api.moderation_model, api.max_retries, self.sleep
        )
        self.progress.log(f"fine-tune {unit.arm}: moderation flagged {share:.0%} of its rows")
        settings = {**json.loads(base["settings_json"]), "moderation_flagged_share": share}
        return {**base, "settings_json": json.dumps(settings, sort_keys=True)}

    def _create(
        self, client: Any, access: ApiAccess, unit: FinetuneUnit, arm: Any, base_model: str
    ) -> str:
        """Upload the rows and create the job; a request the provider refuses (400, 413, 422:
        the file or a setting rejected) raises _Rejected with its reason."""
        api = self.plan.model_spec(unit.model).endpoint()
        data = training_jsonl(unit.examples)
        try:
            upload = call_with_retries(
                lambda: client.files.create(file=(f"{unit.key}.jsonl", data), purpose="fine-tune"),
                api.max_retries,
                self.sleep,
            )
            hyper: dict[str, Any] = {"n_epochs": arm.train.epochs, **arm.api.model_dump()}
            job = call_with_retries(
                lambda: client.fine_tuning.jobs.create(
                    model=base_model,
                    training_file=upload.id,
                    hyperparameters=hyper,
                    seed=unit.seed,
                    suffix=unit.key[:SUFFIX_LENGTH],
                    metadata={KEY_METADATA: unit.key},
                ),
                api.max_retries,
                self.sleep,
            )
        except Exception as error:
            import openai

            if isinstance(error, openai.APIStatusError) and error.status_code in REJECTED:
                raise _Rejected(f"provider: {error_text(error, access.api_key)}") from None
            raise
        return str(job.id)

    def _wait(self, client: Any, job_id: str, api: Any) -> Any:
        """Poll until the job ends (with a growing wait); the ended job."""
        wait = api.poll_s
        while True:
            job = call_with_retries(
                lambda: client.fine_tuning.jobs.retrieve(job_id), api.max_retries, self.sleep
            )
            if job.status in ENDED:
                return job
            self.sleep(wait)
            wait = min(api.poll_max_s, wait * POLL_GROWTH)

    def _store(self, row: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.store.finetunes.write([row])
        if row["status"] == "error":
            self.progress.log(f"fine-tune {row['arm']} failed: {row['error']}")
        if row["status"] != SUBMITTED:
            self.progress.advance(self._stage)
        return row


def _in_daemon_threads(
    work: Callable[[FinetuneUnit], dict[str, Any] | None], units: list[FinetuneUnit], workers: int
) -> list[dict[str, Any] | None]:
    """`work` of each unit on `workers` daemon threads (a driver exiting never waits for a
    job's poll), results in unit order; the first exception raised is raised here."""
    results: list[dict[str, Any] | None] = [None] * len(units)
    errors: list[BaseException] = []
    queue = iter(list(enumerate(units)))
    lock = threading.Lock()

    def worker() -> None:
        while not errors:
            with lock:
                item = next(queue, None)
            if item is None:
                return
            try:
                results[item[0]] = work(item[1])
            except BaseException as error:
                errors.append(error)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


class _Stopped(Exception):
    """The driver is stopping: leave the job as it is."""


class _Rejected(Exception):
    """The provider refused to create the job; the message is its reason."""


def _stage_error(what: str, error: BaseException, access: ApiAccess) -> StageError:
    where = access.base_url or "https://api.openai.com/v1"
    return StageError(f"fine-tune: {what} at {where} failed: {error_text(error, access.api_key)}")
