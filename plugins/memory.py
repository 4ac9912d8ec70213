"""``memory://``: the reference storage backend. Keeps everything in the process; nothing survives it.

It implements the storage contract exactly (idempotent start, fenced atomic commits, leases), so it
is what other backends are compared against and what benchmarks use as a baseline.
"""

from __future__ import annotations

import copy
import itertools
import time
from typing import Any

from legato.hookspecs import hookimpl
from legato.model import (ActionRecord, AttemptRecord, Batch, DefinitionVersion, Event, InstanceRecord, Lease, LogChunk,
                          SignalRecord)
from legato.processes import this_process
from legato import strategy
from legato.states import InstanceStatus
from legato.storage import StaleWrite, Storage, VersionNotFound, parse_version


def _with(version: DefinitionVersion, new: bool) -> DefinitionVersion:
    """A copy the caller may keep (the stored one changes when another version is activated)."""
    return DefinitionVersion(version.workflow_id, version.version, version.document, version.created_at,
                             version.active, new)


class MemoryStorage(Storage):
    """Dicts and lists behind the storage interface."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._definitions: dict[str, list[DefinitionVersion]] = {}
        self._instances: dict[str, InstanceRecord] = {}
        self._requests: dict[tuple[str, str], str] = {}
        self._attempts: dict[str, dict[tuple[str, int], AttemptRecord]] = {}
        self._events: dict[str, list[Event]] = {}
        self._logs: dict[str, list[LogChunk]] = {}
        # instance -> (owner, expiry (monotonic; None: released), generation, holder's ProcessIdentity)
        self._leases: dict[str, tuple[str, float | None, int, Any]] = {}
        self._wakeups = None
        self._actions: list[ActionRecord] = []
        self._permits: dict[str, set[tuple[str, str, int]]] = {}  # key -> holders (instance, step, attempt)
        self._tag_limits: dict[str, tuple[int, str, float]] = {}  # tag -> (limit, set by, set at)
        self._checkpoints: dict[tuple[str, str], dict[str, Any]] = {}  # (workflow, trigger key) -> checkpoint
        self._paused: dict[str, dict[str, Any]] = {}  # workflow -> who paused its triggers, when
        # By workflow, in creation order: instances queued (created, never taken), started and not
        # ended, and ended FAILED and not unblocked (what legato.strategy counts).
        self._waiting: dict[str, dict[str, None]] = {}
        self._running: dict[str, dict[str, None]] = {}
        self._failed: dict[str, dict[str, None]] = {}
        self._signals: dict[str, list[SignalRecord]] = {}  # name -> its signals, seq 1 first
        self._signal_requests: dict[tuple[str, str], SignalRecord] = {}

    async def push_definition(self, workflow_id: str, document: dict[str, Any],
                              activate: bool = True) -> DefinitionVersion:
        versions = self._definitions.setdefault(workflow_id, [])
        found = next((v for v in versions if v.active and v.document == document), None) or \
            next((v for v in versions if v.document == document), None)
        if found is None:
            found = DefinitionVersion(workflow_id, len(versions) + 1, copy.deepcopy(document), time.time(), False)
            versions.append(found)
            new = True
        else:
            new = False
        if activate:
            for v in versions:
                v.active = v is found
        return _with(found, new)

    async def get_definition(self, workflow_id: str, version: str | int | None = None) -> DefinitionVersion | None:
        versions = self._definitions.get(workflow_id, [])
        spec = parse_version(version)
        if spec == "latest":
            return _with(versions[-1], False) if versions else None
        for v in versions:
            if (spec == "active" and v.active) or v.version == spec:
                return _with(v, False)
        return None

    async def list_workflows(self) -> list[str]:
        return sorted(wid for wid, versions in self._definitions.items() if versions)

    async def list_versions(self, workflow_id: str) -> list[DefinitionVersion]:
        return [_with(v, False) for v in self._definitions.get(workflow_id, [])]

    async def activate(self, workflow_id: str, version: int) -> DefinitionVersion:
        versions = self._definitions.get(workflow_id, [])
        if not any(v.version == version for v in versions):
            raise VersionNotFound(await self._no_version(workflow_id, version))
        for v in versions:
            v.active = v.version == version
        return _with(versions[version - 1], False)

    async def create_instance(self, record: InstanceRecord, owner: str | None = None,
                              ttl: float = 0.0) -> tuple[InstanceRecord, bool]:
        if record.request_id is not None:
            key = (record.workflow_id, record.request_id)
            existing = self._requests.get(key)
            if existing is not None:
                return self._out(self._instances[existing]), False
            self._requests[key] = record.instance_id
        iid = record.instance_id
        arrival = strategy.Arrival(True)
        if record.run_strategy:
            arrival = strategy.on_arrival(record.run_strategy, record.workflow_concurrency,
                                          self._queue(record, arriving=True), iid)
        self._instances[iid] = copy.copy(record)
        self._attempts[iid] = {}
        self._events[iid] = []
        self._logs[iid] = []
        now = time.time()
        if arrival.stop_queued:
            for other in list(self._waiting.get(record.workflow_id, ())):
                self._end_queued(self._instances[other], arrival.stop_queued, now)
        if arrival.stopped:
            self._end_queued(self._instances[iid], arrival.stopped, now)
        elif owner is not None and arrival.start:
            self._leases[iid] = (owner, time.monotonic() + ttl, 1, this_process())
            self._track(record)
        elif record.status.terminal:  # recorded as it ended elsewhere (an import, a test)
            self._track(record)
        else:
            self._waiting.setdefault(record.workflow_id, {})[iid] = None
            if self._wakeups is not None:
                self._wakeups.notify()  # queued: a worker of this process runs it
        return self._out(self._instances[iid]), True

    # -- run strategies (legato.strategy decides; this store counts) -------------------------------

    def _is_queued(self, r: InstanceRecord) -> bool:
        return r.instance_id in self._waiting.get(r.workflow_id, ())

    def _out(self, r: InstanceRecord) -> InstanceRecord:
        out = copy.copy(r)
        out.queued = self._is_queued(r)
        return out

    def _end_queued(self, r: InstanceRecord, message: str, now: float,
                    status: InstanceStatus = InstanceStatus.STOPPED) -> None:
        self._waiting.get(r.workflow_id, {}).pop(r.instance_id, None)
        r.status, r.ended_at, r.message = status, now, message
        self._events[r.instance_id].append(strategy.stopped_event(r.instance_id, message, now, status.value))
        self._track(r)

    async def end_queued(self, instance_id: str, status: InstanceStatus, message: str) -> InstanceRecord | None:
        record = self._instances.get(instance_id)
        if record is None or not self._is_queued(record):
            return None
        self._end_queued(record, message, time.time(), status)
        if self._wakeups is not None:
            self._wakeups.notify()  # the ones queued behind it may start now
        return self._out(record)

    def _track(self, r: InstanceRecord) -> None:
        """Keep the workflow's started and failed instances up to date with ``r``'s status."""
        wid, iid = r.workflow_id, r.instance_id
        if iid in self._waiting.get(wid, ()):
            return
        running, failed = self._running.setdefault(wid, {}), self._failed.setdefault(wid, {})
        if not r.status.terminal:
            running[iid] = None
            failed.pop(iid, None)
        else:
            running.pop(iid, None)
            if r.status is InstanceStatus.FAILED:
                failed[iid] = None

    def _queue(self, record: InstanceRecord, arriving: bool = False) -> strategy.Queue:
        wid, iid = record.workflow_id, record.instance_id
        started = self._running.get(wid, {})
        running = len(started) - (iid in started)
        running_id = next((i for i in started if i != iid), None)
        waiting = self._waiting.get(wid, {})
        if arriving:  # not among them yet: every queued one is before it
            ahead, ahead_id = len(waiting), next(reversed(waiting), None) if waiting else None
        else:  # those before it, in creation order, counted up to what its strategy could start
            ahead, ahead_id, cap = 0, None, strategy.queue_limit(record)
            for i in waiting:
                if i == iid or ahead >= cap:
                    break
                ahead, ahead_id = ahead + 1, i
        failed = self._failed.get(wid) if record.run_strategy == strategy.STRICT else None
        return strategy.Queue(running, running_id, ahead, ahead_id, next(iter(failed)) if failed else None)

    async def strategy_queue(self, instance_id: str) -> strategy.Queue:
        record = self._instances.get(instance_id)
        return strategy.Queue() if record is None else self._queue(record)

    async def unblock_workflow(self, workflow_id: str, by: str, ts: float) -> list[str]:
        failed = self._failed.pop(workflow_id, {})
        for iid in failed:
            self._events[iid].append(strategy.unblocked_event(iid, workflow_id, by, ts))
        return list(failed)

    def _startable(self, r: InstanceRecord) -> bool:
        """Whether the queued ``r`` may start now (its run strategy); any other may be taken."""
        if not r.run_strategy or not self._is_queued(r):
            return True
        return strategy.may_start(r.run_strategy, r.workflow_concurrency, self._queue(r))

    def wakeups(self):
        """Workers in this process, woken when an instance is queued."""
        if self._wakeups is None:
            from legato.wakeup import LocalWakeups

            self._wakeups = LocalWakeups()
        return self._wakeups

    async def commit(self, batch: Batch) -> None:
        iid = batch.instance_id
        lease = self._leases.get(iid)
        if lease is not None and batch.generation < lease[2]:
            raise StaleWrite(f"instance {iid} is owned by {lease[0]} (generation {lease[2]}); this write carried {batch.generation}")
        if batch.instance is not None:
            self._instances[iid] = copy.copy(batch.instance)
            self._track(batch.instance)
        attempts = self._attempts[iid]
        for key, record in batch.attempts.items():
            attempts[key] = copy.copy(record)
        self._events[iid].extend(batch.events)
        self._logs[iid].extend(batch.logs)
        if batch.actions:
            now = time.time()
            for action_id, outcome in batch.actions:
                record = self._actions[action_id - 1] if 1 <= action_id <= len(self._actions) else None
                if record is not None and record.applied_at is None:
                    record.applied_at, record.outcome = now, outcome
            self.wakeups().notify()  # whoever waits for them (legato.actions.wait_applied)
        if batch.permits_released:
            gone = {(iid, sid, attempt) for sid, attempt in batch.permits_released}
            for holders in self._permits.values():
                holders -= gone
            self.wakeups().notify()
        if batch.signals:
            for name, params, request_id in batch.signals:
                self._add_signal(name, params, request_id)
            self.wakeups().notify()  # steps and triggers waiting for them

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        record = self._instances.get(instance_id)
        return self._out(record) if record else None

    async def list_instances(self, workflow_id: str | None = None, limit: int = 50,
                             status: InstanceStatus | None = None) -> list[InstanceRecord]:
        rows = [r for r in self._instances.values()
                if (workflow_id is None or r.workflow_id == workflow_id) and (status is None or r.status == status)]
        rows.sort(key=lambda r: r.created_at, reverse=True)
        return [self._out(r) for r in rows[:limit]]

    async def find_instances(self, prefix: str, limit: int = 10) -> list[InstanceRecord]:
        return [self._out(self._instances[i]) for i in sorted(self._instances) if i.startswith(prefix)][:limit]

    async def get_attempts(self, instance_id: str) -> list[AttemptRecord]:
        return [copy.copy(r) for r in self._attempts.get(instance_id, {}).values()]

    async def get_timeline(self, instance_id: str) -> list[Event]:
        return list(self._events.get(instance_id, []))

    async def get_logs(self, instance_id: str, step_id: str | None = None, attempt: int | None = None) -> list[LogChunk]:
        return [
            c
            for c in self._logs.get(instance_id, [])
            if (step_id is None or c.step_id == step_id) and (attempt is None or c.attempt == attempt)
        ]

    async def get_logs_since(self, instance_id: str, offset: int, step_id: str | None = None,
                             attempt: int | None = None) -> list[LogChunk]:
        if step_id is None and attempt is None:
            return self._logs.get(instance_id, [])[offset:]
        return (await self.get_logs(instance_id, step_id, attempt))[offset:]

    async def acquire_lease(self, instance_id: str, owner: str, ttl: float,
                            generation: int | None = None) -> int | None:
        now = time.monotonic()
        current = self._leases.get(instance_id)
        if generation is not None:  # a heartbeat: renew only
            if current is None or current[0] != owner or current[2] != generation:
                return None
        if current is None:
            record = self._instances.get(instance_id)
            if record is not None and not self._startable(record):
                return None  # queued, and its run strategy makes it wait
            new = 1
            if record is not None:  # started from now on: it holds a slot of its workflow until it ends
                self._waiting.get(record.workflow_id, {}).pop(instance_id, None)
                self._track(record)
        elif current[0] == owner:
            new = current[2]
        elif not self._lease(current, now).live:
            new = current[2] + 1
        else:
            return None
        self._leases[instance_id] = (owner, now + ttl, new, this_process())
        return new

    @staticmethod
    def _lease(entry, now: float) -> Lease:
        owner, expiry, generation, who = entry
        return Lease(owner, generation, None if expiry is None else expiry - now,
                     who.host, who.pid, who.started, who.namespace)

    async def get_lease(self, instance_id: str) -> Lease | None:
        entry = self._leases.get(instance_id)
        return None if entry is None else self._lease(entry, time.monotonic())

    async def release_lease(self, instance_id: str, owner: str) -> None:
        current = self._leases.get(instance_id)
        if current is not None and current[0] == owner:
            self._leases[instance_id] = (owner, None, current[2], current[3])
            record = self._instances.get(instance_id)
            if record is not None and record.status.terminal and self._wakeups is not None \
                    and self._waiting.get(record.workflow_id):
                self._wakeups.notify()  # its slot is free: the queued ones of its workflow may start

    def _unfinished(self) -> list[tuple[InstanceRecord, Lease | None]]:
        now = time.monotonic()
        return [
            (self._out(r), self._lease(self._leases[r.instance_id], now) if r.instance_id in self._leases else None)
            for r in sorted(self._instances.values(), key=lambda r: r.created_at) if not r.status.terminal
        ]

    async def list_resumable(self, limit: int = 100) -> list[InstanceRecord]:
        out = [r for r, lease in self._unfinished()
               if (lease is None or not lease.live) and not (r.queued and r.run_strategy)]
        for waiting in self._waiting.values():  # those whose turn it is, first in first
            if not waiting:
                continue
            first = self._instances[next(iter(waiting))]
            n = strategy.slots(first.run_strategy, first.workflow_concurrency, self._queue(first))
            out += [self._out(self._instances[i]) for i in itertools.islice(waiting, min(n, limit))
                    if self._instances[i].run_strategy]
        out.sort(key=lambda r: r.created_at)
        return out[:limit]

    async def list_leased(self, limit: int = 100) -> list[tuple[InstanceRecord, Lease]]:
        return [(r, lease) for r, lease in self._unfinished() if lease is not None and lease.live][:limit]

    async def request_action(self, instance_id: str, verb: str, *, step_id: str | None = None,
                             params: dict[str, Any] | None = None, requested_by: str) -> ActionRecord:
        record = ActionRecord(len(self._actions) + 1, instance_id, verb, step_id, copy.deepcopy(dict(params or {})),
                              requested_by, time.time())
        self._actions.append(record)
        return copy.copy(record)

    async def pending_actions(self, instance_ids) -> list[ActionRecord]:
        wanted = set(instance_ids)
        return [copy.copy(a) for a in self._actions if a.applied_at is None and a.instance_id in wanted]

    async def mark_action_applied(self, action_id: int, outcome: str) -> bool:
        if not 1 <= action_id <= len(self._actions) or self._actions[action_id - 1].applied_at is not None:
            return False
        record = self._actions[action_id - 1]
        record.applied_at, record.outcome = time.time(), outcome
        return True

    async def list_actions(self, instance_id: str) -> list[ActionRecord]:
        return [copy.copy(a) for a in self._actions if a.instance_id == instance_id]


    # -- permits --------------------------------------------------------------------------------

    def _live_holders(self, key: str) -> set[tuple[str, str, int]]:
        """The holders of ``key`` whose instance's lease is live (the others are dropped)."""
        holders = self._permits.setdefault(key, set())
        now = time.monotonic()
        dead = {h for h in holders if (lease := self._leases.get(h[0])) is None or lease[1] is None or lease[1] <= now}
        holders -= dead
        return holders

    async def acquire_permits(self, requests):
        answers = []
        for holder, wants in requests:
            blocked = None
            for key, limit in wants:
                if key.startswith("tag:") and key[4:] in self._tag_limits:
                    limit = self._tag_limits[key[4:]][0]
                if limit is None:
                    continue
                held = len(self._live_holders(key) - {holder})
                if held >= limit:
                    blocked = (key, held, limit)
                    break
            if blocked is None:
                for key, _ in wants:
                    self._permits.setdefault(key, set()).add(holder)
            answers.append(blocked)
        return answers

    async def release_permits(self, instance_id: str, keep=()) -> None:
        kept = {(instance_id, sid, attempt) for sid, attempt in keep}
        for holders in self._permits.values():
            holders -= {h for h in holders if h[0] == instance_id and h not in kept}
        self.wakeups().notify()

    async def set_tag_permit(self, tag: str, limit: int, *, by: str) -> None:
        self._tag_limits[tag] = (limit, by, time.time())
        self.wakeups().notify()

    async def get_tag_permits(self) -> list[dict[str, Any]]:
        return [{"tag": tag, "limit": limit, "held": len(self._live_holders("tag:" + tag)), "set_by": by,
                 "set_at": at} for tag, (limit, by, at) in sorted(self._tag_limits.items())]

    async def delete_tag_permit(self, tag: str) -> bool:
        found = self._tag_limits.pop(tag, None) is not None
        if found:
            self.wakeups().notify()
        return found

    # -- signals -------------------------------------------------------------------------------

    def _add_signal(self, name: str, params: dict[str, Any], request_id: str | None) -> tuple[SignalRecord, bool]:
        if request_id is not None:
            found = self._signal_requests.get((name, request_id))
            if found is not None:
                return copy.deepcopy(found), False
        signals = self._signals.setdefault(name, [])
        record = SignalRecord(name, len(signals) + 1, copy.deepcopy(params), request_id, time.time())
        signals.append(record)
        if request_id is not None:
            self._signal_requests[(name, request_id)] = record
        return copy.deepcopy(record), True

    async def send_signal(self, name: str, params: dict[str, Any], request_id: str | None = None
                          ) -> tuple[SignalRecord, bool]:
        found = self._add_signal(name, params, request_id)
        if found[1]:
            self.wakeups().notify()
        return found

    async def get_signal(self, name: str, seq: int | None = None) -> SignalRecord | None:
        signals = self._signals.get(name, [])
        if seq is None:
            return copy.deepcopy(signals[-1]) if signals else None
        return copy.deepcopy(signals[seq - 1]) if 1 <= seq <= len(signals) else None

    async def list_signals(self, name: str, after: int = 0, limit: int = 100) -> list[SignalRecord]:
        return [copy.deepcopy(s) for s in self._signals.get(name, [])[max(0, after):max(0, after) + limit]]

    # -- triggers ---------------------------------------------------------------------------------

    async def list_active_versions(self) -> dict[str, int]:
        return {wid: v.version for wid, versions in sorted(self._definitions.items()) for v in versions if v.active}

    async def get_trigger_checkpoint(self, workflow_id: str, key: str) -> dict[str, Any] | None:
        found = self._checkpoints.get((workflow_id, key))
        return copy.deepcopy(found)

    async def save_trigger_checkpoint(self, workflow_id: str, key: str, value: Any, *,
                                      fired_at: float | None = None) -> None:
        before = self._checkpoints.get((workflow_id, key))
        if fired_at is None and before is not None:
            fired_at = before["fired_at"]
        self._checkpoints[(workflow_id, key)] = {"workflow_id": workflow_id, "key": key,
                                                 "value": copy.deepcopy(value), "fired_at": fired_at,
                                                 "saved_at": time.time()}

    async def list_trigger_checkpoints(self, workflow_id: str | None = None) -> list[dict[str, Any]]:
        return [copy.deepcopy(c) for (wid, _), c in sorted(self._checkpoints.items())
                if workflow_id is None or wid == workflow_id]

    async def set_triggers_paused(self, workflow_id: str, paused: bool, *, by: str) -> bool:
        was = workflow_id in self._paused
        if paused and not was:
            self._paused[workflow_id] = {"workflow_id": workflow_id, "by": by, "at": time.time()}
        elif was and not paused:
            del self._paused[workflow_id]
        return was != paused

    async def get_triggers_paused(self, workflow_id: str) -> dict[str, Any] | None:
        found = self._paused.get(workflow_id)
        return None if found is None else dict(found)

    async def list_paused_triggers(self) -> list[dict[str, Any]]:
        return [dict(p) for _, p in sorted(self._paused.items())]


@hookimpl
def legato_register_storage(registry):
    registry.add("memory", MemoryStorage)
