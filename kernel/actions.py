"""Actions on instances and their steps, asked from any process and applied by the one that runs the
instance (DESIGN §3 actions, §8): instance stop, kill and restart; step stop, kill, skip and restart.

- :func:`request_action` validates a request (it raises :class:`ActionRefused` saying why and what
  to do), records it in the store (:meth:`Storage.request_action
  <legato.storage.Storage.request_action>`) and wakes the processes on the store. An instance that
  nobody runs is acted on at once where that is safe: a queued instance stopped or killed ends
  STOPPED / FAILED; a restart makes the instance's next run (CREATED) for a worker, or for the
  foreground process that asked (``engine``), to run.
- :class:`ActionApplier`, one task per process that runs instances (``legato run``/``start``/
  ``resume``/``restart`` in the foreground, ``legato worker``), wakes on the store's wake-ups (and
  polls as a fallback at the lease heartbeat's pace), reads the pending actions of the engine's
  runs in one query and posts each to its :class:`~legato.instance.InstanceRun`: nothing is read
  per step or per tick.
- :class:`InstanceActions` (a mixin of the instance run) applies them in its scheduling loop, as
  Maestro does (``Actions.StepInstanceAction``, ``StepInstanceActionHandler``): an instance stop
  ends it STOPPED, a kill FAILED; a step stop ends the step STOPPED, a kill FATALLY_FAILED (its
  failure mode applies), a skip SKIPPED (the DAG goes on as if it completed); a step restart makes
  a new attempt of a step of a running instance that ended without completing. Each application
  is an ``ACTION`` event in the instance's timeline (who, via what, when) and marks the action
  applied in the same transaction (:attr:`legato.model.Batch.actions`).
- :func:`wait_applied` waits, woken by the store, until an action is applied.

A restart's ``params``: ``mode`` (``RESTART_FROM_INCOMPLETE``, the default; ``RESTART_FROM_BEGINNING``;
``RESTART_FROM_SPECIFIC`` with ``step_id``, Maestro's ``RunPolicy``) decide which steps run again
(:class:`RestartPlan`); everything an earlier run did is kept.
"""

from __future__ import annotations

import getpass
import os
import time
from dataclasses import dataclass
from typing import Any

import trio

from .model import ActionRecord, AttemptRecord, Batch, Event, InstanceRecord
from .states import InstanceStatus, StepStatus, next_status
from .storage import StorageError

__all__ = [
    "ActionRefused", "ActionInvalid", "ActionRecord", "INSTANCE_VERBS", "STEP_VERBS", "RESTART_MODES",
    "request_action", "wait_applied", "requester", "ActionApplier", "InstanceActions", "RestartPlan",
    "applied", "refused",
]

I = InstanceStatus  # noqa: E741
S = StepStatus

INSTANCE_VERBS = ("stop", "kill", "restart")
STEP_VERBS = ("stop", "kill", "skip", "restart")
#: Maestro's RunPolicy values a restart takes (RESTART_FROM_INCOMPLETE is its default restart policy).
RESTART_MODES = ("RESTART_FROM_INCOMPLETE", "RESTART_FROM_BEGINNING", "RESTART_FROM_SPECIFIC")
#: Seconds a foreground run goes before it listens for actions (then reads once what was asked).
FOREGROUND_DELAY = 0.05
#: Seconds between looks at the store while waiting for an action, when nothing wakes the waiter.
WAIT_POLL = 0.5
#: The least time (seconds) between two reads of pending actions: a burst of wake-ups (every queued
#: instance wakes the store's listeners too) costs one read.
COALESCE = 0.02
ACTION = "ACTION"  # the status of an action's event in the timeline


class ActionRefused(StorageError):
    """An action that cannot be applied now (an ended instance, a running one to restart, a step
    in a state the action does not apply to): the message says why and what to do."""


class ActionInvalid(ActionRefused):
    """An action that names nothing usable (an unknown verb, step or restart mode): bad input."""


