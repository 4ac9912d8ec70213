"""``legato conformance``: run the suites for installed plugins in an isolated pytest session.

The session is a separate process running a generated test module whose classes subclass
:class:`StepTypeSuite` / :class:`StorageSuite` / :class:`TriggerSuite` with ``profile = "<name>"``: exactly what a plugin
author's own test module does, so both ways in share one code path.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from .profiles import load_profiles

__all__ = ["run_conformance"]


def _class_name(name: str) -> str:
    return "Test_" + re.sub(r"\W", "_", name)


def run_conformance(names: list[str], kind: str | None = None, pytest_args: list[str] | None = None) -> dict:
    """Run the suites; return {"rows": [...], "errors": [...]} for the report.

    Each row: name, kind, distribution, version, passed, failed, skipped, and the failures and
    skips with their messages. Raises ValueError for names no installed plugin publishes.
    """
    published = load_profiles()
    unknown = [n for n in names if n not in published]
    if unknown:
        raise ValueError(f"no conformance profile named {', '.join(map(repr, unknown))}; installed: "
                         f"{', '.join(sorted(published)) or 'none'}")
    chosen = {n: p for n, p in published.items() if (not names or n in names)}
    rows: dict[str, dict] = {}
    lines = ["from legato.conformance import StepTypeSuite, StorageSuite, TriggerSuite", ""]
    for name, pub in sorted(chosen.items()):
        profile = pub.profile
        row_kind = getattr(profile, "kind", "?")
        if kind and profile is not None and row_kind != kind:
            continue
        rows[name] = {"name": name, "kind": row_kind, "distribution": pub.distribution, "version": pub.version,
                      "passed": 0, "failed": [], "skipped": [], "errors": list(pub.errors)}
        if profile is None:
            continue
        base = {"step": "StepTypeSuite", "storage": "StorageSuite", "trigger": "TriggerSuite"}[row_kind]
        lines += [f"class {_class_name(name)}({base}):", f"    profile = {name!r}", ""]
    by_class = {_class_name(n): n for n in rows}
    with tempfile.TemporaryDirectory(prefix="legato-conformance-") as tmp:
        module = Path(tmp) / "test_conformance_installed.py"
        module.write_text("\n".join(lines))
        report = Path(tmp) / "report.json"
        env = {**os.environ, "LEGATO_CONFORMANCE_REPORT": str(report)}
        cmd = [sys.executable, "-m", "pytest", str(module), "-q", "-p", "legato.conformance.report",
               "-p", "no:cacheprovider", "--rootdir", tmp, "-c", os.devnull, *(pytest_args or [])]
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        results = json.loads(report.read_text()) if report.exists() else []
    for result in results:
        cls = result["nodeid"].split("::")[1] if "::" in result["nodeid"] else ""
        row = rows.get(by_class.get(cls, ""))
        if row is None:
            continue
        test = result["nodeid"].split("::")[-1]
        if result["outcome"] == "passed":
            row["passed"] += 1
        elif result["outcome"] == "skipped":
            row["skipped"].append({"test": test, "reason": result["message"]})
        else:
            row["failed"].append({"test": test, "message": result["message"]})
    errors = []
    if proc.returncode not in (0, 1) and not results:
        errors.append(f"the pytest session could not run (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return {"rows": list(rows.values()), "errors": errors}
