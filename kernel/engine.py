"""The trio kernel: runs workflow instances with Maestro's semantics (DESIGN §3, §5).

One task per instance (:class:`InstanceRun`) decides what runs next; each running step is a task
in the instance's nursery with its own cancel scope.  Step tasks report back through an inbox;
step failures are data, and only kernel bugs propagate.

Durability: every change of a scheduling tick goes into one :class:`~legato.model.Batch`,
committed before anything it allows happens: a step's work is launched only after its STARTING is
committed, and successors are created in the same commit as their predecessor's terminal state and
outputs (one commit per tick, whatever the number of steps it moved).
"""

from __future__ import annotations

import gc
import math
import os
import random
import signal
import socket
import time
import traceback
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Callable

import trio

from .cel import CelCompiler, CelError, to_cel, unconvertible
from .definition import Definition, FailureMode, StepDef, load_definition, resolve_attributes
from .model import AttemptRecord, Batch, Event, InstanceRecord, LogChunk
from .params import ParamError, ValueBudget, evaluate_params, merge_start_params, resolve_secrets
from .plugin_manager import Plugins, get_plugins
from .states import (
    STEP_TRANSITIONS,
    IllegalTransition,
    InstanceStatus,
    StepStatus,
    instance_ending,
    instance_status_from,
    next_status,
)
from .steptype import RUNNING_ENGINE, Outcome, StepContext, StepResult, StepType, validate_step_settings
from .storage import StaleWrite, Storage, StorageError

__all__ = ["Engine", "InstanceRun", "StartError", "LeaseHeld"]

S = StepStatus
# Which backoff of a step's retry policy a retryable failure waits (RetryPolicy.backoff_for).
_RETRY_CLASS = {S.USER_FAILED: "error", S.PLATFORM_FAILED: "platform", S.TIMEOUT_FAILED: "timeout"}
# The raw ending of an attempt whose step type reported a failure (StepRuntimeManager.execute).
_FAILURE = {Outcome.USER_ERROR: S.USER_FAILED, Outcome.PLATFORM_ERROR: S.PLATFORM_FAILED,
            Outcome.FATAL_ERROR: S.FATALLY_FAILED}
I = InstanceStatus  # noqa: E741

# Results a step task reports besides a StepResult.
_TIMEOUT = "timeout"
_STOPPED = "stopped"


