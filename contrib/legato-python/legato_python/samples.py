"""Callables the conformance profile runs (and handy for trying the step type out).

They live inside the package so the profile works wherever legato-python is installed.
"""

from __future__ import annotations

import time
from typing import Any


def ok(**params: Any) -> dict[str, Any]:
    """Succeed, echoing the params it was called with as outputs, plus ``ok: true``."""
    return {**params, "ok": True}


def fail(**params: Any) -> None:
    """Fail the way user code fails: by raising."""
    raise ValueError("input missing: this sample always fails")


def sleep_long(seconds: float = 60.0) -> dict[str, Any]:
    """Say so at once, then sleep ``seconds`` (a minute by default): a long-running step."""
    print(f"started; sleeping {seconds:g}s", flush=True)
    time.sleep(seconds)
    return {"slept": seconds}
