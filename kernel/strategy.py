"""Run strategies: which of a workflow's instances may start (DESIGN §3, Maestro's RunStrategy).

The rules are Maestro's (``RunStrategy.Rule`` and ``MaestroRunStrategyDao``), decided here as pure
functions of a :class:`Queue` — what the store knows of the workflow's other instances — so that
every backend applies the same rules inside its own transaction:

- ``sequential`` (the default), ``strict_sequential``, ``parallel`` and ``serial_latest_only``
  queue: a new instance starts at once only when nothing is queued before it and fewer than the
  workflow's concurrency (1; PARALLEL's ``workflow_concurrency``, default 20) run; otherwise it
  waits, queued, and the queue is served first in, first out as running ones end.
  ``strict_sequential`` also holds the queue while an instance of the workflow ended FAILED and
  has been neither restarted nor unblocked (:func:`unblock`). ``serial_latest_only`` stops every
  queued instance when a new one arrives: only the newest waits; the running one is never stopped.
- ``first_only``: a start while another instance runs or waits ends STOPPED at once.
- ``last_only``: a start stops every queued instance and asks the running one to stop; it runs
  once that one has ended (Maestro's TerminateThenRunJobEvent).

An instance is *started* once any process has taken its lease (the store's generation is past 0),
whether it runs now or waits to be resumed; it holds its slot until it ends. A *queued* instance is
one still CREATED that nobody has taken. The strategy recorded on each instance
(:attr:`legato.model.InstanceRecord.run_strategy`, from its pinned version) decides for it; an
instance recorded without one starts whenever asked, as before strategies were enforced.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import trio

from .model import Event, InstanceRecord

__all__ = [
    "Queue", "Arrival", "slots", "may_start", "waits_because", "on_arrival", "describe",
    "why_waiting", "wait_turn", "stop_running", "unblock", "UNBLOCKED", "RUN_STRATEGY_USER", "FOR_A_WORKER",
]

SEQUENTIAL, STRICT, PARALLEL = "sequential", "strict_sequential", "parallel"
FIRST_ONLY, LAST_ONLY, SERIAL_LATEST_ONLY = "first_only", "last_only", "serial_latest_only"
#: The timeline status of an unblocked failed instance.
UNBLOCKED = "UNBLOCKED"
#: Who stops the instances a run strategy stops (Maestro's RUN_STRATEGY_USER).
RUN_STRATEGY_USER = "legato:run_strategy"
#: How often a foreground start waiting for its turn looks at the store when nothing wakes it.
POLL_EVERY = 1.0


@dataclass(frozen=True, slots=True)
class Queue:
    """What the store knows, in one transaction, of the other instances of a candidate's workflow.

    ``running``: started and not ended (counted up to the concurrency at least), the oldest being
    ``running_id``. ``ahead``: queued before the candidate (every queued one, for a new start),
    counted up to the concurrency at least; ``ahead_id`` the one just before it. ``blocked_by``:
    for ``strict_sequential``, an instance that ended FAILED and was neither restarted nor unblocked."""

    running: int = 0
    running_id: str | None = None
    ahead: int = 0
    ahead_id: str | None = None
    blocked_by: str | None = None


@dataclass(frozen=True, slots=True)
class Arrival:
    """What a new start does (:func:`on_arrival`): ``start`` now (taken by its creator) or wait
    queued; ``stopped``, when not empty, is why it ends STOPPED at once instead (FIRST_ONLY);
    ``stop_queued``, when not empty, is why every queued instance of the workflow ends STOPPED in
    the same transaction; ``stop_running``: the running ones are to be stopped (LAST_ONLY)."""

    start: bool
    stopped: str = ""
    stop_queued: str = ""
    stop_running: bool = False


def limit(rule: str, concurrency: int) -> int:
    """How many instances ``rule`` lets run at once."""
    return max(1, concurrency) if rule == PARALLEL else 1


def slots(rule: str, concurrency: int, queue: Queue) -> int:
    """How many queued instances, first in first, may start now."""
    if not rule:
        return 1 << 30
    if rule == STRICT and queue.blocked_by:
        return 0
    return max(0, limit(rule, concurrency) - queue.running)


def may_start(rule: str, concurrency: int, queue: Queue) -> bool:
    """Whether a queued instance with ``queue.ahead`` queued before it may start now."""
    return queue.ahead < slots(rule, concurrency, queue)


def describe(rule: str, concurrency: int = 1) -> str:
    """The rule for people: ``SEQUENTIAL``, ``PARALLEL (3 at once)``."""
    if not rule:
        return "no run strategy"
    name = rule.upper()
    return f"{name} ({limit(rule, concurrency)} at once)" if rule == PARALLEL else name


def waits_because(rule: str, concurrency: int, queue: Queue) -> str:
    """Why a queued instance may not start now ("" when it may): what ``legato status`` shows."""
    if may_start(rule, concurrency, queue):
        return ""
    name = describe(rule, concurrency)
    if rule == STRICT and queue.blocked_by:
        return (f"blocked by failed instance {queue.blocked_by} under {name}: `legato restart "
                f"{queue.blocked_by}` or `legato unblock WORKFLOW` lets the queue go on")
    if rule == LAST_ONLY and queue.running:
        return f"waiting for instance {queue.running_id} to stop under {name}: the newest start runs"
    parts = []
    if queue.running:
        parts.append(f"instance {queue.running_id} runs" if queue.running == 1
                     else f"{queue.running} instances run (the oldest {queue.running_id})")
    if queue.ahead:
        parts.append(f"queued behind instance {queue.ahead_id}" if queue.ahead == 1
                     else f"queued behind {queue.ahead} instances (the last {queue.ahead_id})")
    return f"{'; '.join(parts) or 'waiting'} under {name}"


def on_arrival(rule: str, concurrency: int, queue: Queue, instance_id: str) -> Arrival:
    """What a new start of ``instance_id`` does, given every other instance of its workflow
    (``queue.ahead``: all the queued ones). Maestro's ``MaestroRunStrategyDao.startWithRunStrategy``."""
    if rule == FIRST_ONLY and (queue.running or queue.ahead):
        other = queue.running_id or queue.ahead_id
        return Arrival(False, stopped=f"With FIRST_ONLY run strategy, this run is stopped due to a running one "
                                      f"[{other}].")
    if rule == LAST_ONLY:
        stop = f"With LAST_ONLY run strategy, this run is stopped due to starting a new run [{instance_id}]."
        return Arrival(queue.running == 0, stop_queued=stop if queue.ahead else "",
                       stop_running=queue.running > 0)
    if rule == SERIAL_LATEST_ONLY:
        stop = (f"With SERIAL_LATEST_ONLY run strategy, this run is stopped because new instance "
                f"{instance_id} arrived.")
        return Arrival(queue.running == 0, stop_queued=stop if queue.ahead else "")
    return Arrival(may_start(rule, concurrency, queue))


