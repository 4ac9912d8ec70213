"""``sql``: step type under construction (see the step-types issue)."""

from __future__ import annotations

from legato import StepType
from legato.hookspecs import hookimpl


class _Pending(StepType):
    name = "sql"
    description = "under construction"

    @classmethod
    def unavailable(cls) -> str | None:
        return "under construction"


@hookimpl
def legato_register_step_types(registry):
    registry.add(_Pending)
