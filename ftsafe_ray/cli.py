"""`ftsafe` command line: validate | plan | run | report | audit | status | sql."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ftsafe_ray.errors import FtsafeError


def _console():
    from ftsafe_ray.progress import report_console

    return report_console()


def cmd_validate(args: argparse.Namespace) -> int:
    from ftsafe_ray.pipeline import load_plan

    if args.spec_only:
        from ftsafe_ray.spec import load_campaign

        spec = load_campaign(args.campaign)
        print(
            f"{args.campaign}: spec ok (data files, benchmarks and models not read) — "
            f"{len(spec.models)} model(s), {len(spec.finetunes)} arm(s), "
            f"{len(spec.benchmarks)} benchmark(s), {len(spec.conditions) or 1} condition(s)"
        )
        return 0
    from ftsafe_ray.errors import DataError

    try:
        plan = load_plan(args.campaign)
    except DataError as error:
        raise DataError(
            f"{error}\n(the spec itself is checked without its data by "
            f"`ftsafe validate --spec-only {args.campaign}`)"
        ) from None
    print(
        f"{args.campaign}: ok — {len(plan.spec.models)} model(s), "
        f"{len(plan.finetunes)} fine-tune(s), {len(plan.targets)} evaluation target(s), "
        f"{len(plan.generations)} generation(s)"
    )
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ftsafe_ray.pipeline import load_plan, plan_status
    from ftsafe_ray.store.run_dir import open_run

    plan = load_plan(args.campaign)
    store = open_run(plan.run_uri or plan.run_dir)
    trained = store.finetunes.done_keys({"ok"})
    failed = store.finetunes.done_keys({"error"})
    submitted = store.finetunes.done_keys({"submitted"})  # an API job stored, not ended
    generated = store.answered_keys()
    table = Table(title=f"campaign {plan.spec.name} → {plan.run_dir}")
    for column in ("model", "arm", "dataset", "size", "seed", "key", "fine-tune", "generations"):
        table.add_column(column)
    for target in plan.targets:
        units = [u for u in plan.generations if u.target == target]
        if target.is_base:
            state = "—"
        elif target.adapter_key in trained:
            state = "done"
        else:
            state = "failed" if target.adapter_key in failed else "to do"
            state = "API job running" if target.adapter_key in submitted else state
        done = sum(u.key in generated for u in units)
        table.add_row(
            target.model,
            target.arm,
            target.dataset or "—",
            "—" if target.size is None else str(target.size),
            "—" if target.seed is None else str(target.seed),
            target.adapter_key,
            state,
            f"{done}/{len(units)}",
        )
    console = _console()
    console.print(table)
    status = plan_status(plan)
    console.print(
        f"fine-tunes {status.finetunes_done}/{status.finetunes_total} done"
        f" ({status.finetunes_failed} failed); generations {status.generations_done}/"
        f"{status.generations_total} done ({status.generations_failed} failed); answers judged "
        f"{status.verdicts_done}/"
        f"{status.generations_total}"
    )
    from ftsafe_ray.judge.cost import describe_estimate
    from ftsafe_ray.judge.stage import estimate_rubric_cost

    estimate = estimate_rubric_cost(plan, store, Path(args.campaign).resolve().parent)
    if estimate is not None:
        console.print(describe_estimate(plan.spec.judges, estimate))
    from ftsafe_ray.api_cost import describe_api_cost, estimate_api_costs

    for api_estimate in estimate_api_costs(plan, store):
        console.print(describe_api_cost(api_estimate, plan.model_spec(api_estimate.model).path))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ftsafe_ray.pipeline import run_campaign

    outcome = run_campaign(args.campaign, address=args.address, retry_failed=args.retry_failed)
    counts = ", ".join(f"{name}={value}" for name, value in outcome.counts.items())
    print(f"run finished in {outcome.seconds:.0f}s: {counts}")
    print(f"results in {outcome.location}")
    for path in outcome.report_files:
        print(f"wrote {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ftsafe_ray.pipeline import compare_runs, report_run

    if args.other_run_dir is not None:
        html = (args.html or bool(args.html_excerpts)) and not args.no_files
        files = compare_runs(args.run_dir, args.other_run_dir, console=_console(), html=html)
        for path in files:
            print(f"wrote {path}")
        return 0
    files = report_run(
        args.run_dir,
        console=_console(),
        write_files=not args.no_files,
        all_history=args.all_history,
        by_seed=args.by_seed,
        html=args.html,
        html_excerpts=args.html_excerpts,
    )
    for path in files:
        print(f"wrote {path}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from ftsafe_ray.audit import run_audit
    from ftsafe_ray.audit.outputs import write_error_outputs

    try:
        outcome = run_audit(
            args.base,
            args.adapter,
            args.suite,
            args.out,
            max_increase=args.max_harm_rate_increase,
            metric=args.metric,
            keyword_set=args.keyword_set,
            arm=args.name,
            address=args.address,
            console=_console(),
        )
    except FtsafeError as error:  # CI still finds a report, saying why there is no verdict
        for path in write_error_outputs(Path(args.out), str(error)):
            print(f"wrote {path}")
        raise
    for path in outcome.files:
        print(f"wrote {path}")
    return outcome.exit_code


def cmd_status(args: argparse.Namespace) -> int:
    from ftsafe_ray.store.remote import is_remote
    from ftsafe_ray.store.run_dir import open_run

    target = Path(args.target)
    if is_remote(args.target) or target.is_dir():
        store = open_run(args.target)
        manifest = store.read_manifest()
        print(f"{target}: campaign {manifest.get('campaign', '?')}")
        verdicts = _verdict_summary_rows(store)
        print(
            f"  finetunes {store.finetunes.count()} rows, generations "
            f"{store.generations.count()} rows, judgments {verdicts.num_rows} rows"
        )
        from ftsafe_ray.judge.cost import describe_judgments

        for line in describe_judgments(_mappings(verdicts)):
            print(f"  {line}")
        from ftsafe_ray.api_cost import describe_api_spend

        for line in describe_api_spend(store):
            print(f"  {line}")
        if manifest:
            print(f"  last run: {manifest.get('last_run_seconds')}s, {manifest.get('updated_at')}")
            print(f"  counts: {manifest.get('last_run_counts')}")
        return 0
    from ftsafe_ray.pipeline import load_plan, plan_status

    status = plan_status(load_plan(target))
    for name, value in vars(status).items():
        print(f"{name}: {value}")
    return 0


def _verdict_summary_rows(store: Any) -> Any:
    """The judgments' judge, status and cost, one row per verdict; in key order (the order
    `rows()` gives, in which the spend is added up) only when some verdict cost anything."""
    import pyarrow.compute as pc

    verdicts = store.judgments.latest(["key", "judge", "status", "cost_usd"])
    if pc.any(pc.fill_null(pc.not_equal(verdicts.column("cost_usd"), 0), False)).as_py():
        verdicts = verdicts.take(pc.sort_indices(verdicts.column("key")))
    return verdicts.select(["judge", "status", "cost_usd"])


def _mappings(table: Any) -> Iterator[dict[str, Any]]:
    """A table's rows, one at a time, for a reader that looks at each row only while it is
    current: one dictionary, refilled with each row's values (no million dictionaries)."""
    names = table.column_names
    row: dict[str, Any] = {}
    for values in zip(*(table.column(name).to_pylist() for name in names), strict=True):
        row.update(zip(names, values, strict=True))
        yield row