class _Internal:
    """A step type broke its contract (raised, returned something else): INTERNALLY_FAILED."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

# How long RUNNING states, handles and log lines may wait for a commit of their own (seconds).
FLUSH_DELAY = 0.05

# The bound on one StepType.release call (seconds): it runs shielded, after the attempt ended.
RELEASE_TIMEOUT = 5.0

# The states a fresh attempt walks through before it may start, in order.
_MATERIALIZE = (S.INITIALIZED, S.WAITING_FOR_SIGNALS, S.EVALUATING_PARAMS)


class LeaseHeld(StorageError):
    """Another live worker owns the instance."""


def _parse_crash_at(spec: str | None) -> list | None:
    if not spec:
        return None
    name, _, count = spec.partition(":")
    return [name, int(count or 1)]


# Named crash points for the crash-test battery: LEGATO_CRASH_AT=name[:n] kills this process with
# SIGKILL the n-th time the kernel passes `name` (committed, before_launch, step_done, backoff,
# before_release). Unset (always, outside tests) it costs one comparison.
_CRASH_AT = _parse_crash_at(os.environ.get("LEGATO_CRASH_AT"))


def _crashpoint(name: str) -> None:
    if _CRASH_AT is not None and _CRASH_AT[0] == name:
        _CRASH_AT[1] -= 1
        if _CRASH_AT[1] <= 0:
            os.kill(os.getpid(), signal.SIGKILL)


class StartError(Exception):
    """A start request is invalid (unknown or immutable param override, a param that fails to
    evaluate). ``pointer`` locates it in the definition."""

    def __init__(self, message: str, pointer: str = "") -> None:
        super().__init__(f"{pointer}: {message}" if pointer else message)
        self.message = message
        self.pointer = pointer


class _Step:
    """The runtime state of one step of one instance."""

    __slots__ = (
        "sdef", "record", "attempt", "remaining", "satisfied", "params", "config",
        "errors", "platform", "timeouts", "scope", "finished", "reattach", "conditional",
    )

    def __init__(self, sdef: StepDef) -> None:
        self.sdef = sdef
        self.record: AttemptRecord | None = None
        self.attempt = 0
        self.remaining = len(sdef.predecessors)
        self.satisfied = False
        self.params: dict[str, Any] | None = None
        self.config: Any = None
        self.errors = self.platform = self.timeouts = 0
        self.scope: trio.CancelScope | None = None
        self.finished = False
        self.reattach: Any = None  # the handle to follow instead of starting the work anew
        self.conditional = any(cond.constant is None for _, cond in sdef.successors)  # edges to evaluate


class Engine:
    """Loads definitions and runs instances against one storage backend.

    One per process: it owns the plugins, the CEL compiler (and its cache), the step-type
    instances and the storage.  ``workspace`` is where instances get their working directories.
    ``step_settings`` (step type name -> the operator's settings for it) are validated here by
    each step type's ``Settings`` model: wrong ones raise ``legato.steptype.SettingsError``.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        plugins: Plugins | None = None,
        workspace: str | os.PathLike | None = None,
        step_settings: dict[str, dict[str, Any]] | None = None,
        lease_ttl: float = 30.0,
        owner: str | None = None,
    ) -> None:
        self.plugins = plugins or get_plugins()
        self.storage = storage
        self.lease_ttl = lease_ttl
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.workspace = Path(workspace or ".legato/runs").resolve()
        self.compiler = CelCompiler(self.plugins.cel_functions.functions)
        # The plugins that may observe events load now (third-party entry points), not in the first run.
        self.observed = self.plugins.has_event_observers
        # Checked now, so wrong settings fail here (SettingsError), not when a step first runs.
        self._step_settings = validate_step_settings(self.plugins.step_types.types, step_settings)
        self._step_types: dict[str, StepType] = {}
        self.releasing: set[str] = set()  # step types that override StepType.release
        self.runs: dict[str, InstanceRun] = {}
        self._fresh_leases: dict[str, float] = {}  # instance id -> trio time start created it leased to us

    def step_type(self, name: str) -> StepType:
        """The (one, shared) instance of step type ``name``, built with its operator settings."""
        st = self._step_types.get(name)
        if st is None:
            st = self.plugins.step_types.types[name](self._step_settings.get(name))
            self._step_types[name] = st
            if type(st).release is not StepType.release:
                self.releasing.add(name)
        return st

    def load(self, source) -> Definition:
        """Load and validate a definition (path, text or document). Raises DefinitionError."""
        return load_definition(source, self.plugins.step_types.types, self.compiler)

    async def start(
        self,
        definition: Definition,
        params: dict[str, Any] | None = None,
        *,
        raw_params: dict[str, str] | None = None,
        request_id: str | None = None,
        initiator: str = "manual",
        instance_id: str | None = None,
        ancestors: list[dict[str, Any]] | None = None,
        queued: bool = False,
    ) -> tuple[InstanceRecord, bool]:
        """Push the definition's version, evaluate the workflow params and create the instance.

        A definition read from the store (``definition.version`` set) is not pushed again: the
        instance is pinned to that version. ``instance_id`` (default: a random one) and
        ``ancestors`` serve a subworkflow step (:class:`legato.children.ChildWorkflows`).
        ``queued``: created without a lease (CREATED, no owner), for ``legato resume`` or a
        worker to run; otherwise it is leased to this engine, which is to run it next.

        ``params`` are values (or full-form definitions, as Maestro's run params) and ``raw_params``
        ``name=value`` strings from a command line, merged into the definition's params by
        :func:`legato.params.merge_start_params` (modes, deep-merged maps, added params). Returns (instance, created): with a known
        ``request_id`` the existing instance comes back and nothing new is created.
        """
        budget = ValueBudget()
        try:  # Maestro's ParamsMergeHelper: modes, deep-merged maps, params the request adds
            specs = merge_start_params(definition.params, params, raw_params, budget=budget)
        except ParamError as exc:
            raise StartError(exc.message, f"/workflow/params{exc.pointer}") from None
        now = time.time()
        instance_id = instance_id or uuid.uuid4().hex[:16]
        # Literal params need no CEL (a workflow without expressions never imports cel-python),
        # nor the version: then the definition is pushed and the instance created in one call.
        needs_cel = _needs_cel(specs.values())
        version, context = definition.version, None
        if needs_cel:
            if version is None:
                version = (await self.storage.push_definition(definition.workflow_id, definition.document)).version
            context = {"workflow": to_cel({
                "id": definition.workflow_id, "version": version, "instance_id": instance_id,
                "run_id": 1, "run_ts": _utc(now), "initiator": initiator,
            })}
        try:
            values = evaluate_params(specs, self.compiler, context=context, budget=budget)
        except ParamError as exc:
            raise StartError(exc.message, f"/workflow/params{exc.pointer}") from None
        if definition.has_secrets:  # refuse now what the instance could not run with
            _resolve_workflow_secrets(definition, values, self.compiler)
        try:  # `${param}` in timeouts and retry policies: refused now if it reads wrong
            resolve_attributes(definition, values)
        except ParamError as exc:
            raise StartError(exc.message, exc.pointer) from None
        record = InstanceRecord(
            instance_id=instance_id, workflow_id=definition.workflow_id, version=version or 0,
            params=values, request_id=request_id, initiator=initiator, created_at=now, ancestors=ancestors or [],
        )
        owner = None if queued else self.owner
        if version is not None or queued:
            if version is None:
                version = (await self.storage.push_definition(definition.workflow_id, definition.document)).version
            record.version = version
            instance, created = await self.storage.create_instance(record, owner, self.lease_ttl)
        else:
            instance, created = await self.storage.start_instance(definition.document, record, self.owner,
                                                                  self.lease_ttl)
        definition.version = record.version
        if created and not queued:  # leased to us at generation 1: InstanceRun need not take it again right away
            self._fresh_leases[instance_id] = trio.current_time()
        return instance, created

    async def run(
        self,
        definition: Definition,
        instance: InstanceRecord,
        *,
        observer: Callable[[Event], None] | None = None,
        task_status=trio.TASK_STATUS_IGNORED,
    ) -> InstanceRecord:
        """Run ``instance`` to its end and return its final record. With ``nursery.start`` the
        :class:`InstanceRun` is handed back as soon as it runs (to stop or kill it).

        Takes the instance's lease first (raises :class:`LeaseHeld` if a live worker has it);
        an instance that already has attempts in storage is resumed where it was."""
        run = InstanceRun(self, definition, instance, observer)
        self.runs[instance.instance_id] = run
        _gc_hold()
        # What StepContext.workflows answers in this instance's step tasks (they inherit it).
        token = RUNNING_ENGINE.set(self)
        try:
            return await run.run(task_status)
        finally:
            RUNNING_ENGINE.reset(token)
            _gc_release()
            del self.runs[instance.instance_id]

    async def resume(self, instance_id: str, *, observer: Callable[[Event], None] | None = None,
                     task_status=trio.TASK_STATUS_IGNORED) -> InstanceRecord:
        """Resume an instance from storage: its pinned definition version, its evaluated params,
        its attempts. Finished steps are not run again; a step that was running when its
        previous owner died is reattached if its step type can, else it ends PLATFORM_FAILED
        and its retry policy decides."""
        instance = await self.storage.get_instance(instance_id)
        if instance is None:
            raise StorageError(f"no instance {instance_id!r} in {self.storage.url}")
        version = await self.storage.get_definition(instance.workflow_id, instance.version)
        if version is None:
            raise StorageError(f"definition {instance.workflow_id} v{instance.version} of {instance_id} is missing")
        definition = self.load(version.document)
        definition.version = version.version
        return await self.run(definition, instance, observer=observer, task_status=task_status)

    async def execute(self, definition: Definition, params: dict[str, Any] | None = None, **kwargs) -> InstanceRecord:
        """Start and run to the end: the one-call way used by tests and examples."""
        observer = kwargs.pop("observer", None)
        instance, _ = await self.start(definition, params, **kwargs)
        return await self.run(definition, instance, observer=observer)


def _resolve_workflow_secrets(definition: Definition, values: dict[str, Any], compiler, secrets=None) -> dict[str, Any]:
    """The workflow's params with secret references resolved; raises StartError naming the param."""
    from .secrets import Secrets

    try:
        return resolve_secrets(definition.params, values, compiler, secrets if secrets is not None else Secrets())
    except ParamError as exc:
        raise StartError(exc.message, f"/workflow/params{exc.pointer}") from None


# While instances run, the cyclic GC's youngest generation is collected every GC_YOUNG
# allocations instead of every 700: a run allocates many short-lived objects that plain reference
# counting frees (events, records, trio tasks) beside long-lived ones that each collection would
# walk again (the definition, the steps' state). Process-wide, so set by the first run and put
# back by the last.
GC_YOUNG = 50_000
_gc_runs = 0
_gc_saved: tuple[int, ...] | None = None


