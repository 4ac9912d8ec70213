"""Operator settings shared by step types that run processes (bash, notebook, legato-python).

Kept apart from :mod:`legato.processes`, which is standard library only (child processes import
it); this one needs pydantic, which every step type with a ``Settings`` model imports anyway.
"""

from __future__ import annotations

import pydantic

from .processes import env_patterns

__all__ = ["ProcessSettings"]


class ProcessSettings(pydantic.BaseModel):
    """``inherit_env``: the names of the worker's environment variables a step's processes may
    inherit beyond :data:`legato.processes.BASE_ENV` (a trailing ``*`` matches a prefix). Subclass
    it to add a step type's own settings."""

    model_config = pydantic.ConfigDict(extra="forbid")

    inherit_env: list[str] = pydantic.Field(
        default_factory=list,
        description="a list of environment variable names (of the worker's environment the step's "
                    "processes may inherit; a trailing * matches a prefix)")

    @pydantic.field_validator("inherit_env")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        return env_patterns(value)
