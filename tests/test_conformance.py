"""The conformance suite as a product: first-party plugins pass it both ways in (plain pytest
subclasses here, ``legato conformance`` below), and broken step types fail it with messages
that say what broke."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from legato.conformance import ProfileError, StepTypeProfile, StepTypeSuite, StorageSuite

from .conftest import ROOT, docker_problem, kernel_problem, legato_cli, require_component


class TestNoopConformance(StepTypeSuite):
    profile = "noop"


class TestMemoryConformance(StorageSuite):
    profile = "memory"


def test_unknown_capabilities_are_refused():
    with pytest.raises(ProfileError, match=r"unknown capabilities \['teleport'\]"):
        StepTypeProfile(step_type="x", success={}, capabilities={"teleport"})
    with pytest.raises(ProfileError, match="declares 'long_running' without `long_running`"):
        StepTypeProfile(step_type="x", success={}, capabilities={"long_running"})


def test_the_cli_runs_every_installed_plugin_and_passes():
    require_component("Docker", docker_problem())  # the docker and notebook suites run real engines
    require_component("Jupyter kernel", kernel_problem())
    proc = legato_cli("conformance", "--json", timeout=900)
    report = json.loads(proc.stdout)
    names = {row["name"] for row in report["rows"]}
    assert {"noop", "sleep", "bash", "memory", "sqlite", "sql", "notebook", "docker", "http", "python", "cron"} <= names
    for row in report["rows"]:
        assert not row["failed"] and not row["errors"], row
        assert row["passed"] >= 3
        for skip in row["skipped"]:
            assert "does not declare" in skip["reason"]
    assert proc.returncode == 0, proc.stderr


def test_the_cli_table_and_unknown_names():
    proc = legato_cli("conformance", "noop", timeout=300)
    assert proc.returncode == 0
    assert "noop" in proc.stdout and "pass" in proc.stdout
    proc = legato_cli("conformance", "nosuch")
    assert proc.returncode == 2 and "no conformance profile named 'nosuch'" in proc.stderr


def test_broken_step_types_fail_with_messages_that_say_what_broke(tmp_path):
    report = tmp_path / "report.json"
    env = {**os.environ, "LEGATO_CONFORMANCE_REPORT": str(report)}
    subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "tests" / "broken_suites.py"), "-q",
                    "-p", "legato.conformance.report", "-p", "no:cacheprovider", "-p", "no:randomly"],
                   cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    results = {r["nodeid"].split("::", 1)[1]: r for r in json.loads(report.read_text())}

    def outcome(test):
        return results[test]["outcome"], results[test]["message"]

    state, message = outcome("TestIgnoresCancel::test_cancellation_ends_the_step_and_leaves_nothing")
    assert state == "failed" and "to end after it was cancelled" in message and "honour trio cancellation" in message
    state, message = outcome("TestBlocksLoop::test_event_loop_stays_live_while_the_step_runs")
    assert state == "failed" and "the event loop was blocked for" in message
    state, message = outcome("TestLies::test_user_failure_is_user_failed")
    assert state == "failed" and "expected the attempt to end USER_FAILED, it ended SUCCEEDED" in message
    # and what they do not break still passes
    assert outcome("TestLies::test_success_succeeds")[0] == "passed"
    assert outcome("TestIgnoresCancel::test_success_succeeds")[0] == "passed"
