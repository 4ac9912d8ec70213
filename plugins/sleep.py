"""``sleep``: waits, then ends as told. For demos, timeouts and cancellation tests.

Params: ``seconds`` (number, default 1; Maestro's ``sleep_seconds`` is the same); ``outcome`` (``DONE`` | ``USER_ERROR`` | ``PLATFORM_ERROR``
| ``FATAL_ERROR``, default ``DONE``); ``outputs`` (map, returned as outputs).
"""

from __future__ import annotations

from typing import Any, Literal

import pydantic
import trio

from legato import Outcome, StepResult, StepType
from legato.hookspecs import hookimpl


class SleepParams(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    seconds: float = pydantic.Field(1.0, ge=0, validation_alias=pydantic.AliasChoices("seconds", "sleep_seconds"))
    outcome: Literal["DONE", "USER_ERROR", "PLATFORM_ERROR", "FATAL_ERROR"] = "DONE"
    outputs: dict[str, Any] = {}


class Sleep(StepType):
    """Sleeps ``seconds`` (cancellable at once), then returns ``outcome``."""

    name = "sleep"
    description = "waits `seconds`, then ends with `outcome` (default DONE)"
    Params = SleepParams

    async def run(self, ctx):
        cfg: SleepParams = ctx.config
        ctx.log("stdout", f"sleeping {cfg.seconds:g}s\n")
        await trio.sleep(cfg.seconds)
        outcome = Outcome(cfg.outcome)
        message = "" if outcome is Outcome.DONE else f"sleep step asked to end with {outcome.value}"
        return StepResult(outcome, dict(cfg.outputs), message)


@hookimpl
def legato_register_step_types(registry):
    registry.add(Sleep)
