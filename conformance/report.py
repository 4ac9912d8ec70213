"""A pytest plugin (``-p legato.conformance.report``) that writes each test's outcome to the JSON
file named by ``LEGATO_CONFORMANCE_REPORT``, for ``legato conformance`` to print as a table."""

from __future__ import annotations

import json
import os

_results: list[dict] = []


def _message(report) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message
    return str(report.longrepr or "")


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        if report.when != "call" and report.outcome == "passed":
            return
        _results.append({
            "nodeid": report.nodeid,
            "outcome": report.outcome,
            "when": report.when,
            "message": _message(report) if report.outcome != "passed" else "",
            "seconds": round(report.duration, 3),
        })


def pytest_sessionfinish(session):
    path = os.environ.get("LEGATO_CONFORMANCE_REPORT")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(_results, f)
