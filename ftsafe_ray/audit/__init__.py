"""`ftsafe audit`: gate a team's fine-tune on the paired Δ of its harm vs its base model."""

from ftsafe_ray.audit.gate import Check, GateSettings, Verdict, decide
from ftsafe_ray.audit.run import ERROR, FAIL, PASS, AuditOutcome, gate_run, run_audit

__all__ = [
    "ERROR",
    "FAIL",
    "PASS",
    "AuditOutcome",
    "Check",
    "GateSettings",
    "Verdict",
    "decide",
    "gate_run",
    "run_audit",
]