def applied(text: str) -> str:
    return f"applied: {text}"


def refused(text: str) -> str:
    return f"refused: {text}"


def requester(via: str = "cli") -> str:
    """Who asks, for the timeline: ``LEGATO_USER`` (else the OS user) and the channel, e.g. ``alice via cli``."""
    user = os.environ.get("LEGATO_USER", "").strip()
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no user name for this uid (a container)
            user = f"uid {os.getuid()}"
    return f"{user[:100]} via {via}"


# -- requesting ------------------------------------------------------------------------------------

async def request_action(storage, instance_id: str, verb: str, *, step_id: str | None = None, by: str,
                         params: dict | None = None, engine=None, queue: bool = False) -> ActionRecord:
    """Ask for ``verb`` on the instance (or its step ``step_id``) on behalf of ``by``; return the
    recorded action (already applied when nobody runs the instance and it could be applied here).

    Raises :class:`ActionInvalid` for an unknown instance, verb, step or restart mode, and
    :class:`ActionRefused` for an action that does not apply now (stop of an ended instance,
    restart of a running one…). A restart (``params``: ``mode``, ``step_id`` for
    RESTART_FROM_SPECIFIC, ``run_params`` / ``raw_params`` for new workflow param values, which
    need the ``engine`` to check them) makes the instance's next run at once: leased to
    ``engine`` (a foreground ``legato restart`` that runs it itself with ``engine.resume``), or,
    without one or with ``queue``, queued for a worker. A step restart of an ended instance is a
    restart from that step (Maestro's)."""
    params = dict(params or {})
    instance = await storage.get_instance(instance_id)
    if instance is None:
        raise ActionInvalid(f"no instance {instance_id!r} in {storage.url or 'the store'}: `legato list` shows "
                            "the instances there")
    iid, status = instance.instance_id, instance.status
    head = f"instance {iid} ({instance.workflow_id})"
    if step_id is not None:
        if verb not in STEP_VERBS:
            raise ActionInvalid(f"unknown step action {verb!r}: the step actions are {', '.join(STEP_VERBS)}")
        document = await _document(storage, instance)
        ids = _step_ids(document)
        if step_id not in ids:
            raise ActionInvalid(f"{head} has no step {step_id!r} (its steps: {', '.join(ids[:20]) or 'none'}); "
                                "step actions apply to the workflow's top-level steps")
        if status.terminal and verb == "restart":  # StepInstanceActionHandler.restart: a new run from it
            verb, params = "restart", {**params, "mode": "RESTART_FROM_SPECIFIC", "step_id": step_id}
            step_id = None
        elif status.terminal:
            raise ActionRefused(f"{head} already ended {status.value}: {verb} applies to a step of a running "
                                f"instance; `legato restart {iid} --from-step {step_id}` runs it again")
        elif status is I.CREATED:
            raise ActionRefused(f"{head} has not started yet: its step {step_id!r} is created once it runs; "
                                f"`legato {verb if verb in INSTANCE_VERBS else 'stop'} {iid}` acts on the instance")
    elif verb not in INSTANCE_VERBS:
        raise ActionInvalid(f"unknown instance action {verb!r}: the instance actions are {', '.join(INSTANCE_VERBS)}"
                            f"{'; skip is a step action: legato step skip INSTANCE STEP' if verb == 'skip' else ''}")
    if step_id is None and verb in ("stop", "kill") and status.terminal:
        raise ActionRefused(f"{head} already ended {status.value}: nothing to {verb}"
                            + ("" if status is I.SUCCEEDED else f"; `legato restart {iid}` runs it again"))
    if step_id is None and verb == "restart":
        given = {k: params.pop(k) for k in ("run_params", "raw_params") if params.get(k)}
        params = _check_restart(head, instance, params, await _document(storage, instance))
        if given:
            params["workflow_params"] = await _restart_values(engine, instance, given)
    action = await storage.request_action(iid, verb, step_id=step_id, params=params, requested_by=by)
    if step_id is None and verb == "restart":
        await _new_run(storage, instance, action, None if queue else engine)
    elif step_id is None and status is I.CREATED:
        await _stop_queued(storage, action, engine)
    storage.wakeups().notify()
    if action.applied_at is None:
        action = next((a for a in await storage.list_actions(iid) if a.id == action.id), action)
    return action


