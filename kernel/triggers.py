"""The contract between the kernel and a trigger type (DESIGN §6, TriggerType).

A trigger type starts workflows by itself: on a schedule (``cron``, for ``time_triggers``), when
signals arrive (``signal``, for ``signal_triggers``). It is a class registered through
``legato_register_triggers`` (``registry.add(cls)``), with

- ``name``: the trigger type's name (``cron``, ``signal``); ``legato plugins`` lists it;
- ``field``: the key of the workflow object it reads (``time_triggers``, ``signal_triggers``):
  a list, one item per trigger. :data:`WORKFLOW_FIELDS` names the trigger type the kernel asks
  for each field it knows;
- ``parse(items, pointer)`` (a classmethod, sync, pure, cheap): the list read into
  :class:`TriggerDef` objects and the problems found, each ``(JSON pointer, message)`` (the
  pointer under ``pointer``, e.g. ``/workflow/time_triggers/0/cron``). The definition validator
  calls it on every load, so a bad trigger is refused with the other problems (exit 2, never a
  traceback); the host reads each active version's triggers the same way (``Definition.triggers``);
- ``async run(ctx, *, task_status)``: the trigger itself, for one :class:`TriggerDef` of one
  active workflow version, until cancelled. It calls ``task_status.started()`` once it is
  watching (its checkpoint read), fires through ``await ctx.start(...)``, records what it has
  consumed with ``await ctx.save(value)``, and never blocks the event loop (blocking work goes
  to ``trio.to_thread.run_sync``). Cancelled (the host stops: SIGTERM, the version is no
  longer active), it returns promptly, within 2 s on an idle machine, leaving nothing behind;
  an exception escaping ``run`` is logged by the host, which runs the trigger again after a
  pause (the checkpoint makes that safe);
- ``next_due(trigger, checkpoint, now, *, workflow_id)`` (sync, optional): when it fires next
  (epoch seconds), or None when it cannot say (a signal trigger); what ``legato triggers`` shows.

**The host** (:mod:`legato.trigger_host`, under ``legato serve`` and ``legato worker``) runs one
task per (workflow, trigger) of every active version whose definition has items at the trigger
type's ``field`` (unless its properties say ``time_trigger_disabled`` / ``signal_trigger_disabled``:
:data:`DISABLED_BY`). It notices versions activated, replaced or deactivated every ``poll``
seconds (the worker's ``--poll``) or when woken (``TriggerHost.wake()``): the task of a version no
longer active is cancelled and the new version's started. A trigger whose ``key`` is the same in both versions
(unchanged) carries its checkpoint over.

**Exactly once.** Each firing has a ``request_id`` the trigger derives deterministically from
what it fires for (a cron tick's scheduled time; a signal's or a joined set's sequence numbers),
never from the wall clock or a random number. :meth:`TriggerContext.start` goes through the
store's idempotent start (the instance's unique ``(workflow_id, request_id)``): the same id again
returns the instance it already started, with ``created`` False. A trigger saves its checkpoint
*after* ``start`` returns (the instance is durable then), so a crash between the two makes the
restarted trigger fire the same id again, which starts nothing new; and two hosts on one store
firing the same tick start one instance. The id stored is ``trigger:<key>:<request_id>``.

**Paused.** ``legato triggers pause WORKFLOW`` pauses every trigger of a workflow (whatever its
version); ``resume`` lifts it. While paused, :meth:`TriggerContext.start` starts nothing and
returns None: the firing is dropped (a cron tick is skipped, not caught up on resume), and the
trigger saves its checkpoint as usual. A trigger that would rather hold what it consumes (a
signal) checks ``await ctx.paused()`` first and waits with ``await ctx.wait_resumed()``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import trio

if TYPE_CHECKING:  # pragma: no cover
    from .model import InstanceRecord
    from .storage import Storage

__all__ = ["list_triggers", "TriggerType", "TriggerDef", "TriggerContext", "TriggerClock", "WORKFLOW_FIELDS", "DISABLED_BY",
           "disabled_fields", "trigger_request_id"]

#: The workflow keys that hold triggers, and the name of the trigger type that reads each.
WORKFLOW_FIELDS: dict[str, str] = {"time_triggers": "cron", "signal_triggers": "signal"}
#: Maestro's properties that turn a field's triggers off (the host does not run them).
DISABLED_BY: dict[str, str] = {"time_triggers": "time_trigger_disabled", "signal_triggers": "signal_trigger_disabled"}


def disabled_fields(document: Any) -> set[str]:
    """The trigger fields whose triggers ``document``'s properties turn off (Maestro's
    ``time_trigger_disabled`` / ``signal_trigger_disabled``, in ``properties`` or ``properties_snapshot``)."""
    props = {}
    if isinstance(document, dict):
        props = document.get("properties") or document.get("properties_snapshot") or {}
    return {f for f, key in DISABLED_BY.items() if isinstance(props, dict) and props.get(key) is True}


def trigger_request_id(key: str, request_id: str) -> str:
    """The request id stored for a firing ``request_id`` of the trigger ``key`` (unique per workflow)."""
    return f"trigger:{key}:{request_id}"


@dataclass(slots=True)
class TriggerDef:
    """One trigger of one workflow, as its type's ``parse`` read it.

    - ``key``: stable identity within the workflow, the checkpoint's key and part of every
      request id (e.g. ``time-3f9a…``: a digest of the item, so an unchanged trigger keeps its
      checkpoint across versions and a changed one starts afresh). Letters, digits, ``-_.``;
      at most 64 characters;
    - ``pointer``: where it is in the definition (``/workflow/time_triggers/0``);
    - ``spec``: what the trigger type made of the item (its own object: a schedule, a join);
    - ``raw``: the item as written.
    """

    key: str
    pointer: str
    spec: Any
    raw: Any = None


class TriggerContext:
    """What :meth:`TriggerType.run` gets, for one trigger of one active workflow version.

    - ``workflow_id``, ``version``: the workflow and its active version, the one ``start`` starts;
    - ``trigger``: the :class:`TriggerDef`; ``triggers``: every TriggerDef of this type in the version;
    - ``definition``: the loaded :class:`legato.definition.Definition` of that version;
    - ``storage``: the store (reads only: what the trigger consumes, e.g. signals);
    - ``await start(request_id=…, params=None, run_ts=None, initiator=None)``: start an instance
      (queued for a worker) through the idempotent start, ``request_id`` deterministic (see the
      module's docstring). ``params``: start params as a start request gives them (values or
      Maestro's full form). ``run_ts``: the time the run is for (epoch seconds; a cron tick's
      scheduled time), what the run reads as ``workflow.run_ts`` (default: now). ``initiator``:
      what it reads as ``workflow.initiator`` (default ``"<type name>:<key>"``). ``signal``: the
      params of the signals it fires for, by signal name, what the workflow's params read as
      ``signal`` in CEL (the ``signal`` trigger type). Returns
      ``(instance, created)``: ``created`` False when the id had started it already; None while
      the workflow's triggers are paused. Raises :class:`legato.engine.StartError` for params
      the workflow refuses (the host logs it; the trigger should consume the firing);
    - ``await load()`` / ``await save(value)``: this trigger's checkpoint (a JSON value, None
      until first saved), per (workflow, trigger key), durable when ``save`` returns;
    - ``await paused()`` / ``await wait_resumed()``: the workflow's triggers paused, and waiting
      until they are not;
    - ``log(line)``: one line for the host's log;
    - ``now()``: the current time, epoch seconds, on the host's clock (tests run it on
      ``trio.testing.MockClock``: use it, never ``time.time()``, and sleep with
      ``await ctx.sleep_until(ts)``).
    """

    def __init__(self, *, workflow_id: str, version: int, trigger: TriggerDef, triggers: list[TriggerDef],
                 definition: Any, storage: "Storage", type_name: str,
                 start: Callable[..., Any], clock: "TriggerClock | None" = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.workflow_id = workflow_id
        self.version = version
        self.trigger = trigger
        self.triggers = triggers
        self.definition = definition
        self.storage = storage
        self.type_name = type_name
        self._start = start
        self.clock = clock or TriggerClock()
        self._log = log or (lambda line: None)
        #: When this context last started an instance (epoch seconds), saved with the checkpoint.
        self.last_fired: float | None = None

    async def start(self, *, request_id: str, params: dict[str, Any] | None = None, run_ts: float | None = None,
                    initiator: str | None = None, signal: dict[str, Any] | None = None
                    ) -> "tuple[InstanceRecord, bool] | None":
        if not isinstance(request_id, str) or not request_id:
            raise ValueError("a trigger's start needs a non-empty, deterministic request_id")
        if await self.paused():
            return None
        extra = {} if signal is None else {"signal": signal}
        result = await self._start(self, trigger_request_id(self.trigger.key, request_id), params,
                                   run_ts if run_ts is not None else self.now(),
                                   initiator or f"{self.type_name}:{self.trigger.key}", **extra)
        self.last_fired = self.now()
        return result

    async def load(self) -> Any:
        found = await self.storage.get_trigger_checkpoint(self.workflow_id, self.trigger.key)
        return None if found is None else found["value"]

    async def save(self, value: Any) -> None:
        await self.storage.save_trigger_checkpoint(self.workflow_id, self.trigger.key, value,
                                                   fired_at=self.last_fired)

    async def paused(self) -> bool:
        return await self.storage.get_triggers_paused(self.workflow_id) is not None

    async def wait_resumed(self, poll: float = 1.0) -> None:
        while await self.paused():
            await self.clock.sleep(poll)

    def log(self, line: str) -> None:
        self._log(f"{self.workflow_id} {self.type_name} trigger {self.trigger.key}: {line}")

    def now(self) -> float:
        return self.clock.now()

    async def sleep_until(self, ts: float) -> None:
        await self.clock.sleep_until(ts)


class TriggerClock:
    """Epoch time on trio's clock: ``now()`` is the wall clock when the host started plus trio's
    elapsed time, so under ``trio.testing.MockClock`` a trigger runs in virtual time (``epoch``
    sets where virtual time starts). Sleeping is ``trio.sleep_until`` on the same clock."""

    def __init__(self, epoch: float | None = None) -> None:
        import time

        self._offset = (time.time() if epoch is None else epoch) - trio.current_time()

    def now(self) -> float:
        return self._offset + trio.current_time()

    async def sleep_until(self, ts: float) -> None:
        await trio.sleep_until(ts - self._offset)

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


class TriggerType:
    """Base class of every trigger type. Subclass it, set ``name`` and ``field``, implement
    ``parse`` and ``run`` (see the module's docstring for the contract)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    field: ClassVar[str] = ""

    @classmethod
    def parse(cls, items: Any, pointer: str) -> tuple[list[TriggerDef], list[tuple[str, str]]]:
        """``items`` (the workflow's list at ``field``) as TriggerDefs, and the problems found as
        ``(pointer, message)`` pairs. Pure and cheap: the validator calls it on every load."""
        raise NotImplementedError

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this trigger type cannot run here (a missing library, with the install hint), or None."""
        return None

    def next_due(self, trigger: TriggerDef, checkpoint: Any, now: float, *, workflow_id: str = "") -> float | None:
        """When ``trigger`` of ``workflow_id`` fires next after ``now`` given its ``checkpoint``
        (epoch seconds), or None when it cannot say. The default cannot."""
        return None

    async def run(self, ctx: TriggerContext, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # pragma: no cover
        """Watch and fire until cancelled; ``task_status.started()`` once watching."""
        raise NotImplementedError


def _schedule(raw: Any) -> str:
    """A trigger item as one short phrase (``CRON 0 6 * * * Europe/Dublin``)."""
    if not isinstance(raw, dict):
        return ""
    words = [str(raw.get("type", "")).upper()]
    for key in ("cron", "expression", "interval", "timezone"):
        if raw.get(key) is not None:
            words.append(str(raw[key]))
    return " ".join(words)


async def list_triggers(engine) -> list[dict[str, Any]]:
    """The triggers of the active versions, one row each: workflow, version, type, key, schedule,
    next due and last fired (epoch seconds or None), paused, disabled, and a problem when the
    version no longer loads here. What `legato triggers` and `GET /api/v3/triggers` show."""
    from .definition import DefinitionError

    storage = engine.storage
    active = await storage.list_active_versions()
    paused = {p["workflow_id"]: p for p in await storage.list_paused_triggers()}
    checkpoints = {(c["workflow_id"], c["key"]): c for c in await storage.list_trigger_checkpoints()}
    now = time.time()
    rows = []
    for wid, version in active.items():
        stored = await storage.get_definition(wid, version)
        workflow = stored.document.get("workflow") if stored is not None else None
        if not isinstance(workflow, dict) or not any(workflow.get(f) for f in WORKFLOW_FIELDS):
            continue
        try:
            definition = engine.load(stored.document)
        except DefinitionError as exc:
            rows.append({"workflow_id": wid, "version": version, "type": None, "key": None, "schedule": "",
                         "next_due": None, "last_fired": None, "paused": wid in paused,
                         "problem": "; ".join(str(p) for p in exc.problems[:3]), "disabled": False})
            continue
        off = disabled_fields(stored.document)
        for type_name, defs in definition.triggers.items():
            trigger_type = engine.plugins.triggers.types[type_name]()
            for tdef in defs:
                if trigger_type.field in off:
                    rows.append({"workflow_id": wid, "version": version, "type": type_name, "key": tdef.key,
                                 "schedule": _schedule(tdef.raw), "next_due": None, "last_fired": None,
                                 "paused": wid in paused, "problem": None, "disabled": True})
                    continue
                found = checkpoints.get((wid, tdef.key))
                try:
                    due = trigger_type.next_due(tdef, found["value"] if found else None, now, workflow_id=wid)
                except Exception:  # a plugin that cannot say: the listing goes on
                    due = None
                rows.append({"workflow_id": wid, "version": version, "type": type_name, "key": tdef.key,
                             "schedule": _schedule(tdef.raw), "next_due": due,
                             "last_fired": found["fired_at"] if found else None, "paused": wid in paused,
                             "problem": None, "disabled": False})
    return rows