def queue_limit(record: InstanceRecord) -> int:
    """How many running (and queued-ahead) instances a store needs to count for ``record``."""
    return limit(record.run_strategy, record.workflow_concurrency) + 1


# -- waiting in the foreground ------------------------------------------------------------------


#: What a queued instance that its run strategy lets start waits for.
FOR_A_WORKER = "waiting for a worker (`legato worker`, or `legato resume ID`)"


async def why_waiting(storage, record: InstanceRecord) -> str:
    """Why a queued instance does not start now under its run strategy, read from the store; ""
    when it may (or is not queued)."""
    if not record.queued or not record.run_strategy:
        return ""
    return waits_because(record.run_strategy, record.workflow_concurrency,
                         await storage.strategy_queue(record.instance_id))


async def wait_turn(engine, instance: InstanceRecord, say=None) -> tuple[InstanceRecord, bool]:
    """Wait until the queued ``instance`` may start and take it for ``engine`` (True), or until
    it has ended or another process has taken it (False, with its latest record). ``say`` gets
    each new reason it waits. Woken by the store when a slot frees; polls as a fallback."""
    storage, iid = engine.storage, instance.instance_id
    wakeups = storage.wakeups()
    said = ""
    with wakeups.listen() as listener:
        while True:
            generation = await storage.acquire_lease(iid, engine.owner, engine.lease_ttl)
            if generation is not None:
                engine.fresh_leases[iid] = trio.current_time()
                return (await storage.get_instance(iid)) or instance, True
            record = await storage.get_instance(iid)
            if record is None or record.status.terminal or not record.queued:
                return record or instance, False
            why = waits_because(record.run_strategy, record.workflow_concurrency, await storage.strategy_queue(iid))
            if why and why != said and say is not None:
                say(why)
            said = why or said
            await listener.wait(POLL_EVERY)


async def stop_running(engine, workflow_id: str, newer: InstanceRecord) -> list[str]:
    """LAST_ONLY: ask every started, unfinished instance of ``workflow_id`` older than ``newer`` to
    stop (Maestro's TerminateThenRunJobEvent). One this engine runs stops at once; another is asked
    through the actions of :mod:`legato.actions` where they are available. Returns their ids."""
    storage = engine.storage
    asked = []
    for record in await storage.list_instances(workflow_id, limit=100):
        if record.instance_id == newer.instance_id or record.status.terminal or record.queued:
            continue
        reason = f"With LAST_ONLY run strategy, this run is stopped due to starting a new run [{newer.instance_id}]."
        run = engine.runs.get(record.instance_id)
        if run is not None:
            run.stop(reason)
        else:
            try:
                from . import actions  # the actions of another process: applied by the instance's owner
            except ImportError:
                continue
            try:
                await actions.request_action(storage, record.instance_id, "stop", by=RUN_STRATEGY_USER)
            except Exception:  # noqa: BLE001 - it ended meanwhile, or cannot be stopped: it ends on its own
                continue
        asked.append(record.instance_id)
    return asked


# -- unblocking -----------------------------------------------------------------------------------


async def unblock(storage, workflow_id: str, *, by: str) -> list[str]:
    """Let a STRICT_SEQUENTIAL queue go on past its failed instances (Maestro's WorkflowActionHandler.
    unblock): every instance of ``workflow_id`` that ended FAILED and holds the queue is marked
    unblocked, with an ``UNBLOCKED`` event naming ``by`` in its timeline. Returns their ids (none:
    nothing held the queue). A run of such an instance that fails later blocks again. Raises
    :class:`legato.storage.VersionNotFound` for a workflow the store does not hold."""
    await storage.require_definition(workflow_id, "latest")
    unblocked = await storage.unblock_workflow(workflow_id, by, time.time())
    if unblocked:
        storage.wakeups().notify()
    return unblocked


def unblocked_event(instance_id: str, workflow_id: str, by: str, ts: float) -> Event:
    """The timeline event of an unblocked instance."""
    return Event(ts, instance_id, None, 0, UNBLOCKED,
                 f"unblocked by {by}: the STRICT_SEQUENTIAL queue of {workflow_id} goes on past this failed run")


def stopped_event(instance_id: str, message: str, ts: float, status: str = "STOPPED") -> Event:
    """The timeline event of an instance ended before it started (a run strategy stopped it, or
    :meth:`legato.storage.Storage.end_queued`)."""
    return Event(ts, instance_id, None, 0, status, message)
