"""Conformance profiles of the first-party plugins, published in the ``legato.conformance``
entry-point group. Only ``legato conformance`` and tests import this module."""

from __future__ import annotations

from legato.conformance.profiles import StepTypeProfile, StorageProfile, TriggerProfile

noop = StepTypeProfile(
    step_type="noop",
    entry_point="noop",
    capabilities={"outputs", "invalid_params"},
    success={"outputs": {"rows": 3, "table": "sales", "tags": ["a", "b"]}},
    expected_outputs={"rows": 3, "table": "sales", "tags": ["a", "b"]},
    invalid={"outputs": "not a map"},
    invalid_pointer="/outputs",
)

sleep = StepTypeProfile(
    step_type="sleep",
    entry_point="sleep",
    capabilities={"outputs", "user_failure", "fatal_failure", "long_running", "logs", "cancellation",
                  "invalid_params"},
    success={"seconds": 0.01, "outputs": {"slept": True}},
    expected_outputs={"slept": True},
    user_failure={"seconds": 0, "outcome": "USER_ERROR"},
    fatal_failure={"seconds": 0, "outcome": "FATAL_ERROR"},
    long_running={"seconds": 60},
    invalid={"seconds": -1},
    invalid_pointer="/seconds",
)

bash = StepTypeProfile(
    step_type="bash",
    entry_point="bash",
    capabilities={"outputs", "user_failure", "long_running", "logs", "cancellation", "invalid_params"},
    success={"script": 'echo "kind=csv" >> "$LEGATO_OUTPUT"; echo \'{"rows": 2}\' >> "$LEGATO_OUTPUT"'},
    expected_outputs={"kind": "csv", "rows": 2},
    user_failure={"script": "echo 'input missing' >&2; exit 3"},
    long_running={"script": "echo started; sleep 60 & sleep 60; wait"},
    invalid={"script": "true", "argv": ["true"]},
    invalid_pointer="",
)

memory = StorageProfile(
    scheme="memory",
    entry_point="memory",
    make_url=lambda directory: "memory://",
    capabilities={"leases", "concurrent_writers"},
)

sqlite = StorageProfile(
    scheme="sqlite",
    entry_point="sqlstore",
    make_url=lambda directory: f"sqlite:///{directory}/conformance.db",
    capabilities={"persistent", "leases", "concurrent_writers", "multiprocess"},
    heavy_modules=("sqlalchemy", "sqlmodel", "alembic"),
)

sql = StepTypeProfile(
    step_type="sql",
    entry_point="sql",
    heavy_modules=("duckdb",),
    capabilities={"outputs", "user_failure", "fatal_failure", "long_running", "logs", "cancellation",
                  "invalid_params"},
    success={"query": "CREATE TABLE t AS SELECT range AS i FROM range(3); SELECT count(*) AS n, $kind AS kind FROM t",
             "query_params": {"kind": "csv"}},
    expected_outputs={"row_count": 1, "columns": ["n", "kind"], "rows": [[3, "csv"]], "truncated": False},
    user_failure={"query": "SELECT * FROM no_such_table"},
    # a database outside the instance's working directory the operator did not allow: retrying cannot help
    fatal_failure={"query": "SELECT 1", "database": "../elsewhere.db"},
    long_running={"query": "SET threads TO 1;\nSELECT count(*) FROM range(1000000000) a, range(1000000) b"},
    invalid={"query": "SELECT 1", "max_rows": 5000},
    invalid_pointer="/max_rows",
)


