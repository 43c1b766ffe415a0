"""The checks: each proves one promise of a running kvservice through a `KVClient`.

`framework.py` says what a check is; the checks themselves are in themed modules, registered
in `CHECKS` by `@check` in the order imported here.
"""

from __future__ import annotations

# Checks are listed and run in the order they register, so the order of these imports matters.
from testclient.checks import writes

# isort: split
from testclient.checks import history

# isort: split
from testclient.checks import conditions

# isort: split
from testclient.checks import values

# isort: split
from testclient.checks import listing

# isort: split
from testclient.checks import tokens

# isort: split
from testclient.checks import expiry

# isort: split
from testclient.checks import watch

# isort: split
from testclient.checks.framework import (
    ALL_CHECKS,
    CHECKS,
    Check,
    CheckResult,
    CheckRun,
    Expectation,
    Step,
    Verdict,
    check,
    overall_verdict,
    run_checks,
)

__all__ = [
    "ALL_CHECKS",
    "CHECKS",
    "Check",
    "CheckResult",
    "CheckRun",
    "Expectation",
    "Step",
    "Verdict",
    "check",
    "conditions",
    "expiry",
    "history",
    "listing",
    "overall_verdict",
    "run_checks",
    "tokens",
    "values",
    "watch",
    "writes",
]
