"""The trigger host: runs the triggers of the store's active workflow versions (DESIGN §6
TriggerType; the contract is :mod:`legato.triggers`), under ``legato serve`` and ``legato worker``.

One task per (workflow, trigger) of every active version whose definition has triggers, each in
its own cancel scope. Every ``poll`` seconds (and when :meth:`TriggerHost.wake` is called) the
host reads which versions are active (:meth:`Storage.list_active_versions
<legato.storage.Storage.list_active_versions>`: no documents): a workflow whose active version
changed has its trigger tasks cancelled and the new version's started (an unchanged trigger keeps
its checkpoint: its key is the same); a workflow with no active version loses them.

Triggers start instances queued, for any worker on the store to run. Two hosts on one store both
fire each tick; the store's request-id dedup starts one instance. A trigger whose ``run`` raises
is logged and run again after ``retry`` seconds (its checkpoint makes that safe). Cancelling
:meth:`TriggerHost.run` (or :meth:`TriggerHost.stop`) stops every trigger.
"""

from __future__ import annotations

import traceback
from typing import Any, Callable

import trio

from .definition import DefinitionError
from .storage import StorageError
from .triggers import WORKFLOW_FIELDS, TriggerClock, TriggerContext, disabled_fields

__all__ = ["TriggerHost", "RETRY_AFTER"]

#: Seconds before a trigger whose ``run`` raised runs again.
RETRY_AFTER = 5.0


class _Started:
    """The ``task_status`` a trigger reports to: counts the triggers that are watching."""

    __slots__ = ("host", "done")

    def __init__(self, host: "TriggerHost") -> None:
        self.host, self.done = host, False

    def started(self, value: Any = None) -> None:
        if not self.done:
            self.done = True
            self.host.counts["watching"] += 1
            self.host._changed()


