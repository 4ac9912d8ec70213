"""The ``http`` step type's conformance profile (entry point ``legato.conformance: http``).

``profile`` is a function: building the profile starts a loopback server (once per process, in a
daemon thread, see :mod:`legato_http.loopback`) because the sample params need URLs that answer.
Only ``legato conformance`` and tests import this module.
"""

from __future__ import annotations

from legato.conformance.profiles import StepTypeProfile

__all__ = ["profile"]


def profile() -> StepTypeProfile:
    from .loopback import base_url

    base = base_url()
    return StepTypeProfile(
        step_type="http",
        entry_point="http",
        heavy_modules=("httpx", "httpcore"),
        # An allow-list that admits the loopback server: exercises the check on every run, and
        # keeps an operator's LEGATO_HTTP_ALLOWED_HOSTS from refusing the samples.
        settings={"allowed_hosts": ["127.0.0.1"]},
        capabilities={"outputs", "user_failure", "fatal_failure", "long_running", "logs", "cancellation",
                      "invalid_params"},
        success={"url": f"{base}/ok", "headers": {"Accept": "application/json"}},
        expected_outputs={"status_code": 200, "body": {"ok": True, "items": [1, 2]}, "truncated": False},
        # 200 with {"ok": false}: only the state_expr knows it failed.
        user_failure={"url": f"{base}/fail",
                      "state_expr": "response.body.ok ? 'DONE' : 'USER_ERROR'"},
        fatal_failure={"url": f"{base}/missing"},  # 404
        long_running={"url": f"{base}/slow", "timeout": 120},
        invalid={"url": f"{base}/ok", "method": "FETCH"},
        invalid_pointer="/method",
    )
