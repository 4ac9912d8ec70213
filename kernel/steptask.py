"""Step tasks: one trio task per running attempt, in the instance's nursery (DESIGN §5).

A step task runs the step type's work (or follows a reattached handle) under the attempt's cancel
scope and its timeout, and reports what happened to the instance task as a message; step failures
are data, and a plugin that raises is reported as broken, never propagated. The step's log lines
and handles go to the writer; ended attempts that keep something are released once their end is
durable.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

import trio

from .params import ParamError, resolve_secrets
from .states import StepStatus
from .steptype import Outcome, StepContext, StepResult
from .writer import crashpoint

__all__ = ["StepTasks", "Internal", "TIMEOUT", "STOPPED", "RELEASE_TIMEOUT"]

S = StepStatus

# Results a step task reports besides a StepResult.
TIMEOUT = "timeout"
STOPPED = "stopped"

# The bound on one StepType.release call (seconds): it runs shielded, after the attempt ended.
RELEASE_TIMEOUT = 5.0


class Internal:
    """A step type broke its contract (raised, returned something else): INTERNALLY_FAILED."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


class StepTasks:
    """The running attempts of an instance run (a mixin of :class:`legato.instance.InstanceRun`)."""

    async def run_step(self, st, attempt: int) -> None:
        sdef = st.sdef
        step_type = self.engine.step_type(sdef.type)
        handle, st.reattach = st.reattach, None
        if handle is None:
            self.set(st, S.RUNNING)
            # Make RUNNING (and the handle the step records next) durable soon, not only when
            # the step ends; a step that ends sooner than that shares its result's commit.
            self.flush_soon()
        ctx = self.step_context(st, attempt)
        result: Any = None
        if self.secrets is not None:
            result = self._resolve_step_secrets(st, ctx)
        scope = st.cancel
        with scope:
            try:
                if scope.cancel_called or result is not None:  # stopped between launch and now, or
                    pass  # a secret could not be resolved: do not start the work
                elif handle is None and not await self.confirm_lease():
                    pass  # paused past the lease and taken over meanwhile: the run ends, the work never starts
                else:
                    work = step_type.run(ctx) if handle is None else step_type.reattach(ctx, handle)
                    timeout = sdef.timeout
                    if handle is not None and timeout is not None and st.record.started_at:
                        # reattached: the step's timeout counts from its STARTING, not from now
                        timeout = max(0.0, timeout - (time.time() - st.record.started_at))
                    if timeout is not None:
                        with trio.move_on_after(timeout) as deadline:
                            result = await work
                        if deadline.cancelled_caught:
                            result = TIMEOUT
                    else:
                        result = await work
            except Exception as exc:  # a plugin broke its contract: loud, never retried
                result = Internal(_internal(sdef.type, exc))
        st.cancel = None
        if scope.cancel_called:  # stopped; even a step that swallowed the cancellation counts as stopped
            result = STOPPED
        if self.streams:
            self._flush_streams(st.key, attempt)
        crashpoint("step_done")
        self.post(("result", st, attempt, result))

    def step_context(self, st, attempt: int) -> StepContext:
        key = st.key
        scope = st.scope
        return StepContext(
            instance_id=self.iid, workflow_id=self.definition.workflow_id, step_id=key, attempt=attempt,
            params=st.params or {}, config=st.config,
            workflow_params=self.workflow_params if scope.loop_values is None
            else {**self.workflow_params, **scope.loop_values},
            workspace=self.engine.workspace, definition_dir=self.definition.base_dir,
            log=lambda stream, text: self._log(key, attempt, stream, text),
            record_handle=lambda handle: self._record_handle(st, attempt, handle), secrets=self.secrets,
        )

    def _resolve_step_secrets(self, st, ctx: StepContext) -> StepResult | None:
        """Put the resolved values of the step's secret params into ``ctx.params`` (never into
        ``st.params``, which is stored); an unresolvable one fails the attempt, saying why."""
        specs = st.sdef.params
        if not ctx.params or not any(specs[name].secret for name in ctx.params if name in specs):
            return None
        try:
            ctx.params = resolve_secrets(specs, ctx.params, self.engine.compiler, self.secrets)
        except ParamError as exc:
            return StepResult(Outcome.FATAL_ERROR, {}, f"{st.sdef.pointer}/params{exc.pointer}: {exc.message}",
                              retryable=False)
        return None

    def _log(self, step_id: str, attempt: int, stream: str, text: str) -> None:
        if self.secrets is not None:
            key = (step_id, attempt, stream)
            masker = self.streams.get(key)
            if masker is None:
                masker = self.streams[key] = self.secrets.stream()
            text = masker.feed(text)
        if text:
            self.log_chunk(step_id, attempt, stream, text)

    def _flush_streams(self, step_id: str, attempt: int) -> None:
        """The step's output ended: store what its stream maskers held back."""
        for key in [k for k in self.streams if k[0] == step_id and k[1] == attempt]:
            text = self.streams.pop(key).flush()
            if text:
                self.log_chunk(step_id, attempt, key[2], text)

    async def _record_handle(self, st, attempt: int, handle: Any) -> None:
        if st.attempt != attempt:
            return
        st.record.handle = handle
        self.batch.attempts[(st.key, attempt)] = st.record
        if not self.engine.step_type(st.sdef.type).can_reattach:
            # The handle only serves reaping after a crash: it rides on the next commit rather
            # than holding the step (and its permit) for a commit of its own.
            return
        waiter = trio.Event()
        self.durable_waiters.append(waiter)
        self.post(("flush",))
        await waiter.wait()

    # -- releasing what ended attempts kept ------------------------------------------------

    async def release_attempt(self, st, attempt: int, handle: Any) -> None:
        """StepType.release for an attempt whose end is durable: shielded (an instance that ends,
        or loses its lease, still frees what its ended attempts kept) and bounded."""
        step_type = self.engine.step_type(st.sdef.type)
        self.releasing += 1
        try:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(RELEASE_TIMEOUT):
                    try:
                        await step_type.release(self.step_context(st, attempt), handle)
                    except Exception:  # noqa: BLE001 - best effort: the next resume releases it again
                        pass
        finally:
            self.releasing -= 1
            if not self.releasing:
                self.released.set()
                self.released = trio.Event()

    async def wait_released(self) -> None:
        """Before the instance's end is committed: the ends of its attempts are durable and their
        releases have returned, so no resume is needed to free what they kept."""
        if self.releases:
            await self.commit()  # starts them
        while self.releasing:
            await self.released.wait()


def _internal(step_type: str, exc: BaseException) -> str:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-3))
    return f"step type {step_type!r} raised instead of returning a StepResult (a bug in the plugin):\n{tb}"