def _gc_hold() -> None:
    global _gc_runs, _gc_saved
    if _gc_runs == 0:
        _gc_saved = gc.get_threshold()
        if _gc_saved[0] and _gc_saved[0] < GC_YOUNG:  # 0: the GC is off; leave it so
            gc.set_threshold(GC_YOUNG, *_gc_saved[1:])
    _gc_runs += 1


def _gc_release() -> None:
    global _gc_runs
    _gc_runs -= 1
    if _gc_runs == 0 and _gc_saved is not None and gc.get_threshold()[0] == GC_YOUNG:
        gc.set_threshold(*_gc_saved)


def _needs_cel(specs) -> bool:
    """Whether evaluating these param specs reads CEL names (an expression, a validator, a
    ``${}``), in a MAP's nested entries too (an entry given as a plain value has no spec)."""
    for spec in specs:
        if spec is None:
            continue
        if spec.expression is not None or spec.validator is not None or spec.interpolated:
            return True
        if spec.entries and _needs_cel(sub for _, sub in spec.entries):
            return True
    return False


def _utc(ts: float):
    import datetime

    return datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc)


class InstanceRun:
    """The task that drives one instance: the scheduling loop, the step tasks, the writes."""

    def __init__(self, engine: Engine, definition: Definition, instance: InstanceRecord,
                 observer: Callable[[Event], None] | None) -> None:
        self.engine = engine
        self.definition = definition
        self.instance = instance
        self.iid = instance.instance_id
        self.observer = observer
        try:  # timeouts and retry policies written with `${param}`, read with this instance's params
            self._timeout, resolved = resolve_attributes(definition, instance.params)
        except ParamError as exc:
            raise StartError(exc.message, exc.pointer) from None
        self.steps = {sdef.id: _Step(resolved.get(sdef.id, sdef)) for sdef in definition.steps}
        self._batch = Batch(self.iid)
        self._inbox: deque = deque()
        self._wake = trio.Event()
        self._to_launch: list[_Step] = []
        self._permit_queue: deque[_Step] = deque()
        self._running = 0
        self._retrying: dict[str, trio.CancelScope] = {}
        self._limit = definition.step_concurrency or 1_000_000
        self._failed = False  # a step failed for good (not ignored)
        self._timed_out = False  # a step ended TIMED_OUT
        self._ending: InstanceStatus | None = None  # STOPPED / FAILED (kill, fail-immediately) / TIMED_OUT
        self._end_message = ""
        self._durable_waiters: list[trio.Event] = []
        self._releases: list[tuple[_Step, int, Any]] = []  # ended attempts to release once durable
        self._releasing = 0  # StepType.release calls under way
        self._released = trio.Event()  # set when the last of them returns
        self._finished_steps: list[_Step] = []
        self._cel_synced = 0
        self._cel_context: dict[str, Any] | None = None
        self._budget = ValueBudget()  # what this run's step params may compute, together
        self._nursery: trio.Nursery | None = None
        self._generation = 0
        self._lost: BaseException | None = None
        self._flush_at: float | None = None  # trio time by which pending changes are committed
        self._emit = engine.plugins.emit if engine.observed else None
        # Secrets: None (no masking pass anywhere) unless the definition declares a secret param.
        self._secrets = None
        self._streams: dict[tuple[str, int, str], Any] = {}
        self._workflow_params = instance.params  # what steps see: secret references resolved
        if definition.has_secrets:
            from .secrets import Secrets

            self._secrets = Secrets()
        wf = {
            "id": definition.workflow_id, "version": instance.version, "instance_id": self.iid,
            "run_id": instance.run_id, "run_ts": _utc(instance.created_at), "initiator": instance.initiator,
        }
        self._workflow_plain = wf

    # -- public actions ----------------------------------------------------------------------

    def stop(self, reason: str = "stopped by user") -> None:
        """Stop the instance: running steps are cancelled (STOPPED), nothing new starts, the
        instance ends STOPPED."""
        self._post(("end", I.STOPPED, reason))

    def kill(self, reason: str = "killed by user") -> None:
        """Like stop, but the instance ends FAILED."""
        self._post(("end", I.FAILED, reason))

    # -- plumbing ----------------------------------------------------------------------------

    def _post(self, message: tuple) -> None:
        self._inbox.append(message)
        self._wake.set()

    def _flush_soon(self) -> None:
        """Commit what is pending within FLUSH_DELAY even if nothing else wakes the loop: RUNNING
        states, handles and log lines stream to storage without a commit each."""
        if self._flush_at is None:
            self._flush_at = trio.current_time() + FLUSH_DELAY
            self._wake.set()  # the loop may be waiting with no deadline: let it take this one

    def _event(self, step_id: str | None, attempt: int, status: str, message: str = "") -> None:
        if self._secrets is not None:
            message = self._secrets.mask(message)
        self._batch.events.append(Event(time.time(), self.iid, step_id, attempt, status, message))

    def _set(self, st: _Step, status: StepStatus, message: str = "") -> None:
        record = st.record
        if status not in STEP_TRANSITIONS[record.status]:
            raise IllegalTransition(record.status, status, f"step {st.sdef.id} attempt {st.attempt}")
        if self._secrets is not None:
            message = self._secrets.mask(message)
        record.status = status
        if message:
            record.message = message
        self._batch.attempts[(st.sdef.id, st.attempt)] = record
        self._batch.events.append(Event(time.time(), self.iid, st.sdef.id, st.attempt, status.value, message))

    def _set_instance(self, status: InstanceStatus, message: str = "") -> None:
        from .states import transition

        self.instance.status = transition(self.instance.status, status, f"instance {self.iid}")
        now = time.time()
        if status is I.IN_PROGRESS:
            self.instance.started_at = now
        elif status.terminal:
            self.instance.ended_at = now
            if self._secrets is not None:
                message = self._secrets.mask(message)
            self.instance.message = message
        self._batch.instance = self.instance
        self._event(None, 0, status.value, message)

    async def _commit(self) -> None:
        self._flush_at = None
        batch, self._batch = self._batch, Batch(self.iid, self._generation)
        releases = self._releases  # the ends in this batch: released only once it is durable
        if releases:
            self._releases = []
        try:
            await self.engine.storage.commit(batch)
        except StorageError as exc:
            # Without durable writes nothing may go on: drop everything (running steps are
            # cancelled and their processes killed); whoever resumes the instance takes over.
            self._lost = exc
            self._nursery.cancel_scope.cancel()
            await trio.lowlevel.checkpoint()
            raise
        _crashpoint("committed")
        observer, emit = self.observer, self._emit
        if observer is not None or emit is not None:
            for event in batch.events:
                if observer is not None:
                    observer(event)
                if emit is not None:
                    emit(event)
        if self._durable_waiters:
            waiters, self._durable_waiters = self._durable_waiters, []
            for waiter in waiters:
                waiter.set()
        if releases:
            _crashpoint("before_release")
            for st, attempt, handle in releases:
                self._nursery.start_soon(self._release_attempt, st, attempt, handle)

    async def _release_attempt(self, st: _Step, attempt: int, handle: Any) -> None:
        """StepType.release for an attempt whose end is durable: shielded (an instance that ends,
        or loses its lease, still frees what its ended attempts kept) and bounded."""
        step_type = self.engine.step_type(st.sdef.type)
        self._releasing += 1
        try:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(RELEASE_TIMEOUT):
                    try:
                        await step_type.release(self._step_context(st, attempt), handle)
                    except Exception:  # noqa: BLE001 - best effort: the next resume releases it again
                        pass
        finally:
            self._releasing -= 1
            if not self._releasing:
                self._released.set()
                self._released = trio.Event()

    async def _wait_released(self) -> None:
        """Before the instance's end is committed: the ends of its attempts are durable and their
        releases have returned, so no resume is needed to free what they kept."""
        if self._releases:
            await self._commit()  # starts them
        while self._releasing:
            await self._released.wait()

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> InstanceRecord:
        try:
            return await self._run(task_status)
        except BaseExceptionGroup as group:
            # Step failures are data; what gets here is a kernel or storage error. Hand it to the
            # caller as itself, never as an ExceptionGroup.
            raise _first_leaf(group) from None

    async def _run(self, task_status) -> InstanceRecord:
        if self.instance.status.terminal:
            task_status.started(self)
            return self.instance
        storage, engine = self.engine.storage, self.engine
        if self._secrets is not None:  # before the lease: an unresolvable secret changes nothing
            self._workflow_params = _resolve_workflow_secrets(self.definition, self.instance.params,
                                                              engine.compiler, self._secrets)
        created_at = engine._fresh_leases.pop(self.iid, None)
        if created_at is not None and trio.current_time() - created_at < engine.lease_ttl / 3:
            generation = 1  # start created it leased to us moments ago; the heartbeat renews it in time
        else:
            generation = await storage.acquire_lease(self.iid, engine.owner, engine.lease_ttl)
        if generation is None:
            lease = await storage.get_lease(self.iid)
            who, left = (lease.describe(), f" (for {lease.expires_in:.1f}s more)") if lease else ("another worker", "")
            raise LeaseHeld(f"instance {self.iid} is owned by another live worker, {who}; it is resumed once "
                            f"that worker ends or its lease expires{left}")
        self._generation = generation
        self._batch.generation = generation
        attempts = await storage.get_attempts(self.iid) if self.instance.status is not I.CREATED else []
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._heartbeat)
                timeout = self._timeout
                if self.instance.status is I.CREATED:
                    self._set_instance(I.IN_PROGRESS)
                    if timeout:
                        nursery.start_soon(self._workflow_deadline, timeout)
                    for st in self.steps.values():
                        if st.remaining == 0:
                            st.satisfied = True
                            self._materialize(st)
                else:
                    self._event(None, 0, "IN_PROGRESS", f"resumed by {engine.owner}")
                    if timeout:
                        left = timeout - (time.time() - (self.instance.started_at or time.time()))
                        nursery.start_soon(self._workflow_deadline, max(0.0, left))
                    self._restore(attempts)
                task_status.started(self)
                await self._loop(nursery)
                nursery.cancel_scope.cancel()  # the heartbeat and the workflow deadline
        except BaseException:
            if self._lost is not None:
                raise self._lost from None
            raise
        if self._lost is not None:
            raise self._lost
        try:
            await storage.release_lease(self.iid, engine.owner)
        except StorageError:
            pass  # the instance is over; an unreleased lease just expires
        return self.instance

    async def _heartbeat(self) -> None:
        """Renew the lease well before it expires. Late renewals (the worker was paused, the
        database locked) keep it as long as no other worker took it; storage errors are retried
        until one succeeds or says the lease is gone. Losing it to another worker ends the run."""
        storage, owner, ttl = self.engine.storage, self.engine.owner, self.engine.lease_ttl
        delay = ttl / 3
        while True:
            await trio.sleep(delay)
            try:
                generation = await storage.acquire_lease(self.iid, owner, ttl, generation=self._generation)
            except StorageError:
                delay = min(ttl / 3, 1.0)  # try again soon: the lease is only lost if someone took it
                continue
            delay = ttl / 3
            if generation == self._generation:
                continue
            try:
                lease = await storage.get_lease(self.iid)
            except StorageError:
                lease = None
            who = lease.describe() if lease is not None else "another worker"
            self._lost = StaleWrite(f"lost the lease of instance {self.iid} to {who} while this worker "
                                    f"({owner}) was not renewing it; that worker carries the instance on")
            self._nursery.cancel_scope.cancel()
            return

    async def _loop(self, nursery) -> None:
        urgent = True  # the roots (or a resumed run's steps) are waiting for their first commit
        while True:
            while self._inbox:
                self._handle(self._inbox.popleft())
                urgent = True
            if self._is_done():
                if self._releases or self._releasing:
                    await self._wait_released()
                self._finish()
                await self._commit()
                return
            # Messages (results, retries, actions) and launches commit now; what only asked to be
            # flushed soon (RUNNING, handles, log lines) waits for its deadline or the next tick.
            due = self._flush_at is not None and trio.current_time() >= self._flush_at
            if self._batch and (urgent or due or self._to_launch):
                await self._commit()
            urgent = False
            if self._to_launch:
                _crashpoint("before_launch")
                launch, self._to_launch = self._to_launch, []
                for st in launch:
                    st.scope = trio.CancelScope()  # before the task runs, so a stop can reach it
                    nursery.start_soon(self._run_step, st, st.attempt)
            if not self._inbox:
                deadline = self._flush_at if self._flush_at is not None else math.inf
                with trio.move_on_at(deadline):
                    await self._wake.wait()
                self._wake = trio.Event()

    # -- resuming ------------------------------------------------------------------------------

    def _restore(self, attempts: list[AttemptRecord]) -> None:
        """Rebuild the run from storage, in topological order, so each step's predecessors are
        settled before it: finished steps release their successors again (conditions are pure
        functions of durable outputs), live attempts continue, interrupted ones are reattached or
        failed as platform errors."""
        import graphlib

        history: dict[str, list[AttemptRecord]] = {}
        for record in attempts:
            history.setdefault(record.step_id, []).append(record)
        for sdef in self.definition.steps:
            self.engine.step_type(sdef.type)  # instantiating a step type tells whether it releases
        releasing = self.engine.releasing
        # Every step with history gets its record first, so releasing a finished predecessor
        # never creates a step that already exists.
        for sid, records in history.items():
            st = self.steps[sid]
            records.sort(key=lambda r: r.attempt)
            st.record = records[-1]
            st.attempt = st.record.attempt
            st.params = next((r.params for r in records if r.params is not None), None)
            st.errors = sum(r.status is S.USER_FAILED for r in records)
            st.platform = sum(r.status is S.PLATFORM_FAILED for r in records)
            st.timeouts = sum(r.status is S.TIMEOUT_FAILED for r in records)
            if st.sdef.type in releasing:
                # Ended attempts whose release a crash may have cut off (it is idempotent).
                for r in records:
                    if r.status.terminal and r.handle is not None:
                        self._nursery.start_soon(self._release_attempt, st, r.attempt, r.handle)
        order = graphlib.TopologicalSorter({s.id: s.predecessors for s in self.definition.steps}).static_order()
        for sid in order:
            if sid not in history:
                continue
            st = self.steps[sid]
            status = st.record.status
            if status.complete:
                st.finished = True
                self._finished_steps.append(st)
                if status is not S.UNSATISFIED:
                    st.satisfied = True
                self._release(st)
            elif status.terminal:
                self._restore_ended(st, status)
            elif status in (S.STARTING, S.RUNNING, S.FINISHING):
                self._restore_interrupted(st)
            else:
                self._continue(st)

    def _restore_ended(self, st: _Step, status: StepStatus) -> None:
        if status.retryable:
            # The counters include this attempt: was a retry due after the one before it? (False
            # only for a record an older Legato left, which kept the status of an exhausted class.)
            counter, limit = _counter(st, status)
            pending = next_status(status, counter - 1, limit, st.sdef.failure_mode) is status
        else:
            pending = False
        if pending:  # a retry was scheduled when the previous owner stopped
            delay = st.sdef.retry.backoff_for(_RETRY_CLASS[status]).delay(counter, random.random())
            left = max(0.0, (st.record.ended_at or 0.0) + delay - time.time())
            scope = trio.CancelScope()
            self._retrying[st.sdef.id] = scope
            self._nursery.start_soon(self._retry_after, st, left, scope)
            return
        st.finished = True
        self._finished_steps.append(st)
        ending = instance_ending(status)
        if ending is I.STOPPED:
            self._ending = self._ending or I.STOPPED
            self._end_message = self._end_message or st.record.message
        elif ending is I.TIMED_OUT:
            self._timed_out = True
        elif ending is I.FAILED:
            self._failed = True

    def _restore_interrupted(self, st: _Step) -> None:
        """The previous owner died while this attempt's work may have been running."""
        step_type = self.engine.step_type(st.sdef.type)
        if st.record.status is not S.STARTING and step_type.can_reattach and st.record.handle is not None:
            if not self._ready(st):  # a reattached attempt sees the same ctx.config as the one that started it
                return
            st.reattach = st.record.handle
            self._running += 1
            self._to_launch.append(st)
            return
        if st.record.handle is not None:
            try:
                step_type.reap(self._step_context(st, st.attempt), st.record.handle)
            except Exception as exc:  # reaping is best effort; say so in the attempt's message
                st.record.message = f"could not reap what the previous worker left running: {exc}"
        self._running += 1  # _on_result gives the permit back
        what = "started" if st.record.status is S.STARTING else "ran"
        self._on_result(st, st.attempt, StepResult(
            Outcome.PLATFORM_ERROR, {},
            f"the worker that {what} this attempt stopped ({st.record.status.value}); "
            f"{st.sdef.type} steps cannot be reattached, so its outcome is unknown"))

    def _continue(self, st: _Step) -> None:
        """An attempt created but not started: walk it on from where it stopped."""
        record = st.record
        for status in _MATERIALIZE:
            if status in STEP_TRANSITIONS[record.status]:
                self._set(st, status)
        self._prepare(st)  # queued ones too: their config exists only in the process that died

    def _is_done(self) -> bool:
        return not (self._running or self._to_launch or self._retrying or self._permit_queue)

    def _finish(self) -> None:
        endings = []
        if self._failed:
            endings.append(I.FAILED)
        if self._timed_out:
            endings.append(I.TIMED_OUT)
        if self._ending is not None:
            endings.append(self._ending)
        final = instance_status_from(endings)
        message = self._end_message
        if final is I.FAILED and not message:
            failed = [st.sdef.id for st in self.steps.values() if st.record and st.finished and st.record.status.failed]
            message = f"step(s) failed: {', '.join(failed)}" if failed else "failed"
        self._set_instance(final, message)

    def _handle(self, message: tuple) -> None:
        kind = message[0]
        if kind == "result":
            self._on_result(message[1], message[2], message[3])
        elif kind == "retry":
            st = message[1]
            self._retrying.pop(st.sdef.id, None)
            if self._ending is None:
                self._materialize(st)
        elif kind == "end":
            self._end(message[1], message[2])
        # "flush" needs nothing: waking the loop commits the pending batch

    def _end(self, status: InstanceStatus, reason: str) -> None:
        """Stop everything now; the instance ends ``status`` once running steps have reported."""
        if self._ending is not None and status is not I.FAILED:
            return
        self._ending = status
        self._end_message = reason
        # MaestroTask.cancel: what the workflow's timeout ends is TIMED_OUT, anything else STOPPED.
        stopped = S.TIMED_OUT if status is I.TIMED_OUT else S.STOPPED
        for st in self.steps.values():
            if st.scope is not None:
                st.scope.cancel()
        for scope in self._retrying.values():
            scope.cancel()
        self._retrying.clear()
        while self._permit_queue:
            st = self._permit_queue.popleft()
            self._set(st, stopped, reason)
            st.finished = True
        for st in self._to_launch:  # STARTING but never launched
            self._set(st, stopped, reason)
            st.finished = True
        self._running -= len(self._to_launch)
        self._to_launch.clear()

    async def _workflow_deadline(self, seconds: float) -> None:
        await trio.sleep(seconds)
        self._post(("end", I.TIMED_OUT, f"workflow timed out after {seconds:g}s"))

    # -- creating and starting steps -----------------------------------------------------------

    def _materialize(self, st: _Step) -> None:
        """Create a new attempt and walk it to STARTING (or WAITING_FOR_PERMITS)."""
        if self._ending is not None:
            return
        st.attempt += 1
        now = time.time()
        st.record = AttemptRecord(self.iid, st.sdef.id, st.attempt, S.CREATED, self.instance.run_id, created_at=now)
        self._batch.attempts[(st.sdef.id, st.attempt)] = st.record
        self._event(st.sdef.id, st.attempt, "CREATED")
        for status in _MATERIALIZE:
            self._set(st, status)
        self._prepare(st)

    def _prepare(self, st: _Step) -> None:
        """EVALUATING_PARAMS (or a restored WAITING_FOR_PERMITS): make the attempt ready, then
        queue it for a permit."""
        if not self._ready(st):
            return
        if st.record.status is not S.WAITING_FOR_PERMITS:
            self._set(st, S.WAITING_FOR_PERMITS)
        self._request_permit(st)

    def _ready(self, st: _Step) -> bool:
        """Evaluate the step's params once (later attempts and resumes reuse the values) and
        check them against the step type's schema (``st.config``). Every attempt that is to run
        or be followed passes here, fresh or restored after a crash. False when the attempt ended
        INTERNALLY_FAILED instead: params that fail to evaluate are Maestro's internal error
        (MaestroTask.doExecute's catch, StepRuntimeSummary.markInternalError), never retried nor
        ignored."""
        try:
            if st.params is None:
                st.params = self._evaluate_step_params(st)
            if st.config is None:
                st.config = self._validate_config(st)
        except ParamError as exc:
            message = f"{st.sdef.pointer}/params{exc.pointer}: {exc.message}"
            if st.record.status is not S.EVALUATING_PARAMS:
                # valid when this attempt was prepared, refused now: the step type changed under it
                message += " (the params were accepted before a restart)"
            self._end_step(st, S.INTERNALLY_FAILED, message)
            return False
        st.record.params = st.params
        return True

    def _request_permit(self, st: _Step) -> None:
        if self._running < self._limit:
            self._starting(st)
        else:
            self._permit_queue.append(st)

    def _starting(self, st: _Step) -> None:
        """Take a permit: ``_running`` counts steps launched or about to be."""
        st.record.started_at = time.time()
        self._set(st, S.STARTING)
        self._to_launch.append(st)
        self._running += 1

    def _grant_permits(self) -> None:
        while self._permit_queue and self._running < self._limit and self._ending is None:
            self._starting(self._permit_queue.popleft())

    def _context(self) -> dict[str, Any]:
        """The CEL names an expression sees: the workflow's params (bare and as ``params``),
        ``steps`` and ``workflow``.

        Built on first use and grown as steps finish, so each step is converted to CEL once."""
        if self._cel_context is None:
            params = self.instance.params
            self._cel_context = {name: to_cel(value) for name, value in params.items()}
            self._cel_context.update(
                params=to_cel(params), steps=to_cel({}), workflow=to_cel(self._workflow_plain)
            )
        if self._cel_synced < len(self._finished_steps):
            steps = self._cel_context["steps"]
            for st in self._finished_steps[self._cel_synced:]:
                steps[to_cel(st.sdef.id)] = _cel_entry(st.record)
            self._cel_synced = len(self._finished_steps)
        return self._cel_context

    def _recontext(self, st: _Step) -> None:
        """``st`` ended otherwise than its entry in the CEL context says: convert it again."""
        if self._cel_context is not None and self._cel_synced >= len(self._finished_steps):
            self._cel_context["steps"][to_cel(st.sdef.id)] = _cel_entry(st.record)

    def _evaluate_step_params(self, st: _Step) -> dict[str, Any]:
        sdef = st.sdef
        if not sdef.params:
            return {}
        step_type = self.engine.plugins.step_types.types[sdef.type]
        try:
            return evaluate_params(sdef.params, self.engine.compiler, scope=self.instance.params,
                                   context=self._context() if _needs_cel(sdef.params.values()) else None,
                                   raw=step_type.raw_params, argv=step_type.argv_params, budget=self._budget)
        except ParamError:
            raise
        except _UNCONVERTIBLE as exc:  # a value stored before values were checked on the way in
            raise ParamError(f"a value this step's params see cannot be converted for CEL ({exc})") from None

    def _validate_config(self, st: _Step) -> Any:
        """The step's params as the step type's ``Params`` model (None when it declares none)."""
        step_type = self.engine.plugins.step_types.types[st.sdef.type]
        if step_type.Params is None:
            return None
        import pydantic

        try:
            return step_type.Params.model_validate(st.params)
        except pydantic.ValidationError as exc:
            err = exc.errors()[0]
            loc = "".join(f"/{p}" for p in err["loc"])
            raise ParamError(f"{st.sdef.type}: {err['msg']}", loc) from None

    # -- running a step ------------------------------------------------------------------------

    async def _run_step(self, st: _Step, attempt: int) -> None:
        sdef = st.sdef
        step_type = self.engine.step_type(sdef.type)
        handle, st.reattach = st.reattach, None
        if handle is None:
            self._set(st, S.RUNNING)
            # Make RUNNING (and the handle the step records next) durable soon, not only when
            # the step ends; a step that ends sooner than that shares its result's commit.
            self._flush_soon()
        ctx = self._step_context(st, attempt)
        result: Any = None
        if self._secrets is not None:
            result = self._resolve_step_secrets(st, ctx)
        scope = st.scope
        with scope:
            try:
                if scope.cancel_called or result is not None:  # stopped between launch and now, or
                    pass  # a secret could not be resolved: do not start the work
                else:
                    work = step_type.run(ctx) if handle is None else step_type.reattach(ctx, handle)
                    if sdef.timeout is not None:
                        with trio.move_on_after(sdef.timeout) as deadline:
                            result = await work
                        if deadline.cancelled_caught:
                            result = _TIMEOUT
                    else:
                        result = await work
            except Exception as exc:  # a plugin broke its contract: loud, never retried
                result = _Internal(_internal(sdef.type, exc))
        st.scope = None
        if scope.cancel_called:  # stopped; even a step that swallowed the cancellation counts as stopped
            result = _STOPPED
        if self._streams:
            self._flush_streams(sdef.id, attempt)
        _crashpoint("step_done")
        self._post(("result", st, attempt, result))

    def _step_context(self, st: _Step, attempt: int) -> StepContext:
        sdef = st.sdef
        return StepContext(
            instance_id=self.iid, workflow_id=self.definition.workflow_id, step_id=sdef.id, attempt=attempt,
            params=st.params or {}, config=st.config, workflow_params=self._workflow_params,
            workspace=self.engine.workspace, definition_dir=self.definition.base_dir,
            log=lambda stream, text: self._log(sdef.id, attempt, stream, text),
            record_handle=lambda handle: self._record_handle(st, attempt, handle), secrets=self._secrets,
        )

    def _resolve_step_secrets(self, st: _Step, ctx: StepContext) -> StepResult | None:
        """Put the resolved values of the step's secret params into ``ctx.params`` (never into
        ``st.params``, which is stored); an unresolvable one fails the attempt, saying why."""
        specs = st.sdef.params
        if not ctx.params or not any(specs[name].secret for name in ctx.params if name in specs):
            return None
        try:
            ctx.params = resolve_secrets(specs, ctx.params, self.engine.compiler, self._secrets)
        except ParamError as exc:
            return StepResult(Outcome.FATAL_ERROR, {}, f"{st.sdef.pointer}/params{exc.pointer}: {exc.message}",
                              retryable=False)
        return None

    def _log(self, step_id: str, attempt: int, stream: str, text: str) -> None:
        if self._secrets is not None:
            key = (step_id, attempt, stream)
            masker = self._streams.get(key)
            if masker is None:
                masker = self._streams[key] = self._secrets.stream()
            text = masker.feed(text)
        if text:
            self._batch.logs.append(LogChunk(self.iid, step_id, attempt, stream, text, time.time()))
            self._flush_soon()

    def _flush_streams(self, step_id: str, attempt: int) -> None:
        """The step's output ended: store what its stream maskers held back."""
        for key in [k for k in self._streams if k[0] == step_id and k[1] == attempt]:
            text = self._streams.pop(key).flush()
            if text:
                self._batch.logs.append(LogChunk(self.iid, step_id, attempt, key[2], text, time.time()))
                self._flush_soon()

    async def _record_handle(self, st: _Step, attempt: int, handle: Any) -> None:
        if st.attempt != attempt:
            return
        st.record.handle = handle
        self._batch.attempts[(st.sdef.id, attempt)] = st.record
        if not self.engine.step_type(st.sdef.type).can_reattach:
            # The handle only serves reaping after a crash: it rides on the next commit rather
            # than holding the step (and its permit) for a commit of its own.
            return
        waiter = trio.Event()
        self._durable_waiters.append(waiter)
        self._post(("flush",))
        await waiter.wait()

    # -- results ------------------------------------------------------------------------------

    def _on_result(self, st: _Step, attempt: int, result: Any) -> None:
        self._running -= 1
        sdef = st.sdef
        record = st.record  # this attempt's, even once a retry is scheduled
        if result is _STOPPED:
            # MaestroTask.cancel: a step the workflow's timeout ends is TIMED_OUT, else STOPPED.
            self._end_step(st, S.TIMED_OUT if self._ending is I.TIMED_OUT else S.STOPPED,
                           self._end_message or "stopped")
        elif result is _TIMEOUT:
            self._conclude(st, S.TIMEOUT_FAILED, f"timed out after {sdef.timeout:g}s", True)
        elif isinstance(result, _Internal):
            self._end_step(st, S.INTERNALLY_FAILED, result.message)
        elif not isinstance(result, StepResult) or not isinstance(result.outcome, Outcome):
            self._end_step(st, S.INTERNALLY_FAILED,
                           f"step type {sdef.type!r} returned {result!r:.200}, not a StepResult (a bug in the plugin)")
        elif result.outcome is Outcome.DONE and not (result.outputs and _bad_outputs(result)):
            st.record.outputs = _outputs(result.outputs, self._secrets)
            self._set(st, S.FINISHING)
            self._end_step(st, S.SUCCEEDED, result.message)
        else:
            if result.outputs:
                _bad_outputs(result)
            st.record.outputs = _outputs(result.outputs, self._secrets)
            self._conclude(st, _FAILURE[result.outcome], result.message or result.outcome.value, result.retryable)
        if record.handle is not None and sdef.type in self.engine.releasing:
            self._releases.append((st, attempt, record.handle))
        self._grant_permits()

    def _conclude(self, st: _Step, raw: StepStatus, message: str, retryable: bool) -> None:
        """End a failed attempt as :func:`legato.states.next_status` decides: retried while its
        class has a retry left, else FATALLY_FAILED / TIMED_OUT, with the failure mode applied."""
        sdef = st.sdef
        used, limit = _counter(st, raw)
        status = next_status(raw, used, limit, sdef.failure_mode, retryable)
        if status.retryable:
            if self._ending is not None:  # the instance is ending: the retry would be stopped unborn
                st.record.ended_at = time.time()
                self._set(st, status, message)
                return
            if raw is S.USER_FAILED:
                st.errors += 1
            elif raw is S.PLATFORM_FAILED:
                st.platform += 1
            else:
                st.timeouts += 1
            self._retry(st, status, message, used + 1)
            return
        if status is not raw and raw is not S.TIMEOUT_FAILED:  # say what the status hides
            why = []
            if raw is not S.FATALLY_FAILED:
                left = "declared not retryable" if not retryable else f"no {_RETRY_CLASS[raw]} retry left"
                why.append(f"{raw.value}, {left}: FATALLY_FAILED")
            if status is S.COMPLETED_WITH_ERROR:
                why.append("IGNORE_FAILURE: COMPLETED_WITH_ERROR")
            message = f"{message} ({'; '.join(why)})"
        self._end_step(st, status, message)

    def _retry(self, st: _Step, status: StepStatus, message: str, n: int) -> None:
        """End this attempt ``status`` and schedule the next after the backoff for retry ``n``."""
        st.record.ended_at = time.time()
        self._set(st, status, message)
        policy = st.sdef.retry
        delay = policy.backoff_for(_RETRY_CLASS[status]).delay(n, random.random())
        limit = {S.USER_FAILED: policy.error_retry_limit, S.PLATFORM_FAILED: policy.platform_retry_limit}.get(
            status, policy.timeout_retry_limit)
        self._batch.events[-1].retry = (st.record.ended_at + delay, st.attempt + 1 + limit - n)
        scope = trio.CancelScope()
        self._retrying[st.sdef.id] = scope
        self._nursery.start_soon(self._retry_after, st, delay, scope)

    async def _retry_after(self, st: _Step, delay: float, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(delay / 2)
            _crashpoint("backoff")
            await trio.sleep(delay / 2)
            self._post(("retry", st))

    def _end_step(self, st: _Step, status: StepStatus, message: str = "") -> None:
        """Record the step's final status and, when the DAG continues, its successors' fate.

        A complete step's conditional edges are evaluated first: one that fails makes the step
        itself INTERNALLY_FAILED (MaestroTask.doExecute: evaluateNextConditionParams throws,
        markInternalError), and nothing downstream is created."""
        st.record.ended_at = time.time()
        st.finished = True
        self._finished_steps.append(st)
        edges = None
        if st.conditional and status.complete and status is not S.UNSATISFIED:
            edges = self._edges(st, status)
            if isinstance(edges, str):
                self._set(st, S.INTERNALLY_FAILED, edges)
                self._recontext(st)
                self._failed = True
                return
        self._set(st, status, message)
        if status.complete:
            self._release(st, edges)
            return
        ending = instance_ending(status)
        if ending is I.FAILED:
            self._failed = True
        elif ending is I.TIMED_OUT:
            self._timed_out = True
        # FAIL_IMMEDIATELY applies to FATALLY_FAILED only (MaestroTask.doExecute).
        if status is S.FATALLY_FAILED and st.sdef.failure_mode is FailureMode.FAIL_IMMEDIATELY and self._ending is None:
            self._end(I.FAILED, f"step {st.sdef.id} failed ({status.value}) with FAIL_IMMEDIATELY")

    def _edges(self, st: _Step, status: StepStatus) -> dict[str, bool] | str:
        """The values of ``st``'s conditional edges, as they see the step ended ``status``; or
        the located reason the first of them could not be evaluated."""
        record = st.record
        prior, record.status = record.status, status  # what `steps.<id>.status` reads
        try:
            values: dict[str, bool] = {}
            context = self._edge_context(st)
            for target, cond in st.sdef.successors:
                if cond.constant is None:
                    value = self._edge_value(st, target, cond, context)
                    if isinstance(value, str):
                        return value
                    values[target] = value
            return values
        finally:
            record.status = prior

    def _edge_context(self, st: _Step) -> dict[str, Any]:
        """What ``st``'s edge conditions see: what params see, and the source step's own params as
        bare names, over workflow params of the same name (Maestro's next conditions)."""
        context = self._context()
        if st.params:
            own = context["steps"][to_cel(st.sdef.id)]["params"]
            context = {**context, **{str(name): value for name, value in own.items()}}
        return context

    def _edge_value(self, st: _Step, target: str, cond, context: dict[str, Any] | None = None) -> bool | str:
        """Evaluate the condition of the edge ``st -> target``: a boolean, or why not (located)."""
        if context is None:
            context = self._edge_context(st)
        where = f"{st.sdef.pointer}/transition/successors/{target}"
        try:
            value = cond.program.evaluate(context)
        except (CelError, *_UNCONVERTIBLE) as exc:
            why = exc.located() if isinstance(exc, CelError) else f"a value cannot be converted ({exc})"
            return f"{where}: condition failed: {why}"
        if not isinstance(value, bool):
            return f"{where}: condition gave {value!r}, not a boolean"
        return value

    def _release(self, done: _Step, edges: dict[str, bool] | None = None) -> None:
        """Join-all, satisfied-any: count ``done`` as finished for each successor (worklist, so a
        long run of UNSATISFIED steps does not recurse). ``edges`` are the values of ``done``'s
        conditional edges; without them (a resumed run) they are evaluated again: pure functions
        of durable outputs, they gave these values before. One that fails now (a value an older
        Legato stored) cannot blame its source, whose end is durable: the instance fails, naming
        the edge, and the target is never created."""
        work = [done]
        while work:
            st = work.pop()
            passed = st.record.status is not S.UNSATISFIED
            for target, cond in st.sdef.successors:
                nxt = self.steps[target]
                if passed and not nxt.satisfied:
                    if cond.constant is not None:
                        nxt.satisfied = cond.constant
                    elif edges is not None and st is done:
                        nxt.satisfied = edges[target]
                    else:
                        value = self._edge_value(st, target, cond)
                        if isinstance(value, str):  # the source's end is durable: fail the instance,
                            self._failed = True  # saying where; the target stays NOT_CREATED
                            self._end_message = self._end_message or value
                            continue
                        nxt.satisfied = value
                nxt.remaining -= 1
                if nxt.remaining == 0 and nxt.record is None:  # (a resumed run restores created steps itself)
                    if nxt.satisfied:
                        self._materialize(nxt)
                    elif self._ending is None:
                        nxt.attempt = 1
                        now = time.time()
                        nxt.record = AttemptRecord(self.iid, target, 1, S.NOT_CREATED, self.instance.run_id,
                                                   created_at=now, ended_at=now)
                        self._set(nxt, S.UNSATISFIED, "no incoming condition was true")
                        nxt.finished = True
                        self._finished_steps.append(nxt)
                        work.append(nxt)


# What converting a value for CEL raises when the value is out of CEL's range (an integer beyond
# 64 bits) or too deep: values are checked where they enter, this is the net for older records.
_UNCONVERTIBLE = (ValueError, OverflowError, RecursionError)


def _counter(st: _Step, raw: StepStatus) -> tuple[int, int]:
    """The retries of ``raw``'s class the step has made, and its policy's limit for that class."""
    policy = st.sdef.retry
    if raw is S.USER_FAILED:
        return st.errors, policy.error_retry_limit
    if raw is S.PLATFORM_FAILED:
        return st.platform, policy.platform_retry_limit
    if raw is S.TIMEOUT_FAILED:
        return st.timeouts, policy.timeout_retry_limit
    return 0, 0


def _cel_entry(record: AttemptRecord):
    """What ``steps.<id>`` holds for a finished step, converted for CEL."""
    entry = {
        "status": record.status.value, "params": record.params or {}, "outputs": record.outputs,
        "attempt": record.attempt, "end_time": record.ended_at or 0.0,
    }
    try:
        return to_cel(entry)
    except _UNCONVERTIBLE:
        # Stored before outputs were checked on the way in: leave them out, so that
        # an expression reading them fails (located) instead of the whole instance.
        return to_cel({**entry, "params": {}, "outputs": {}})


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group


def _outputs(outputs: Any, secrets=None) -> dict[str, Any]:
    if not isinstance(outputs, dict):
        return {}
    if secrets is not None:
        return secrets.mask_value(outputs)
    return dict(outputs)


def _bad_outputs(result: StepResult) -> bool:
    """Whether the result's outputs hold a value CEL cannot (an integer beyond 64 bits, nesting
    too deep). If so they are dropped and a DONE result becomes the step's user error, naming the
    key: kept, they would break every later evaluation and every resume of the instance."""
    if not isinstance(result.outputs, dict):
        return False  # not a map: dropped by _outputs
    problem = unconvertible(result.outputs)
    if problem is None:
        return False
    path, reason = problem
    key, _, inner = path.lstrip("/").partition("/")
    message = f"output {key!r}{f' at /{inner}' if inner else ''}: {reason} (the outputs were dropped)"
    if result.outcome is Outcome.DONE:
        result.outcome = Outcome.USER_ERROR
    else:  # failed anyway: keep its outcome and say both
        message = f"{result.message or result.outcome.value}; and {message}"
    result.outputs, result.message = {}, message
    return True


def _internal(step_type: str, exc: BaseException) -> str:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-3))
    return f"step type {step_type!r} raised instead of returning a StepResult (a bug in the plugin):\n{tb}"
