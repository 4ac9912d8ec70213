"""Helpers for testing workflows with pytest (or any test runner).

``statuses(definition, params)`` runs a definition on the memory store, in a temporary working
directory, and returns each step's status::

    from legato.testing import statuses

    def test_low_volume_raises_the_alert():
        assert statuses("flows/etl.json", {"threshold": 1000}) == {
            "extract": "SUCCEEDED", "validate": "SUCCEEDED", "load": "UNSATISFIED",
            "alert": "SUCCEEDED", "report": "SUCCEEDED"}

With pytest, the ``legato_run`` fixture (registered by Legato's pytest plugin) runs a definition
the same way with the test's ``tmp_path`` as the workspace and returns the whole
:class:`legato.Instance` (outputs, messages, logs).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Mapping

__all__ = ["statuses", "run_in_memory"]


def run_in_memory(definition: Any, params: Mapping[str, Any] | None = None, *,
                  workspace: str | os.PathLike | None = None, **options: Any):
    """Run ``definition`` on the memory store and return the :class:`legato.Instance`. Without
    ``workspace`` the instance's working directory is a temporary one, removed afterwards."""
    from .api import run

    if workspace is not None:
        return run(definition, params, store="memory://", workspace=workspace, **options)
    with tempfile.TemporaryDirectory(prefix="legato-test-") as tmp:
        return run(definition, params, store="memory://", workspace=tmp, **options)


def statuses(definition: Any, params: Mapping[str, Any] | None = None, **options: Any) -> dict[str, str]:
    """Run ``definition`` on the memory store and return ``{step id: status}`` for every step, in
    definition order (``NOT_CREATED`` for steps that never ran). ``options`` go to
    :func:`legato.run` (``workspace``, ``settings`` …)."""
    return run_in_memory(definition, params, **options).statuses