async def _restart_values(engine, instance: InstanceRecord, given: dict) -> dict:
    """The workflow params a restart changes (``run_params``: values or full forms;
    ``raw_params``: ``name=text`` as ``-p`` gives them), evaluated and checked as Maestro's
    ParamsMergeHelper checks a restart's: only MUTABLE and MUTABLE_ON_START_RESTART params may
    change. Needs the ``engine`` (its CEL compiler, the pinned definition)."""
    from .cel import to_cel
    from .params import ParamError, ValueBudget, evaluate_params, merge_start_params, needs_cel

    if engine is None:
        raise ActionInvalid("new params on a restart are checked against the definition: pass the engine")
    definition = await engine._pinned(instance)
    budget = ValueBudget()
    try:
        specs = merge_start_params(definition.params, given.get("run_params"), given.get("raw_params"),
                                   who="restart", budget=budget)
        names = [*(given.get("run_params") or {}), *(given.get("raw_params") or {})]
        changed = {name: specs[name] for name in names}
        context = None
        if needs_cel(changed.values()):
            import datetime

            context = {"workflow": to_cel({
                "id": instance.workflow_id, "version": instance.version, "instance_id": instance.instance_id,
                "run_id": instance.run_id + 1, "initiator": instance.initiator,
                "run_ts": datetime.datetime.fromtimestamp(instance.run_ts if instance.run_ts is not None else instance.created_at, datetime.timezone.utc)})}
        return evaluate_params(changed, engine.compiler, scope=instance.params, context=context, budget=budget)
    except ParamError as exc:
        raise ActionInvalid(f"/workflow/params{exc.pointer}: {exc.message}") from None


def _check_restart(head: str, instance: InstanceRecord, params: dict, document: dict) -> dict:
    iid, status = instance.instance_id, instance.status
    mode = str(params.get("mode") or "RESTART_FROM_INCOMPLETE").upper()
    if mode not in RESTART_MODES:
        raise ActionInvalid(f"unknown restart mode {params.get('mode')!r}: one of {', '.join(RESTART_MODES)}")
    if not status.terminal:
        raise ActionRefused(f"{head} has not ended ({status.value}): a restart runs an ended instance again; "
                            f"`legato stop {iid}` first, or `legato resume {iid}` if its worker is gone")
    step = params.get("step_id")
    if mode == "RESTART_FROM_SPECIFIC":
        ids = _step_ids(document)
        if step not in ids:
            raise ActionInvalid(f"{head} has no step {step!r} to restart from (its steps: "
                                f"{', '.join(ids[:20]) or 'none'})")
    elif step is not None:
        raise ActionInvalid(f"a step to restart from goes with RESTART_FROM_SPECIFIC, not {mode}")
    if mode == "RESTART_FROM_INCOMPLETE" and status is I.SUCCEEDED:  # the mode asked for names nothing
        raise ActionInvalid(f"{head} ended SUCCEEDED: it has no incomplete step to run again; restart it "
                            f"--from-beginning, or --from-step STEP")
    if mode != "RESTART_FROM_INCOMPLETE":
        loops = [sid for sid, kind in _step_kinds(document).items() if kind != "step"
                 and (mode == "RESTART_FROM_BEGINNING" or sid in _downstream(document, step))]
        if loops:
            raise ActionRefused(f"{head}: running {', '.join(loops[:5])} (foreach/while/subworkflow) again from "
                                f"their beginning is not supported yet; restart from the incomplete steps "
                                f"(`legato restart {iid}`)")
    unknown = sorted(set(params) - {"mode", "step_id"})
    if unknown:
        raise ActionInvalid(f"a restart takes mode, step_id, run_params and raw_params, not {', '.join(unknown)}")
    out = {"mode": mode}
    if step is not None:
        out["step_id"] = step
    return out


