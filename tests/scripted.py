"""A test-only step type, ``scripted``: each attempt ends as its params say.

Params: ``results`` (list, one per attempt, the last one repeating): each an outcome name
(``DONE``, ``USER_ERROR``, ``PLATFORM_ERROR``, ``FATAL_ERROR``, ``NOT_RETRYABLE``, ``RAISE``,
``GARBAGE``) or ``{"sleep": seconds}`` before ``DONE``; ``outputs`` (map).
Every attempt is appended to ``calls`` with ``trio.current_time()``, so tests see what ran when.
"""

from __future__ import annotations

import trio

from legato import Outcome, StepResult, StepType
from legato.hookspecs import hookimpl

calls: list[tuple[str, int, float]] = []
active = {"now": 0, "peak": 0}


class Scripted(StepType):
    name = "scripted"
    description = "test step type: ends each attempt as told"

    async def run(self, ctx):
        calls.append((ctx.step_id, ctx.attempt, trio.current_time()))
        results = ctx.params.get("results", ["DONE"])
        todo = results[min(ctx.attempt, len(results)) - 1]
        outputs = dict(ctx.params.get("outputs", {}))
        outputs["attempt"] = ctx.attempt
        active["now"] += 1
        active["peak"] = max(active["peak"], active["now"])
        try:
            if isinstance(todo, dict):
                await trio.sleep(todo["sleep"])
                todo = todo.get("then", "DONE")
            else:
                await trio.sleep(0)
        finally:
            active["now"] -= 1
        if todo == "RAISE":
            raise RuntimeError("scripted step asked to raise")
        if todo == "GARBAGE":
            return {"not": "a StepResult"}
        if todo == "NOT_RETRYABLE":
            return StepResult(Outcome.USER_ERROR, outputs, "refuses retries", retryable=False)
        return StepResult(Outcome(todo), outputs, "" if todo == "DONE" else f"scripted {todo}")


@hookimpl
def legato_register_step_types(registry):
    registry.add(Scripted)
