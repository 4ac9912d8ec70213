"""Conformance profiles of the first-party plugins, published in the ``legato.conformance``
entry-point group. Only ``legato conformance`` and tests import this module."""

from __future__ import annotations

from legato.conformance.profiles import StepTypeProfile, StorageProfile

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