async def _document(storage, instance: InstanceRecord) -> dict:
    version = await storage.get_definition(instance.workflow_id, instance.version)
    if version is None:
        raise ActionRefused(f"definition {instance.workflow_id} v{instance.version} of instance "
                            f"{instance.instance_id} is missing from the store")
    return version.document


def _step_kinds(document: dict) -> dict[str, str]:
    """The top-level steps of a stored definition document: id -> step / foreach / while / subworkflow."""
    out: dict[str, str] = {}
    workflow = document.get("workflow") if isinstance(document, dict) else None
    for wrapper in (workflow or {}).get("steps") or []:
        if isinstance(wrapper, dict) and len(wrapper) == 1:
            (kind, body), = wrapper.items()
            if isinstance(body, dict) and isinstance(body.get("id"), str):
                out[body["id"]] = "subworkflow" if body.get("type") == "subworkflow" else kind
    return out


def _step_ids(document: dict) -> list[str]:
    return list(_step_kinds(document))


def _successors(document: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for wrapper in (document.get("workflow") or {}).get("steps") or []:
        (_, body), = wrapper.items()
        succ = ((body.get("transition") or {}).get("successors")) or []
        out[body["id"]] = list(succ) if isinstance(succ, (list, dict)) else []
    return out


def _downstream(document: dict, step: str | None) -> set[str]:
    """``step`` and every step after it in the top-level DAG."""
    succ = _successors(document)
    seen, todo = set(), [step]
    while todo:
        sid = todo.pop()
        if sid in seen or sid is None:
            continue
        seen.add(sid)
        todo.extend(succ.get(sid, []))
    return seen


def _owner(engine) -> tuple[str, float]:
    if engine is not None:
        return engine.owner, engine.lease_ttl
    import socket
    import uuid

    return f"{socket.gethostname()}:{os.getpid()}:action-{uuid.uuid4().hex[:6]}", 30.0


async def _new_run(storage, instance: InstanceRecord, action: ActionRecord, engine) -> None:
    """The restart's next run of the instance, CREATED: leased to ``engine`` (which runs it next),
    else released for a worker to claim. Refused (and the action marked so) when a live process
    holds the instance or it is no longer ended."""
    iid = instance.instance_id
    owner, ttl = _owner(engine)
    generation = await storage.acquire_lease(iid, owner, ttl)
    if generation is None:
        lease = await storage.get_lease(iid)
        holder = lease.describe() if lease else "another process"
        why = f"instance {iid} is still held by {holder}; try again once it lets go"
        await storage.mark_action_applied(action.id, refused(why))
        raise ActionRefused(why)
    keep = False
    try:
        current = await storage.get_instance(iid)  # read under the lease: nobody changes it now
        if current is None or not current.status.terminal:
            state = current.status.value if current else "gone"
            why = f"instance {iid} is {state} now: a restart runs an ended instance"
            await storage.mark_action_applied(action.id, refused(why))
            raise ActionRefused(why)
        mode = action.params.get("mode", "RESTART_FROM_INCOMPLETE")
        current.run_id += 1
        current.params = {**current.params, **action.params.get("workflow_params", {})}
        current.status = I.CREATED
        current.started_at = current.ended_at = None
        current.message = ""
        now = time.time()
        what = _restart_words(action.params)
        events = [Event(now, iid, None, 0, ACTION, f"restart ({mode}) requested by {action.requested_by} "
                                                    f"[action {action.id}]"),
                  Event(now, iid, None, 0, I.CREATED.value, f"run {current.run_id}: {what}, requested by "
                                                            f"{action.requested_by}")]
        await storage.commit(Batch(iid, generation, instance=current, events=events))
        keep = engine is not None
    finally:
        if not keep:
            await storage.release_lease(iid, owner)


def _restart_words(params: dict) -> str:
    mode = params.get("mode", "RESTART_FROM_INCOMPLETE")
    if mode == "RESTART_FROM_BEGINNING":
        return "restart from the beginning"
    if mode == "RESTART_FROM_SPECIFIC":
        return f"restart from step {params.get('step_id')}"
    return "restart from the incomplete steps"


async def _stop_queued(storage, action: ActionRecord, engine) -> None:
    """Stop or kill a queued instance nobody runs: take its lease, end it, let go; one its run
    strategy keeps waiting (no lease is given) ends through :meth:`Storage.end_queued
    <legato.storage.Storage.end_queued>`. Left pending (for the process that runs it) when a live
    one holds it."""
    iid = action.instance_id
    owner, ttl = _owner(engine)
    status = I.STOPPED if action.verb == "stop" else I.FAILED
    reason = f"{'stopped' if action.verb == 'stop' else 'killed'} by {action.requested_by} before it started"
    generation = await storage.acquire_lease(iid, owner, ttl)
    if generation is None:
        # Refused: a worker claimed it meanwhile (it applies the action), or its run strategy
        # makes it wait its turn (nobody holds it: it ends here, in the store's one transaction).
        outcome = applied(f"instance {status.value} before it started")
        ended = await storage.end_queued(iid, status, _action_event(action, None, 0, outcome).message)
        if ended is not None:
            await storage.mark_action_applied(action.id, outcome)
            action.applied_at, action.outcome = time.time(), outcome
        return
    try:
        current = await storage.get_instance(iid)
        if current is None or current.status is not I.CREATED:
            return  # it started meanwhile (and the lease was free: its runner died): whoever resumes it applies it
        now = time.time()
        current.status, current.ended_at, current.message = status, now, reason
        outcome = applied(f"instance {status.value} before it started")
        batch = Batch(iid, generation, instance=current,
                      events=[_action_event(action, None, 0, outcome), Event(now, iid, None, 0, status.value, reason)])
        batch.actions.append((action.id, outcome))
        await storage.commit(batch)
        action.applied_at, action.outcome = now, outcome
    finally:
        await storage.release_lease(iid, owner)


def _action_event(action: ActionRecord, step_id: str | None, attempt: int, outcome: str) -> Event:
    what = action.verb
    if action.verb == "restart" and action.step_id is None:
        what += f" ({_restart_words(action.params)})"
    return Event(time.time(), action.instance_id, step_id, attempt, ACTION,
                 f"{what} requested by {action.requested_by} at {_iso(action.requested_at)} "
                 f"[action {action.id}]: {outcome}")


def _iso(ts: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="milliseconds")


# -- waiting ---------------------------------------------------------------------------------------

async def wait_applied(storage, action_id: int, instance_id: str) -> ActionRecord:
    """The action once applied (its ``outcome`` says how: ``applied: …`` or ``refused: …``). Woken by
    the store when the process that runs the instance applies it; polls every WAIT_POLL seconds
    as a fallback. An action left pending on an instance that ended and that nobody holds is
    marked refused here (it can no longer be applied)."""
    with storage.wakeups().listen() as listener:
        while True:
            found = next((a for a in await storage.list_actions(instance_id) if a.id == action_id), None)
            if found is None:
                raise ActionInvalid(f"no action {action_id} of instance {instance_id}")
            if found.applied_at is not None:
                return found
            if not (found.verb == "restart" and found.step_id is None):
                instance = await storage.get_instance(instance_id)
                if instance is not None and instance.status.terminal:
                    lease = await storage.get_lease(instance_id)
                    if lease is None or not lease.live:
                        await storage.mark_action_applied(found.id, refused(
                            f"instance {instance_id} ended {instance.status.value} before the action was applied"))
                        continue
            await listener.wait(WAIT_POLL)


# -- applying: the process that runs instances ----------------------------------------------------

class ActionApplier:
    """The task that hands an engine's runs their pending actions (one per process that runs
    instances). ``async with trio.open_nursery() as n: await n.start(ActionApplier(engine).run)``.
    With ``delay`` (a foreground run), it starts listening that many seconds later."""

    def __init__(self, engine, *, delay: float = 0.0) -> None:
        self.engine = engine
        self.delay = delay
        self.wake = trio.Event()
        self.posted: set[int] = set()
        #: Instances with actions pending whose run has not started here yet (claimed, starting):
        #: the run pokes the applier when it starts (InstanceRun checks this set, nothing more).
        self.waiting: set[str] = set()

    def poke(self) -> None:
        """Look at the store now (a run was resumed: actions may have waited for it)."""
        self.wake.set()

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        engine, storage = self.engine, self.engine.storage
        wakeups = storage.wakeups()
        # The lease heartbeat's pace as the fallback; a store that wakes nobody is looked at each second.
        every = engine.lease_ttl / 3 if wakeups.notifies else min(engine.lease_ttl / 3, 1.0)
        engine.applier = self
        try:
            if self.delay:
                # Listening (a named pipe on SQLite) waits until the run has started its first
                # steps, then one read finds what was asked meanwhile: a run shorter than that
                # pays nothing for being stoppable.
                await trio.sleep(self.delay)
                self.wake.set()
            with wakeups.listen() as listener:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._forward, listener)
                    task_status.started(self)
                    while True:
                        with trio.move_on_after(every):
                            await self.wake.wait()
                        self.wake = trio.Event()
                        await self.apply_pending()
                        await trio.sleep(COALESCE)
        finally:
            if engine.applier is self:
                engine.applier = None

    async def _forward(self, listener) -> None:
        while True:
            if await listener.wait(3600.0):
                self.wake.set()

    async def apply_pending(self) -> None:
        engine = self.engine
        runs = engine.runs
        ids = list(runs) + [i for i in engine.fresh_leases if i not in runs]
        if not ids:
            return
        try:
            pending = await engine.storage.pending_actions(ids)
        except StorageError:
            return  # looked at again at the next wake-up or poll
        self.posted &= {a.id for a in pending}
        self.waiting = set()
        for action in pending:
            if action.id in self.posted or (action.verb == "restart" and action.step_id is None):
                continue  # posted already; a restart is the new run's to mark
            run = runs.get(action.instance_id)
            if run is None or run.nursery is None:
                self.waiting.add(action.instance_id)  # claimed, not running yet: it pokes us when it is
                continue
            self.posted.add(action.id)
            run.post(("action", action))


