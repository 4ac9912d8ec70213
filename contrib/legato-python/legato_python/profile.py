"""The conformance profile of the ``python`` step type (entry point ``legato.conformance``:
``python``). Only ``legato conformance`` and tests import this module."""

from __future__ import annotations

from legato.conformance.profiles import StepTypeProfile

profile = StepTypeProfile(
    step_type="python",
    entry_point="python",
    capabilities={"outputs", "user_failure", "fatal_failure", "long_running", "logs", "cancellation",
                  "invalid_params"},
    success={"callable": "legato_python.samples:ok", "rows": 2, "table": "sales"},
    expected_outputs={"rows": 2, "table": "sales", "ok": True},
    user_failure={"callable": "legato_python.samples:fail"},
    # The module exists, the attribute does not: retrying cannot help.
    fatal_failure={"callable": "legato_python.samples:no_such_function"},
    long_running={"callable": "legato_python.samples:sleep_long"},
    invalid={"callable": "legato_python.samples.ok"},  # no colon
    invalid_pointer="/callable",
)
