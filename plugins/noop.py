"""``noop``: does nothing and succeeds. Its params become its outputs, which makes it the
step type of choice for benchmarks and for tests of DAG semantics.

Params: ``outputs`` (map, optional): returned as the step's outputs.
"""

from __future__ import annotations

from typing import Any

import pydantic

from legato import StepResult, StepType
from legato.hookspecs import hookimpl


class NoopParams(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    outputs: dict[str, Any] = pydantic.Field(default_factory=dict)


class Noop(StepType):
    """Succeeds at once with ``params.outputs`` as outputs."""

    name = "noop"
    description = "does nothing and succeeds; params.outputs become its outputs"
    Params = NoopParams

    async def run(self, ctx):
        outputs = ctx.params.get("outputs")
        return StepResult.done(outputs if isinstance(outputs, dict) else None)


@hookimpl
def legato_register_step_types(registry):
    registry.add(Noop)