@dataclass(slots=True)
class RestartPlan:
    """Which steps a restarted run runs again: ``mode`` (Maestro's RunPolicy) and, for
    RESTART_FROM_SPECIFIC, ``step_id``; ``action`` is the restart action the run marks applied."""

    mode: str = "RESTART_FROM_INCOMPLETE"
    step_id: str | None = None
    action: ActionRecord | None = None

    @classmethod
    async def of(cls, storage, instance: InstanceRecord) -> "RestartPlan":
        """The plan of the instance's current run (a later run): from its latest restart action."""
        latest = None
        made = f"applied: run {instance.run_id} "  # what the run it made marked it with
        for action in await storage.list_actions(instance.instance_id):
            if action.verb == "restart" and action.step_id is None and (
                    action.outcome.startswith(made) or (action.applied_at is None and instance.status is I.CREATED)):
                latest = action
        if latest is None:
            return cls()
        return cls(latest.params.get("mode", "RESTART_FROM_INCOMPLETE"), latest.params.get("step_id"), latest)

    def again(self, definition) -> set[str] | None:
        """The top-level steps that run again whatever an earlier run made of them (None: only
        the incomplete ones, as RESTART_FROM_INCOMPLETE)."""
        if self.mode == "RESTART_FROM_BEGINNING":
            return {s.id for s in definition.steps}
        if self.mode == "RESTART_FROM_SPECIFIC":
            succ = {s.id: [t for t, _ in s.successors] for s in definition.steps}
            seen, todo = set(), [self.step_id]
            while todo:
                sid = todo.pop()
                if sid in seen or sid not in succ:
                    continue
                seen.add(sid)
                todo.extend(succ[sid])
            return seen
        return None

    def filter(self, groups: dict, definition, run_id: int, steps: dict) -> dict:
        """``groups`` (legato.recovery.group_history) without the earlier runs' attempts of the
        steps that run again, so that they are created anew (numbered after those attempts)."""
        again = self.again(definition)
        if not again:
            return groups
        top = dict(groups.get("", {}))
        for sid in again:
            records = top.get(sid)
            if records:
                last = max(records, key=lambda r: r.attempt)
                if last.run_id < run_id:  # not run again in this run yet (a resumed restart may have)
                    del top[sid]
                    steps[sid].attempt = last.attempt
        return {**groups, "": top}

    def words(self) -> str:
        return _restart_words({"mode": self.mode, "step_id": self.step_id})