def notebook() -> StepTypeProfile:
    """Sample notebooks are written to a temporary directory (removed at exit) when the profile is
    built: plain JSON, so building the profile needs neither nbformat nor papermill."""
    import atexit
    import json
    import shutil
    import tempfile
    from pathlib import Path

    directory = Path(tempfile.mkdtemp(prefix="legato-notebook-profile-"))
    atexit.register(shutil.rmtree, directory, True)

    def write(name: str, *sources: str, parameters: str | None = None) -> str:
        cells = [(source, []) for source in sources]
        if parameters is not None:
            cells.insert(0, (parameters, ["parameters"]))
        document = {
            "cells": [{"cell_type": "code", "execution_count": None, "id": f"cell-{n}", "metadata": {"tags": tags},
                       "outputs": [], "source": source} for n, (source, tags) in enumerate(cells)],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5,
        }
        path = directory / name
        path.write_text(json.dumps(document), encoding="utf-8")
        return str(path)

    (directory / "not-a-notebook.ipynb").write_text("this is not JSON\n")
    return StepTypeProfile(
        step_type="notebook",
        entry_point="notebook",
        heavy_modules=("papermill", "nbformat", "nbclient", "jupyter_client", "zmq"),
        capabilities={"outputs", "user_failure", "fatal_failure", "long_running", "logs", "cancellation",
                      "invalid_params"},
        success={"input_path": write("success.ipynb",
                                     "from legato.notebook import output\noutput('rows', rows)\noutput('kind', 'csv')",
                                     parameters="rows = 0"),
                 "rows": 2},
        expected_outputs={"rows": 2, "kind": "csv"},
        user_failure={"input_path": write("fails.ipynb", "raise ValueError('input missing')")},
        fatal_failure={"input_path": str(directory / "not-a-notebook.ipynb")},
        long_running={"input_path": write("long.ipynb", "print('started', flush=True)\nimport time\ntime.sleep(60)")},
        invalid={"input_path": "any.ipynb", "cell_timeout": -1},
        invalid_pointer="/cell_timeout",
    )


docker = StepTypeProfile(
    step_type="docker",
    entry_point="docker",
    heavy_modules=("docker",),
    capabilities={"outputs", "user_failure", "fatal_failure", "long_running", "logs", "cancellation",
                  "invalid_params"},
    success={"image": "legato-test/busybox:1", "command": [
        "sh", "-c", 'echo "kind=csv" >> "$LEGATO_OUTPUT"; echo \'{"rows": 2}\' >> "$LEGATO_OUTPUT"']},
    expected_outputs={"kind": "csv", "rows": 2},
    user_failure={"image": "legato-test/busybox:1", "command": ["sh", "-c", "echo 'input missing' >&2; exit 3"]},
    # a bind mount the operator did not allow (no `allowed_mounts` in the settings): retrying cannot help
    fatal_failure={"image": "legato-test/busybox:1", "command": ["true"],
                   "mounts": [{"source": "/etc", "target": "/host-etc"}]},
    long_running={"image": "legato-test/busybox:1", "command": ["sh", "-c", "echo started; sleep 60"]},
    invalid={"image": "legato-test/busybox:1", "command": ["true"], "privileged": True},
    invalid_pointer="/privileged",
)


def _child(workflow_id: str, step: dict) -> dict:
    return {"workflow": {"id": workflow_id, "steps": [{"step": {"id": "work", **step}}]}}


subworkflow = StepTypeProfile(
    step_type="subworkflow",
    entry_point="subworkflow",
    capabilities={"outputs", "fatal_failure", "long_running", "logs", "cancellation", "invalid_params"},
    workflows=(
        _child("conformance-child", {"type": "noop"}),
        _child("conformance-child-fails", {"type": "sleep", "params": {"seconds": 0, "outcome": "FATAL_ERROR"}}),
        _child("conformance-child-long", {"type": "sleep", "params": {"seconds": 60}}),
    ),
    success={"subworkflow_id": "conformance-child"},
    expected_outputs={"subworkflow_id": "conformance-child", "subworkflow_version": 1,
                      "subworkflow_status": "SUCCEEDED"},
    fatal_failure={"subworkflow_id": "conformance-child-fails"},
    long_running={"subworkflow_id": "conformance-child-long"},
    invalid={"subworkflow_id": ""},
    invalid_pointer="/subworkflow_id",
)


cron = TriggerProfile(
    trigger_type="cron",
    entry_point="cron",
    heavy_modules=("croniter",),
    capabilities={"fires", "exactly_once", "cancellation", "event_loop"},
    # Quartz's 6 fields: every second, so the suite waits about a second per firing
    workflow={"workflow": {"id": "conformance-cron", "time_triggers": [
        {"type": "CRON", "cron": "* * * * * ?", "timezone": "Europe/Dublin"}],
        "steps": [{"step": {"id": "a", "type": "noop"}}]}},
)