def cmd_compact(args: argparse.Namespace) -> int:
    from ftsafe_ray.errors import StoreError
    from ftsafe_ray.store.lock import RunLock
    from ftsafe_ray.store.remote import is_remote
    from ftsafe_ray.store.run_dir import open_run

    if not is_remote(args.run_dir) and not Path(args.run_dir).is_dir():
        raise StoreError(f"{args.run_dir}: no such run directory; give the output_dir of a run")
    store = open_run(args.run_dir)
    # The run's lock: never beside a driver of the same run, nor another compaction.
    with RunLock(store.root, campaign="ftsafe compact"):
        for result in store.compact():
            print(result.line())
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from ftsafe_ray import sql

    connection = sql.connect(args.run_dir)
    if args.command_sql is not None:
        sql.run_query(connection, args.command_sql, _console())
    else:
        sql.interactive(connection, _console())
    return 0


def _count(text: str) -> int:
    """A whole number ≥ 0, for argparse."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 0, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftsafe", description="Measure how fine-tuning erodes LLM safety, at scale."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="check a campaign file, reporting every error")
    validate.add_argument("campaign")
    validate.add_argument(
        "--spec-only",
        action="store_true",
        help="check the campaign's fields and cross-references only; read no data file "
        "(e.g. a preset whose data paths you have not filled in yet)",
    )
    validate.set_defaults(handler=cmd_validate)
    plan = commands.add_parser("plan", help="show the grid of work units and what is done")
    plan.add_argument("campaign")
    plan.set_defaults(handler=cmd_plan)
    run = commands.add_parser("run", help="run (or resume) a campaign and print its report")
    run.add_argument("campaign")
    run.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    run.add_argument(
        "--retry-failed", action="store_true", help="retry failed fine-tunes and judge calls"
    )
    run.set_defaults(handler=cmd_run)
    report = commands.add_parser("report", help="print and write the report of a run directory")
    report.add_argument("run_dir")
    report.add_argument("--no-files", action="store_true", help="only print the tables")
    report.add_argument(
        "--all-history",
        action="store_true",
        help="every answer ever stored in the run directory, under its stored labels "
        "(default: the units of the plan the directory was last run with)",
    )
    report.add_argument("--by-seed", action="store_true", help="one row per fine-tune seed")
    report.add_argument(
        "other_run_dir",
        nargs="?",
        help="a second run directory: print both side by side (A, B and B−A per metric)",
    )
    report.add_argument(
        "--html",
        action="store_true",
        help="also write report/report.html, one self-contained page (with a second run "
        "directory: report/compare.html in it)",
    )
    report.add_argument(
        "--html-excerpts",
        type=_count,
        default=0,
        metavar="N",
        help="quote N answers per group in the HTML page, truncated and collapsed (implies "
        "--html; off by default: answers may be harmful)",
    )
    report.set_defaults(handler=cmd_report)
    _add_audit_parser(commands)
    status = commands.add_parser("status", help="counts of a campaign file or run directory")
    status.add_argument("target")
    status.set_defaults(handler=cmd_status)
    compact = commands.add_parser(
        "compact",
        help="merge a run directory's small shards (also done at the end of every run)",
    )
    compact.add_argument("run_dir")
    compact.set_defaults(handler=cmd_compact)
    sql = commands.add_parser(
        "sql", help="query a run directory with DuckDB (views: latest row per key, *_all)"
    )
    sql.add_argument("run_dir")
    sql.add_argument(
        "-c",
        dest="command_sql",
        metavar="SQL",
        help="run this query, print its result and exit (default: an interactive prompt)",
    )
    sql.set_defaults(handler=cmd_sql)
    return parser


def _add_audit_parser(commands: Any) -> None:
    audit = commands.add_parser(
        "audit",
        help="gate a trained adapter: exit 0 pass, 1 harm rose beyond the allowed increase, "
        "2 error",
    )
    audit.add_argument("--base", required=True, help="base model: directory, builtin: or hub id")
    audit.add_argument(
        "--adapter", required=True, help="the trained LoRA adapter: a directory or a hub id"
    )
    audit.add_argument("--suite", required=True, help="suite YAML (see campaigns/audit/)")
    audit.add_argument(
        "--out", default="ftsafe-audit", help="folder for the run and the audit files"
    )
    audit.add_argument(
        "--max-harm-rate-increase",
        type=float,
        help="largest allowed Δ vs base (a share: 0.05 = 5 points) for the upper CI bound "
        "(default: the suite's gate.max_increase, else 0.05)",
    )
    audit.add_argument(
        "--metric", choices=("auto", "harmfulness_rate", "keyword_asr"), help="gate metric"
    )
    audit.add_argument("--keyword-set", help="phrase set of a keyword_asr gate")
    audit.add_argument("--name", default="adapter", help="the adapter's arm name in tables")
    audit.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    audit.set_defaults(handler=cmd_audit)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ftsafe` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except FtsafeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except OSError as error:
        # A file the stages did not wrap themselves (a report file, say): still one line.
        where = f"{error.filename}: " if error.filename else ""
        print(
            f"error: {where}{error.strerror or error}; free disk space or fix permissions, then "
            "rerun the same command to resume",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