class InstanceActions:
    """Applying actions in the instance's scheduling loop (a mixin of :class:`legato.instance.InstanceRun`)."""

    def _init_actions(self) -> None:
        self.ending_actions: list[ActionRecord] = []  # instance stop/kill: marked when the instance ends
        self.step_actions: dict[str, tuple[ActionRecord, StepStatus, str]] = {}  # running steps being ended

    def apply_action(self, action: ActionRecord) -> None:
        """Apply ``action`` now, or refuse it saying why; either way it is in this tick's batch."""
        if action.step_id is None:
            outcome = self._instance_action(action)
        else:
            outcome = self._step_action(action)
        if outcome is not None:
            self.record_action(action, outcome)

    def record_action(self, action: ActionRecord, outcome: str, attempt: int | None = None) -> None:
        """The action's event and its being applied, in the batch being built."""
        st = self.root.steps.get(action.step_id) if action.step_id else None
        self.batch.events.append(_action_event(action, action.step_id, attempt if attempt is not None
                                               else (st.attempt if st else 0), outcome))
        self.batch.actions.append((action.id, outcome))

    def _instance_action(self, action: ActionRecord) -> str | None:
        verb = action.verb
        if verb == "restart":
            return refused(f"instance {self.iid} is running ({self.instance.status.value}): a restart runs an ended "
                           f"instance again; `legato stop {self.iid}` first")
        status = I.STOPPED if verb == "stop" else I.FAILED
        if self.ending is not None and (self.ending is I.FAILED or status is I.STOPPED):
            return refused(f"instance {self.iid} is already ending {self.ending.value} ({self.end_message})")
        self.end(status, f"{'stopped' if verb == 'stop' else 'killed'} by {action.requested_by}")
        self.ending_actions.append(action)
        return None  # marked with the instance's end (finish_actions)

    def finish_actions(self, final: InstanceStatus) -> None:
        """The instance ends ``final`` (in this tick): the stops and kills that ended it are applied,
        and actions that came too late are refused."""
        for action in self.ending_actions:
            self.record_action(action, applied(f"instance {final.value}"))
        self.ending_actions = []
        for action, _, _ in self.step_actions.values():
            self.record_action(action, refused(f"instance {self.iid} ended {final.value} first"))
        self.step_actions = {}
        for message in self.inbox:
            if message[0] == "action":
                self.record_action(message[1], refused(f"instance {self.iid} ended {final.value} before the "
                                                       "action was applied"))

    def _step_action(self, action: ActionRecord) -> str | None:
        verb, sid = action.verb, action.step_id
        st = self.root.steps.get(sid)
        if st is None:
            return refused(f"instance {self.iid} has no top-level step {sid!r}")
        if self.ending is not None:
            return refused(f"instance {self.iid} is ending {self.ending.value}: its steps are being stopped")
        record = st.record
        if record is None:
            return refused(f"step {sid} has not been created yet (its predecessors have not all ended); "
                           "try again once it has")
        if verb == "restart":
            return self._restart_step(st, action)
        if st.loop is not None or st.sdef.loop is not None:
            return refused(f"step {sid} is a {st.sdef.loop.kind if st.sdef.loop else 'loop'} step: {verb} applies to "
                           "leaf steps for now; stop the instance instead")
        if st.finished or (record.status.terminal and st.key not in self.retrying):
            return refused(f"step {sid} already ended {record.status.value}: nothing to {verb}")
        who = action.requested_by
        if verb == "stop":
            target, message = S.STOPPED, f"stopped by {who}"
        elif verb == "kill":
            target = next_status(S.FATALLY_FAILED, 0, 0, st.sdef.failure_mode, False)
            message = f"killed by {who}" + (" (IGNORE_FAILURE: COMPLETED_WITH_ERROR)" if target is not S.FATALLY_FAILED
                                            else "")
        else:
            target, message = S.SKIPPED, f"skipped by {who}"
        if st.cancel is not None:  # running: its task reports STOPPED once cancelled, ended as asked then
            self.step_actions[st.key] = (action, target, message)
            st.cancel.cancel()
            return None
        waiting = self.retrying.pop(st.key, None)
        if waiting is not None:  # between attempts: the next one is created and ended at once
            waiting[0].cancel()
            st.attempt += 1
            now = time.time()
            st.record = AttemptRecord(self.iid, st.key, st.attempt, S.CREATED, self.instance.run_id,
                                      params=st.params, created_at=now)
            self.batch.attempts[(st.key, st.attempt)] = st.record
            self.event(st.key, st.attempt, "CREATED")
        elif st in self.permit_queue:
            self.permit_queue.remove(st)
        elif st in self.to_launch:
            self.to_launch.remove(st)
            self.running -= 1
        else:  # between two ticks of its own (e.g. loading what its params read): not now
            return refused(f"step {sid} is {record.status.value}: try again in a moment")
        self.end_step(st, target, message)
        return applied(f"step {sid} {st.record.status.value}")

    def stopped_step(self, st) -> tuple[StepStatus, str] | None:
        """A running step that an action cancelled: how it ends (its action is applied in this tick)."""
        wanted = self.step_actions.pop(st.key, None)
        if wanted is None:
            return None
        action, target, message = wanted
        self.record_action(action, applied(f"step {st.key} {target.value}"), st.attempt)
        return target, message

    def _restart_step(self, st, action: ActionRecord) -> str | None:
        """Maestro's restart of a step of a running instance: a new attempt of a step that ended
        without completing (its descendants, never created, follow it)."""
        status = st.record.status
        if not st.finished or not status.restartable:
            what = "is still running" if not st.finished else f"ended {status.value}"
            return refused(f"step {st.key} {what}: a restart runs again a step that failed, was stopped or "
                           "timed out")
        scope = st.scope
        scope.finished = [s for s in scope.finished if s is not st]
        st.finished = False
        st.errors = st.platform = st.timeouts = 0
        st.config = None
        # The failure it ended with no longer counts against the instance, unless another step's does.
        scope.failed = any(s.finished and s.record is not None and s.record.status.failed
                           and s.record.status not in (S.STOPPED, S.TIMED_OUT) for s in scope.steps.values())
        scope.timed_out = any(s.finished and s.record is not None and s.record.status is S.TIMED_OUT
                              for s in scope.steps.values())
        self.record_action(action, applied(f"step {st.key} restarted as attempt {st.attempt + 1}"), st.attempt + 1)
        self.materialize(st)
        return None
