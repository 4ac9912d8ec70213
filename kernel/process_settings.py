"""Operator settings shared by step types: ``inherit_env`` for those that run processes (bash,
notebook, legato-python), ``allowed_paths`` for those whose params name files (sql, notebook).

Kept apart from :mod:`legato.processes`, which is standard library only (child processes import
it); this one needs pydantic, which every step type with a ``Settings`` model imports anyway.
"""

from __future__ import annotations

import pydantic

from .paths import absolute_paths
from .processes import env_patterns

__all__ = ["PathSettings", "ProcessSettings"]


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


class PathSettings(pydantic.BaseModel):
    """``allowed_paths``: directories, besides the instance's working directory, that the step
    type's path params may point into (checked by :func:`legato.paths.confine`). Subclass it, with
    :class:`ProcessSettings` too where the step type runs processes."""

    model_config = pydantic.ConfigDict(extra="forbid")

    allowed_paths: list[str] = pydantic.Field(
        default_factory=list,
        description="a list of absolute paths (directories the step's path params may point into, "
                    "besides the instance's working directory)")

    @pydantic.field_validator("allowed_paths")
    @classmethod
    def _absolute(cls, value: list[str]) -> list[str]:
        return absolute_paths(value)
