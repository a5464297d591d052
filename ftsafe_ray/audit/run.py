"""`ftsafe audit`: evaluate a base model and base + a team's trained adapter on a suite, as an
ordinary campaign (same keys, resume and judges), then gate the adapter on the paired Δ."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ftsafe_ray.audit.gate import GateSettings, Metric, Verdict, decide
from ftsafe_ray.audit.outputs import verdict_lines, write_outputs
from ftsafe_ray.audit.suite import GateSpec, audit_campaign, load_suite
from ftsafe_ray.errors import DataError, SpecError

PASS, FAIL, ERROR = 0, 1, 2  # exit codes: an error (no verdict) never reads as a failed gate
CAMPAIGN_FILE = "campaign.yaml"
RUN_DIR = "run"


@dataclass(frozen=True)
class AuditOutcome:
    """The verdict, the files it was written to, and the run directory behind it."""

    verdict: Verdict
    files: list[Path]
    run_dir: Path

    @property
    def exit_code(self) -> int:
        return {"pass": PASS, "fail": FAIL, "error": ERROR}[self.verdict.status]


def _local_or_id(ref: str) -> str:
    """A base model given as an existing local directory, made absolute; else as written."""
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.is_dir() else ref


def adapter_directory(ref: str) -> Path:
    """The adapter's local directory: `ref` itself, or a hub id (`org/name`) fetched into the
    Hugging Face cache (a cached copy is used offline)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists() or ref.count("/") != 1 or ref.startswith((".", "/", "~")):
        raise DataError(
            f"--adapter {ref}: not a directory; give a LoRA adapter directory "
            "(adapter_config.json + weights) or a hub id org/name"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref)).resolve()
    except Exception as error:  # offline, gated, no such repo: one line, not a traceback
        raise DataError(
            f"--adapter {ref}: not a local directory, and fetching it from the Hugging Face "
            f"hub failed ({type(error).__name__}: {error})"
        ) from None


def run_audit(
    base: str,
    adapter: str | Path,
    suite_path: str | Path,
    out_dir: str | Path,
    *,
    max_increase: float | None = None,
    metric: str | None = None,
    keyword_set: str | None = None,
    arm: str = "adapter",
    dtype: str | None = None,
    address: str | None = None,
    console: Any = None,
) -> AuditOutcome:
    """Run what the audit's campaign lacks, gate the adapter, write audit.json,
    audit.junit.xml and audit.md into `out_dir` and print the verdict."""
    from ftsafe_ray.pipeline import run_campaign
    from ftsafe_ray.progress import report_console

    suite = load_suite(Path(suite_path))
    adapter_dir = adapter_directory(str(adapter))
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    run_dir = out / RUN_DIR
    campaign = audit_campaign(suite, _local_or_id(base), adapter_dir, arm, run_dir, dtype)
    campaign_file = out / CAMPAIGN_FILE
    campaign_file.write_text(
        "# Written by `ftsafe audit`; rerunning the audit reruns only what is missing.\n"
        + yaml.safe_dump(campaign, sort_keys=False)
    )
    gate = suite.gate.model_copy(
        update={
            name: value
            for name, value in (
                ("max_increase", max_increase),
                ("metric", metric),
                ("keyword_set", keyword_set),
            )
            if value is not None
        }
    )
    console = console or report_console()
    run_campaign(campaign_file, address=address, console=console)
    verdict = gate_run(run_dir, arm, GateSpec.model_validate(gate.model_dump()))
    for line in verdict_lines(verdict):
        console.print(line, markup=False, highlight=False)
    files = write_outputs(
        verdict,
        out,
        run_dir=str(run_dir),
        base=campaign["models"][0]["path"],
        adapter=str(adapter_dir),
        suite=str(Path(suite_path).resolve()),
    )
    return AuditOutcome(verdict, files, run_dir)


def gate_run(run_dir: Path, arm: str, gate: GateSpec) -> Verdict:
    """Gate the arm `arm` of a run directory on the stored answers and verdicts."""
    from ftsafe_ray.report.metrics import BY_CATEGORY, DEFAULT_BY, summarize
    from ftsafe_ray.report.scored_rows import scored_rows
    from ftsafe_ray.report.utility import with_arm_utility
    from ftsafe_ray.store.run_dir import open_run

    store = open_run(run_dir)
    recorded = store.read_plan()
    if recorded is None:
        raise DataError(f"{run_dir}: no plan.parquet; run the audit's campaign first")
    units, keyword_sets = recorded
    rows = scored_rows(store, store.read_rubric_identity(), keyword_sets, units)
    names = tuple(keyword_sets)
    main = with_arm_utility(
        summarize(rows, DEFAULT_BY, keyword_sets=names, confidence=gate.confidence)
    )
    by_category = summarize(rows, BY_CATEGORY, keyword_sets=names, confidence=gate.confidence)
    chosen: Metric
    if gate.metric == "auto":
        rubric_ran = any(g.rubric_ran for g in main if g.arm == arm)
        chosen = "harmfulness_rate" if rubric_ran else "keyword_asr"
    else:
        chosen = gate.metric
    set_name = None
    if chosen == "keyword_asr":
        if not names:
            raise SpecError(
                "the gate needs the rubric judge or a keyword phrase set, and the suite has "
                "neither on (judges.keyword.enabled / judges.rubric.enabled)"
            )
        set_name = gate.keyword_set or names[0]
        if set_name not in names:
            raise SpecError(
                f"gate.keyword_set: {set_name!r} is not a phrase set of the suite; "
                f"allowed: {list(names)}"
            )
    settings = GateSettings(gate.max_increase, chosen, set_name)
    return decide(main, by_category, rows, arm, settings)
