"""A rerun with nothing new keeps the report files; anything that changes them draws them again."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from ftsafe_ray import pipeline
from ftsafe_ray.judge.identity import keyword_set_identities
from ftsafe_ray.pipeline import report_run
from ftsafe_ray.store import RunStore
from tests.test_report_plan_units import answer_and_judge, campaign, plan_of


def report(run_dir: Path, **options: object) -> dict[str, int]:
    """Report with `options`; each file written (or kept) and its modification time."""
    files = report_run(run_dir, console=Console(file=io.StringIO()), **options)  # type: ignore[arg-type]
    assert files
    return {path.name: path.stat().st_mtime_ns for path in files}


def test_a_rerun_keeps_current_files_and_redraws_after_any_change(tmp_path):
    plan = plan_of(tmp_path, campaign(tmp_path))
    answer_and_judge(plan)
    run_dir = plan.run_dir
    first = report(run_dir, html=True, keep_current_files=True)
    assert "report.html" in first and (run_dir / "report" / ".inputs.json").is_file()
    # Nothing changed: the same files, not written again, though a run writes its spec and
    # plan records again at its start.
    store = RunStore(run_dir)
    store.freeze_spec(plan.spec.model_dump(mode="json"), plan.spec_hash)
    store.freeze_plan(plan.unit_labels(), keyword_set_identities(plan.keyword_sets))
    assert report(run_dir, html=True, keep_current_files=True) == first
    # `ftsafe report` itself always writes.
    again = report(run_dir, html=True)
    assert again.keys() == first.keys() and again["report.html"] > first["report.html"]
    # Other options: drawn again.
    by_seed = report(run_dir, html=True, by_seed=True, keep_current_files=True)
    assert by_seed["summary.csv"] > again["summary.csv"]
    kept = report(run_dir, html=True, by_seed=True, keep_current_files=True)
    assert kept == by_seed
    # A new verdict shard: drawn again.
    row = store.judgments.rows()[0]
    store.judgments.write([{**row, "created_at": None}])
    assert report(run_dir, html=True, by_seed=True, keep_current_files=True) != kept
    # A deleted file: drawn again.
    (run_dir / "report" / "summary.md").unlink()
    assert (run_dir / "report" / "summary.md").name in report(
        run_dir, html=True, by_seed=True, keep_current_files=True
    )


def test_rows_written_while_the_report_reads_leave_no_record(tmp_path, monkeypatch):
    plan = plan_of(tmp_path, campaign(tmp_path))
    store = answer_and_judge(plan)
    load = pipeline._load_scored

    def load_while_a_run_writes(*args, **kwargs):
        loaded = load(*args, **kwargs)
        row = store.judgments.rows()[0]
        store.judgments.write([{**row, "created_at": None}])  # lands after the rows were read
        return loaded

    monkeypatch.setattr(pipeline, "_load_scored", load_while_a_run_writes)
    first = report(plan.run_dir, keep_current_files=True)
    assert not (plan.run_dir / "report" / ".inputs.json").exists()
    monkeypatch.setattr(pipeline, "_load_scored", load)
    # The next report cannot trust the files: it draws them again.
    assert report(plan.run_dir, keep_current_files=True)["summary.csv"] > first["summary.csv"]
