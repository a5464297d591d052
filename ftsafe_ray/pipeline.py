"""The stage list: plan → fine-tune → generate → judge → report, each resumable from the store."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from ftsafe_ray.capacity import ensure_capacity, release_request
from ftsafe_ray.errors import JudgeError, StageError, StoreError
from ftsafe_ray.plan import Plan, build_plan
from ftsafe_ray.progress import Progress, default_progress
from ftsafe_ray.spec import CampaignSpec, load_campaign, parse_campaign
from ftsafe_ray.store import RunStore
from ftsafe_ray.store.lock import RunLock
from ftsafe_ray.store.private import private_mkdir
from ftsafe_ray.store.remote import is_remote
from ftsafe_ray.store.run_dir import open_run

if TYPE_CHECKING:
    from ftsafe_ray.judge.stage import RubricAccess
    from ftsafe_ray.report.metrics import GroupSummary
    from ftsafe_ray.report.scored_rows import ScoredRows


@dataclass(frozen=True)
class PlanStatus:
    """How much of a plan is already in the store."""

    finetunes_total: int
    finetunes_done: int
    finetunes_failed: int
    generations_total: int
    generations_done: int
    generations_failed: int
    verdicts_done: int


@dataclass
class CampaignOutcome:
    """What one `run` did, for the CLI and the manifest."""

    run_dir: Path
    seconds: float
    counts: dict[str, Any] = field(default_factory=dict)
    report_files: list[Path] = field(default_factory=list)
    location: str = ""  # the run directory as named: its s3:// URI, or its local path


def load_plan(campaign_path: str | Path) -> Plan:
    """Validate a campaign file and expand its grid."""
    path = Path(campaign_path)
    spec = load_campaign(path)
    return build_plan(spec, base_dir=path.resolve().parent)


def plan_status(plan: Plan) -> PlanStatus:
    """Count what the store already holds for this plan."""
    store = open_run(plan.run_uri or plan.run_dir)
    finetune_keys = {unit.key for unit in plan.finetunes}
    keys = plan.generation_keys
    judged = pc.unique(store.judgments.latest(["generation_key"]).column("generation_key"))

    def planned(found: pa.Array | pa.ChunkedArray) -> int:
        return int(pc.sum(pc.is_in(keys, value_set=found)).as_py() or 0)

    return PlanStatus(
        finetunes_total=len(finetune_keys),
        finetunes_done=len(finetune_keys & store.finetunes.done_keys({"ok"})),
        finetunes_failed=len(finetune_keys & store.finetunes.done_keys({"error"})),
        generations_total=len(keys),
        generations_done=planned(store.answered_key_array()),
        generations_failed=planned(store.generations.done_key_array({"error"})),
        verdicts_done=planned(judged),
    )


def start_ray(address: str | None) -> Any:
    """Join the cluster at `address` (or $RAY_ADDRESS), else start a local one."""
    import ray

    if ray.is_initialized():
        return ray
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or None)
    else:
        # "local": always a cluster of our own. Without it Ray joins whatever cluster
        # /tmp/ray/ray_current_cluster names (a `ray start` on this machine, or a dead one).
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    return ray


def run_campaign(
    campaign_path: str | Path,
    *,
    address: str | None = None,
    retry_failed: bool = False,
    progress: Progress | None = None,
    console: Any = None,
    environ: dict[str, str] | None = None,
) -> CampaignOutcome:
    """Run every missing stage of a campaign, then print and write its report.

    The run directory stays locked for the whole run (store/lock.py), so a second driver on
    it fails at once instead of redoing and paying for the same work; the lock is released
    however the run ends, KeyboardInterrupt included.
    """
    started = time.monotonic()
    # Resolved once, now: a job's working directory (Ray's copy) can vanish mid-run when the
    # cluster loses a node, and nothing after this reads the working directory again.
    campaign_path = Path(campaign_path).resolve()
    plan = load_plan(campaign_path)
    with RunLock(plan.run_dir, campaign=plan.spec.name):
        return _run_locked(
            plan,
            campaign_path,
            started,
            address=address,
            retry_failed=retry_failed,
            progress=progress,
            console=console,
            environ=environ,
        )


def _run_locked(
    plan: Plan,
    campaign_path: str | Path,
    started: float,
    *,
    address: str | None,
    retry_failed: bool,
    progress: Progress | None,
    console: Any,
    environ: dict[str, str] | None,
) -> CampaignOutcome:
    from ftsafe_ray.finetune.api_stage import stop_api_finetunes
    from ftsafe_ray.finetune.stage import run_align_stage, run_finetune_stage
    from ftsafe_ray.generate.stage import run_generate_stage
    from ftsafe_ray.judge.identity import keyword_set_identities
    from ftsafe_ray.judge.live import LiveJudge, PassProgress, combine
    from ftsafe_ray.judge.stage import rubric_access, run_judge_stage, start_judge_pool

    access = rubric_access(plan.spec.judges.rubric, environ)
    store = RunStore(plan.run_dir, spec_hash=plan.spec_hash, remote=plan.run_uri)
    store.sync_down()  # on object storage: what earlier runs, anywhere, stored
    store.freeze_spec(plan.spec.model_dump(mode="json"), plan.spec_hash)
    store.freeze_plan(
        plan.unit_table(),
        keyword_set_identities(plan.keyword_sets),
        recorded_rubric_identity(plan.spec, access),
    )
    from ftsafe_ray.trained_adapters import import_trained_adapters

    import_trained_adapters(plan, store)  # adapters trained elsewhere count as fine-tuned
    progress = progress or default_progress()
    # A campaign with nothing left to train, generate or send to a rubric judge starts no
    # Ray cluster: keyword judging and the report run in this process.
    requested_nodes = False
    if needs_actors(plan, store, access is not None, retry_failed):
        ray = start_ray(address)
        requested_nodes = ensure_capacity(plan.spec, ray, progress.log)
    # The judge actors start now, in the background: up and ready when the answers are.
    judge_pool = start_judge_pool(plan, access)
    base_dir = Path(campaign_path).resolve().parent
    try:
        aligned = run_align_stage(plan, store, progress)
        # Judges take answers as they are stored, in passes beside generation (judge/live.py).
        passes = PassProgress(progress)
        live = LiveJudge(plan, store, passes, access, judge_pool, retry_failed, base_dir)
        live.start()
        try:
            # Fine-tunes train in a thread while generation picks up each adapter as it lands.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fine-tune") as pool:
                finetuning = pool.submit(run_finetune_stage, plan, store, progress, retry_failed)
                try:
                    generated = run_generate_stage(
                        plan, store, progress, upstream=finetuning, retry_failed=retry_failed
                    )
                except BaseException:
                    stop_api_finetunes()  # their jobs run on at the provider; reruns re-attach
                    raise
                finetuned = finetuning.result()
        finally:
            during = live.stop()
        compact_store(store, progress.log)  # the last pass reads every answer: few files, fast
        passes.final = True  # what is left, after generation: this pass finishes the stages
        final = run_judge_stage(plan, store, passes, access, retry_failed, base_dir, judge_pool)
        judged = combine(during, final)
        compact_store(store, progress.log)
    finally:
        if judge_pool is not None:
            judge_pool.close()
        if requested_nodes:
            release_request()
        progress.close()
        store.sync_up()  # on object storage: anything a failed upload left only in the mirror
    if judged.rubric_skipped_reason:
        progress.log(judged.rubric_skipped_reason)
    counts = {
        "alignments_trained": aligned,
        "finetunes_trained": finetuned.trained,
        "finetunes_failed": finetuned.failed,
        "finetunes_reused": finetuned.skipped,
        "generations_new": generated.generated,
        "generations_reused": generated.skipped,
        "generations_blocked": generated.blocked,
        "keyword_verdicts_new": judged.keyword_new,
        "rubric_verdicts_new": judged.rubric_new,
    }
    outcome = CampaignOutcome(
        run_dir=plan.run_dir,
        seconds=time.monotonic() - started,
        counts=counts,
        location=plan.run_uri or str(plan.run_dir),
    )
    outcome.report_files = report_run(
        plan.run_uri or plan.run_dir, console=console, html=True, keep_current_files=True
    )
    store.write_manifest(
        campaign=plan.spec.name,
        campaign_file=str(Path(campaign_path).resolve()),
        spec_hash=plan.spec_hash,
        last_run_seconds=round(outcome.seconds, 1),
        last_run_counts=counts,
    )
    if finetuned.failed:
        raise StageError(
            f"{finetuned.failed} fine-tune(s) failed; their errors are in "
            f"{plan.run_dir / 'finetunes'} (rerun with --retry-failed after fixing)"
        )
    return outcome


def compact_store(store: RunStore, log: Callable[[str], None]) -> None:
    """Merge the run's small shards (store/compaction.py), saying what was merged. Compaction
    is housekeeping: one that fails (a full disk) is logged and the run goes on, every row
    still where it was."""
    try:
        results = store.compact()
    except StoreError as error:
        log(f"compaction skipped: {error}")
        return
    for result in results:
        if result.rows_merged or result.leftovers_removed:
            log(f"compacted {result.line()}")


def needs_actors(plan: Plan, store: RunStore, rubric: bool, retry_failed: bool) -> bool:
    """Whether any stage of the run will start Ray actors: a model to align or fine-tune, an
    answer to generate, or a rubric judge to call (`rubric`: it is on)."""
    from ftsafe_ray.finetune.stage import pending_alignments, pending_finetunes
    from ftsafe_ray.generate.stage import pending_generations

    if rubric or pending_alignments(plan, store) or pending_finetunes(plan, store, retry_failed)[0]:
        return True
    return bool(pending_generations(plan, store, retry_failed)[0])


def recorded_rubric_identity(
    spec: CampaignSpec, access: RubricAccess | None
) -> dict[str, Any] | None:
    """The rubric judge's verdict identity, for the run directory to record (see
    RunStore.freeze_plan); None when its `module:object` cannot be loaded and the judge is off.

    Built here, where the campaign file is trusted and its rubric is imported anyway, so
    that `ftsafe report` never imports it. A rubric the judge is about to use must load:
    better to stop now than after fine-tuning and generation.
    """
    from ftsafe_ray.judge.identity import rubric_identity

    try:
        return rubric_identity(spec.judges.rubric)
    except JudgeError:
        if access is not None:
            raise
        return None


def frozen_spec(run_dir: Path) -> CampaignSpec:
    """The spec the run directory was last run with."""
    path = run_dir / "spec.json"
    if not path.is_file():
        raise StoreError(f"{run_dir}: not a run directory (no spec.json); run a campaign first")
    return parse_campaign(json.loads(path.read_text()), source=str(path))


def report_run(
    run_dir: str | Path,
    *,
    console: Any = None,
    write_files: bool = True,
    all_history: bool = False,
    by_seed: bool = False,
    html: bool = False,
    html_excerpts: int = 0,
    keep_current_files: bool = False,
) -> list[Path]:
    """Print the report tables of a run directory and write its CSV, Markdown and plots.

    The report covers the units of the plan the run directory was last run with, labelled as
    that plan labels them; `all_history` reports every answer ever stored there instead, under
    the labels it was stored with. `by_seed` gives one row per fine-tune seed. `html` also
    writes report/report.html, one self-contained page; `html_excerpts` quotes that many
    answers per group in it (off by default: a run holds harmful text). `keep_current_files`:
    files written from exactly the same stored rows and options are kept, not drawn again
    (report/freshness.py; a rerun with nothing new).
    """
    from ftsafe_ray.progress import report_console
    from ftsafe_ray.report.files import write_summary_files
    from ftsafe_ray.report.finetune_errors import finetune_errors, render_finetune_errors
    from ftsafe_ray.report.freshness import current_files, record_inputs, report_inputs
    from ftsafe_ray.report.judge_health import render_judge_tables, write_judge_files
    from ftsafe_ray.report.metrics import BY_CATEGORY, DEFAULT_BY, summarize
    from ftsafe_ray.report.plots import write_plots
    from ftsafe_ray.report.render import render_tables

    console = console or report_console()
    options: dict[str, object] = {
        "all_history": all_history,
        "by_seed": by_seed,
        "html": html,
        "html_excerpts": html_excerpts,
    }
    local = None if is_remote(str(run_dir)) else Path(run_dir)
    before = report_inputs(local, options) if local is not None else None
    store, spec, units, rows, names = _load_scored(run_dir, console, all_history)
    run_dir = store.root
    main_by = _with_seed(DEFAULT_BY) if by_seed else DEFAULT_BY
    main = summarize(rows, main_by, keyword_sets=names)
    from ftsafe_ray.report.utility import with_arm_utility

    main = with_arm_utility(main)  # each arm's utility beside its safety, in one row
    by_category = summarize(rows, BY_CATEGORY, keyword_sets=names)
    if all_history:
        console.print("All stored answers, under the labels they were stored with.")
    render_tables(main, by_category, console)
    render_judge_tables(rows, console, names)
    keys = None if all_history else set(units.column("adapter_key").to_pylist())
    render_finetune_errors(finetune_errors(store, keys), console)
    if not write_files:
        return []
    out_dir = run_dir / "report"
    # The same inputs before and after reading them: nothing was written meanwhile.
    inputs = report_inputs(run_dir, options)
    settled = before == inputs
    if settled and keep_current_files:
        kept = current_files(out_dir, inputs)
        if kept is not None:
            return kept
    private_mkdir(out_dir)  # reports quote harmful answers: owner-only, see store/private.py
    files = write_summary_files(main, by_category, out_dir)
    files += write_judge_files(rows, out_dir, names)
    files += write_plots(main, by_category, out_dir)
    if html or html_excerpts:
        files.append(_write_html_page(store, spec, rows, main, by_category, html_excerpts))
    for path in files:
        store.publish(path)
    if settled:
        record_inputs(out_dir, inputs, files)
    return files


def _load_scored(
    run_dir: str | Path, console: Any, all_history: bool
) -> tuple[RunStore, CampaignSpec, pa.Table, ScoredRows, tuple[str, ...]]:
    """A run directory's store, frozen spec, plan units, scored rows and keyword set names."""
    from ftsafe_ray.report.scored_rows import scored_rows

    store = open_run(run_dir)  # on object storage: its local mirror, filled from the store
    spec = frozen_spec(store.root)
    recorded = store.read_plan()
    if recorded is None:
        raise StoreError(
            f"{store.root}: no plan.parquet (written by `ftsafe run` since this version); rerun "
            "the campaign with `ftsafe run` (nothing finished is redone) to record its plan"
        )
    units, keyword_sets = recorded
    rubric = _report_rubric_identity(store, spec, console)
    rows = scored_rows(store, rubric, keyword_sets, None if all_history else units)
    return store, spec, units, rows, tuple(keyword_sets)