class TriggerHost:
    """Runs the triggers of the active versions in ``engine``'s store until cancelled or
    :meth:`stop`. ``clock``: the :class:`legato.triggers.TriggerClock` the triggers read
    (default: epoch time on trio's clock). ``log`` receives one line per thing worth saying."""

    def __init__(self, engine, *, poll: float = 1.0, retry: float = RETRY_AFTER,
                 clock: TriggerClock | None = None, log: Callable[[str], None] | None = None) -> None:
        self.engine = engine
        self.storage = engine.storage
        self.poll = poll
        self.retry = retry
        self.clock = clock
        self.log = log or (lambda line: None)
        self.counts = {"watching": 0, "started": 0, "repeated": 0, "failed": 0}
        #: workflow id -> (version, [(type name, trigger key, cancel scope)])
        self.running: dict[str, tuple[int, list[tuple[str, str, trio.CancelScope]]]] = {}
        self._skipped: set[tuple[str, int]] = set()  # versions that do not load here (said once)
        self._wake = trio.Event()
        self._progress = trio.Event()
        self._scope: trio.CancelScope | None = None

    def statistics(self) -> dict[str, int]:
        """Triggers watching now, instances they started, firings that found their instance
        already started (another host, a restart), and trigger failures."""
        return {**self.counts, "triggers": sum(len(tasks) for _, tasks in self.running.values())}

    def wake(self) -> None:
        """Look at the active versions now rather than at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        """Stop every trigger now; :meth:`run` returns."""
        if self._scope is not None:
            self._scope.cancel()

    async def wait_progress(self) -> None:
        """Return at the next change of :meth:`statistics` (for tests and benchmarks)."""
        await self._progress.wait()

    def _changed(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Host the triggers until cancelled; ``task_status.started(self)`` once the first look
        at the store has started the triggers it found (they may still be reading their checkpoints)."""
        if self.clock is None:
            self.clock = TriggerClock()
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:
                await self._refresh(nursery)
                task_status.started(self)
                while True:
                    with trio.move_on_after(self.poll):
                        await self._wake.wait()
                    self._wake = trio.Event()
                    await self._refresh(nursery)

    async def _refresh(self, nursery: trio.Nursery) -> None:
        try:
            active = await self.storage.list_active_versions()
        except StorageError as exc:
            self.log(f"cannot list the active versions: {exc}")
            return
        for wid in [w for w, (version, _) in self.running.items() if active.get(w) != version]:
            version, tasks = self.running.pop(wid)
            for _, _, scope in tasks:
                scope.cancel()
            if tasks:
                self.log(f"{wid} v{version}: {len(tasks)} trigger(s) stopped (v{active[wid]} is active now)"
                         if wid in active else f"{wid} v{version}: {len(tasks)} trigger(s) stopped (no active version)")
        for wid, version in active.items():
            if wid in self.running or (wid, version) in self._skipped:
                continue
            try:
                tasks = await self._start_version(nursery, wid, version)
            except StorageError as exc:
                self.log(f"{wid} v{version}: cannot read it: {exc}")
                continue
            if tasks is not None:
                self.running[wid] = (version, tasks)
        self._changed()

    async def _start_version(self, nursery: trio.Nursery, wid: str, version: int):
        stored = await self.storage.get_definition(wid, version)
        if stored is None:
            return None  # activated elsewhere meanwhile: the next look finds the new one
        workflow = stored.document.get("workflow") if isinstance(stored.document, dict) else None
        if not isinstance(workflow, dict) or not any(workflow.get(f) for f in WORKFLOW_FIELDS):
            return []  # most workflows have no triggers: not even loaded
        try:
            definition = self.engine.load(stored.document)
        except DefinitionError as exc:
            self._skipped.add((wid, version))
            why = "; ".join(str(p) for p in exc.problems[:3])
            self.log(f"{wid} v{version}: its triggers do not run here: the definition does not load ({why})")
            return None
        definition.version = version
        tasks = []
        off = disabled_fields(stored.document)
        for type_name, defs in definition.triggers.items():
            trigger_type = self.engine.plugins.triggers.types[type_name]()
            if trigger_type.field in off:
                self.log(f"{wid} v{version}: {len(defs)} {type_name} trigger(s) not run: the properties turn "
                         f"{trigger_type.field} off")
                continue
            for tdef in defs:
                ctx = TriggerContext(workflow_id=wid, version=version, trigger=tdef, triggers=defs,
                                     definition=definition, storage=self.storage, type_name=type_name,
                                     start=self._start, clock=self.clock, log=self.log)
                scope = trio.CancelScope()
                nursery.start_soon(self._drive, scope, trigger_type, ctx)
                tasks.append((type_name, tdef.key, scope))
        if tasks:
            self.log(f"{wid} v{version}: {len(tasks)} trigger(s) watching")
        return tasks

    async def _drive(self, scope: trio.CancelScope, trigger_type, ctx: TriggerContext) -> None:
        with scope:
            while True:
                status = _Started(self)
                try:
                    await trigger_type.run(ctx, task_status=status)
                    return  # a trigger that has nothing more to watch
                except Exception as exc:  # a bug in the plugin, or the store failing: say so, run it again
                    self.counts["failed"] += 1
                    ctx.log("failed, running it again in {:g}s: ".format(self.retry)
                            + "".join(traceback.format_exception_only(exc)).strip()
                            + ("" if isinstance(exc, StorageError) else "\n" + "".join(traceback.format_exception(exc))))
                finally:
                    if status.done:
                        self.counts["watching"] -= 1
                    self._changed()
                await trio.sleep(self.retry)

    async def _start(self, ctx: TriggerContext, request_id: str, params, run_ts: float, initiator: str):
        """What :meth:`TriggerContext.start` calls: the idempotent start, queued for a worker."""
        instance, created = await self.engine.start(ctx.definition, params, request_id=request_id,
                                                    initiator=initiator, queued=True, run_ts=run_ts)
        self.counts["started" if created else "repeated"] += 1
        self._changed()
        if created:
            ctx.log(f"started instance {instance.instance_id} ({request_id})")
        return instance, created
