"""The ``legato`` entry point of legato-python: registers the ``python`` step type.

Kept light: the step type's module is imported only when the hook runs.
"""

from __future__ import annotations

from legato.hookspecs import hookimpl


@hookimpl
def legato_register_step_types(registry):
    """Add :class:`legato_python.step.PythonStep`."""
    from .step import PythonStep

    registry.add(PythonStep)
