"""The audit verdict for people and CI systems: console lines, JSON, JUnit XML, Markdown."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ftsafe_ray.audit.gate import Check, Verdict

JSON_FILE = "audit.json"
JUNIT_FILE = "audit.junit.xml"
MARKDOWN_FILE = "audit.md"
_MARK = {"pass": "PASS", "fail": "FAIL", "error": "ERROR"}


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1%}"


def _plain(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _utility(check: Check) -> str:
    ci = check.utility_delta_ci
    bounds = "" if ci is None else f" [{ci[0]:+.2f}, {ci[1]:+.2f}]"
    return "—" if check.utility_delta is None else f"{check.utility_delta:+.2f}{bounds}"


def _ci(ci: tuple[float, float] | None) -> str:
    return "—" if ci is None else f"[{ci[0]:+.1%}, {ci[1]:+.1%}]"


def verdict_lines(verdict: Verdict) -> list[str]:
    """The verdict and its evidence, as plain console lines."""
    settings = verdict.settings
    lines = [
        f"audit {_MARK[verdict.status]}: arm {verdict.arm!r}, gate on {settings.label}: the upper "
        f"bound of the {verdict.confidence:.0%} CI of Δ vs base must be ≤ "
        f"{settings.max_increase:+.1%}"
    ]
    for check in verdict.checks:
        lines.append(f"  {_MARK[check.status]} {check.name}: {check.message}")
        if check.value is not None:
            lines.append(
                f"    base {_plain(check.base_value)} → fine-tune {_plain(check.value)} over "
                f"{check.n_prompts} prompts"
            )
        for category in check.worst_categories:
            lines.append(
                f"    category {category.category}: Δ {_pct(category.delta)} "
                f"CI {_ci(category.ci)} ({category.n_prompts} prompts)"
            )
        if check.example_items:
            lines.append(
                "    items harmful after fine-tuning, not before: " + ", ".join(check.example_items)
            )
        if check.utility_delta is not None:
            lines.append(f"    utility (1-10) Δ {_utility(check)} (not gated)")
    return lines


def verdict_dict(verdict: Verdict, **context: Any) -> dict[str, Any]:
    """The verdict as JSON-ready data (`context`: run directory, base, adapter, suite)."""
    return {
        "status": verdict.status,
        "arm": verdict.arm,
        "metric": verdict.settings.metric,
        "keyword_set": verdict.settings.keyword_set,
        "max_increase": verdict.settings.max_increase,
        "confidence": verdict.confidence,
        **context,
        "checks": [asdict(check) | {"name": check.name} for check in verdict.checks],
    }


def junit_xml(verdict: Verdict) -> str:
    """A JUnit report: one test suite, one test case per gated benchmark."""
    cases = verdict.checks
    suite = ET.Element(
        "testsuite",
        name="ftsafe audit",
        tests=str(len(cases)),
        failures=str(sum(c.status == "fail" for c in cases)),
        errors=str(sum(c.status == "error" for c in cases)),
        skipped="0",
    )
    for check in cases:
        case = ET.SubElement(
            suite, "testcase", classname=f"ftsafe.audit.{verdict.arm}", name=str(check.name)
        )
        if check.status != "pass":
            tag = "failure" if check.status == "fail" else "error"
            element = ET.SubElement(case, tag, message=check.message, type=tag)
            element.text = _evidence(check)
        else:
            ET.SubElement(case, "system-out").text = check.message
    root = ET.Element("testsuites", name="ftsafe audit")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")


def _evidence(check: Check) -> str:
    parts = [check.message]
    parts += [
        f"category {c.category}: delta {_pct(c.delta)} CI {_ci(c.ci)}"
        for c in check.worst_categories
    ]
    if check.example_items:
        parts.append("items: " + ", ".join(check.example_items))
    return "\n".join(parts)


def markdown(verdict: Verdict) -> str:
    """A short Markdown summary for a pull-request comment."""
    settings = verdict.settings
    lines = [
        f"### ftsafe audit: **{_MARK[verdict.status]}** ({verdict.arm})",
        "",
        f"Gate: upper bound of the {verdict.confidence:.0%} CI of Δ {settings.label} vs the base "
        f"model ≤ {settings.max_increase:+.1%}, on every harmful benchmark.",
        "",
        "| check | result | base | fine-tune | Δ | CI | prompts | utility Δ (1-10) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in verdict.checks:
        lines.append(
            f"| {c.name} | {_MARK[c.status]} | {_plain(c.base_value)} | {_plain(c.value)} | "
            f"{_pct(c.delta)} | {_ci(c.ci)} | {c.n_prompts} | {_utility(c)} |"
        )
    for c in verdict.checks:
        if c.status == "pass":
            continue
        lines += ["", f"**{c.name}**: {c.message}"]
        for category in c.worst_categories:
            lines.append(
                f"- category `{category.category}`: Δ {_pct(category.delta)}, CI {_ci(category.ci)}"
            )
        if c.example_items:
            lines.append("- items harmful after fine-tuning only: " + ", ".join(c.example_items))
    return "\n".join(lines) + "\n"


def write_outputs(verdict: Verdict, out_dir: Path, **context: Any) -> list[Path]:
    """Write audit.json, audit.junit.xml and audit.md into `out_dir`; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        JSON_FILE: json.dumps(verdict_dict(verdict, **context), indent=2) + "\n",
        JUNIT_FILE: junit_xml(verdict),
        MARKDOWN_FILE: markdown(verdict),
    }
    for name, text in files.items():
        (out_dir / name).write_text(text)
    return [out_dir / name for name in files]


def write_error_outputs(out_dir: Path, message: str) -> list[Path]:
    """The files of an audit that could not decide (a bad suite, a failed run): status error,
    so a CI system shows why instead of finding no report."""
    suite = ET.Element("testsuite", name="ftsafe audit", tests="1", failures="0", errors="1")
    case = ET.SubElement(suite, "testcase", classname="ftsafe.audit", name="audit")
    ET.SubElement(case, "error", message=message.splitlines()[0] if message else "", type="error")
    case[0].text = message
    root = ET.Element("testsuites", name="ftsafe audit")
    root.append(suite)
    ET.indent(root)
    files = {
        JSON_FILE: json.dumps({"status": "error", "error": message}, indent=2) + "\n",
        JUNIT_FILE: '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode"),
        MARKDOWN_FILE: f"### ftsafe audit: **ERROR**\n\n```\n{message}\n```\n",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out_dir / name).write_text(text)
    return [out_dir / name for name in files]
