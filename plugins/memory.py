"""``memory://``: the reference storage backend. Keeps everything in the process; nothing survives it.

It implements the storage contract exactly (idempotent start, fenced atomic commits, leases), so it
is what other backends are compared against and what benchmarks use as a baseline.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from legato.hookspecs import hookimpl
from legato.model import ActionRecord, AttemptRecord, Batch, DefinitionVersion, Event, InstanceRecord, Lease, LogChunk
from legato.processes import this_process
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
                return copy.copy(self._instances[existing]), False
            self._requests[key] = record.instance_id
        self._instances[record.instance_id] = copy.copy(record)
        self._attempts[record.instance_id] = {}
        self._events[record.instance_id] = []
        self._logs[record.instance_id] = []
        if owner is not None:
            self._leases[record.instance_id] = (owner, time.monotonic() + ttl, 1, this_process())
        elif self._wakeups is not None:
            self._wakeups.notify()  # queued: a worker of this process runs it
        return copy.copy(record), True

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

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        record = self._instances.get(instance_id)
        return copy.copy(record) if record else None

    async def list_instances(self, workflow_id: str | None = None, limit: int = 50,
                             status: InstanceStatus | None = None) -> list[InstanceRecord]:
        rows = [r for r in self._instances.values()
                if (workflow_id is None or r.workflow_id == workflow_id) and (status is None or r.status == status)]
        rows.sort(key=lambda r: r.created_at, reverse=True)
        return [copy.copy(r) for r in rows[:limit]]

    async def find_instances(self, prefix: str, limit: int = 10) -> list[InstanceRecord]:
        return [copy.copy(self._instances[i]) for i in sorted(self._instances) if i.startswith(prefix)][:limit]

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
            new = 1
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

    def _unfinished(self) -> list[tuple[InstanceRecord, Lease | None]]:
        now = time.monotonic()
        return [
            (copy.copy(r), self._lease(self._leases[r.instance_id], now) if r.instance_id in self._leases else None)
            for r in sorted(self._instances.values(), key=lambda r: r.created_at) if not r.status.terminal
        ]

    async def list_resumable(self, limit: int = 100) -> list[InstanceRecord]:
        return [r for r, lease in self._unfinished() if lease is None or not lease.live][:limit]

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


@hookimpl
def legato_register_storage(registry):
    registry.add("memory", MemoryStorage)
