"""Legato's pytest plugin (entry point ``pytest11``): the ``legato_run`` fixture."""

from __future__ import annotations

import pytest


@pytest.fixture
def legato_run(tmp_path):
    """``legato_run(definition, params=None, **options)`` runs a definition on the memory store,
    with this test's ``tmp_path`` as the workspace, and returns the :class:`legato.Instance`."""
    from .testing import run_in_memory

    def run(definition, params=None, **options):
        options.setdefault("workspace", tmp_path / "runs")
        return run_in_memory(definition, params, **options)

    return run