def _write_html_page(
    store: RunStore,
    spec: CampaignSpec,
    rows: ScoredRows,
    main: list[GroupSummary],
    by_category: list[GroupSummary],
    excerpts: int,
) -> Path:
    """report/report.html: the run's self-contained page (report/html_report.py)."""
    from ftsafe_ray.report import html_report as page
    from ftsafe_ray.report.arms import arm_relations
    from ftsafe_ray.report.judge_health import judge_agreement, status_counts

    run = page.RunPage(
        title=spec.name,
        run_dir=str(store.root),
        main=main,
        by_category=by_category,
        health=status_counts(rows, ("model", "dataset", "benchmark")),
        agreement=judge_agreement(rows, rows.keyword_sets),
        relations=arm_relations(spec),
        excerpts=page.answer_excerpts(store, rows, excerpts) if excerpts > 0 else None,
    )
    return page.write_html(store.root / "report" / "report.html", page.run_page_html(run))


def compare_runs(
    run_a: str | Path, run_b: str | Path, *, console: Any = None, html: bool = False
) -> list[Path]:
    """Print two run directories side by side (each metric of A, B and B − A); `html` also
    writes the comparison page into B's report/ directory."""
    from ftsafe_ray.progress import report_console
    from ftsafe_ray.report.compare import compare_summaries, compared_metrics, render_comparison
    from ftsafe_ray.report.metrics import DEFAULT_BY, summarize

    console = console or report_console()
    loaded = [_load_scored(run, console, False) for run in (run_a, run_b)]
    a, b = (summarize(scored, DEFAULT_BY, keyword_sets=sets) for *_, scored, sets in loaded)
    names = (str(loaded[0][0].root), str(loaded[1][0].root))
    rows, metrics = compare_summaries(a, b), compared_metrics(a, b)
    render_comparison(rows, metrics, names, console)
    if not html:
        return []
    from ftsafe_ray.report.html_report import comparison_html, write_html

    store_b = loaded[1][0]
    out_dir = store_b.root / "report"
    private_mkdir(out_dir)
    path = write_html(out_dir / "compare.html", comparison_html(rows, metrics, names))
    store_b.publish(path)
    return [path]


def _report_rubric_identity(
    store: RunStore, spec: CampaignSpec, console: Any
) -> dict[str, Any] | None:
    """The rubric identity the report finds verdicts by, importing nothing.

    A run directory may come from someone else, and its spec.json can name any
    `module:object` rubric: rebuilding that identity would import (run) the module. So the
    identity recorded at run time is used; a run directory older than that record gets the
    built-in rubrics' identities (no import needed) and no rubric columns otherwise.
    """
    recorded = store.read_rubric_identity()
    if recorded is not None:
        return recorded
    from ftsafe_ray.judge.identity import rubric_identity
    from ftsafe_ray.judge.rubrics import rubric_names

    rubric = spec.judges.rubric
    if rubric.rubric in rubric_names():
        return rubric_identity(rubric)
    console.print(
        f"rubric verdicts not shown: {store.root} records no identity for the rubric "
        f"{rubric.rubric!r} and the report does not import rubric modules; rerun the "
        "campaign with `ftsafe run` (nothing finished is redone) to record it"
    )
    return None


def _with_seed(by: tuple[str, ...]) -> tuple[str, ...]:
    index = by.index("size") + 1
    return (*by[:index], "seed", *by[index:])
