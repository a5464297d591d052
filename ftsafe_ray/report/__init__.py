"""Report: metrics over scored rows, rich tables, CSV/Markdown files and optional plots."""

from ftsafe_ray.report.bootstrap import bootstrap_ci, cluster_bootstrap_ci, mean_statistic
from ftsafe_ray.report.files import write_summary_files
from ftsafe_ray.report.metrics import (
    BY_CATEGORY,
    DEFAULT_BY,
    GROUP_KEYS,
    GroupSummary,
    KeywordSummary,
    harmfulness_rate,
    harmfulness_score,
    keyword_asr,
    refusal_rate,
    summarize,
)
from ftsafe_ray.report.plots import write_plots
from ftsafe_ray.report.render import render_tables

__all__ = [
    "BY_CATEGORY",
    "DEFAULT_BY",
    "GROUP_KEYS",
    "GroupSummary",
    "KeywordSummary",
    "bootstrap_ci",
    "cluster_bootstrap_ci",
    "harmfulness_rate",
    "harmfulness_score",
    "keyword_asr",
    "mean_statistic",
    "refusal_rate",
    "render_tables",
    "summarize",
    "write_plots",
    "write_summary_files",
]
