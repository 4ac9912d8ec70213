"""Deliberately broken copies of the sleep step type, for checking that the conformance suite
catches what they break. Registered in process by their profiles (see broken_suites.py)."""

from __future__ import annotations

import time

import trio

from legato import Outcome, StepResult, StepType
from legato.conformance import StepTypeProfile
from legato.hookspecs import hookimpl


class IgnoresCancellation(StepType):
    """Shields its sleep from cancellation: a stop cannot end it."""

    name = "broken_ignores_cancel"

    async def run(self, ctx):
        ctx.log("stdout", "started\n")
        with trio.CancelScope(shield=True):
            await trio.sleep(float(ctx.params.get("seconds", 0)))
        return StepResult.done()


class BlocksTheLoop(StepType):
    """Sleeps with time.sleep: the whole event loop stops meanwhile."""

    name = "broken_blocks_loop"

    async def run(self, ctx):
        ctx.log("stdout", "started\n")
        await trio.sleep(0)
        seconds = float(ctx.params.get("seconds", 0))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(min(0.6, seconds))
            await trio.sleep(0)
        return StepResult.done()


class LiesAboutFailure(StepType):
    """Reports every outcome as success."""

    name = "broken_lies"

    async def run(self, ctx):
        return StepResult(Outcome.DONE, {}, "")


class plugin:  # noqa: N801 - a namespace of hook implementations
    __name__ = "broken-steps"

    @staticmethod
    @hookimpl
    def legato_register_step_types(registry):
        for cls in (IgnoresCancellation, BlocksTheLoop, LiesAboutFailure):
            registry.add(cls)


def _profile(step_type: str, **extra) -> StepTypeProfile:
    extra.setdefault("long_running", {"seconds": 3})
    return StepTypeProfile(step_type=step_type, plugin=plugin, success={"seconds": 0}, **extra)


# long enough to outlast the suite's cancellation hang guard
ignores_cancel = _profile("broken_ignores_cancel", capabilities={"cancellation"}, long_running={"seconds": 15})
blocks_loop = _profile("broken_blocks_loop", capabilities={"long_running"})
lies = _profile("broken_lies", capabilities={"user_failure"}, user_failure={"seconds": 0, "fail": True})
