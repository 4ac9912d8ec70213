"""The storage interface every backend implements (DESIGN §6, Storage).

The kernel writes through :meth:`Storage.commit` only: one call per scheduling tick carries every
change of that tick (group commit), atomically, fenced by the instance's lease generation.
Reads serve the CLI (``status``, ``logs``) and recovery.  ``memory://`` is the reference backend;
the SQL backend implements the same methods.
"""

from __future__ import annotations

import abc
from typing import Any

from .model import (ActionRecord, AttemptRecord, Batch, DefinitionVersion, Event, InstanceRecord, Lease, LogChunk,
                    SignalRecord)
from .states import InstanceStatus

__all__ = ["Storage", "StorageError", "StaleWrite", "VersionNotFound", "open_storage", "parse_version"]


class StorageError(Exception):
    """Storage could not do what was asked; the message says what to do."""


class StaleWrite(StorageError):
    """A write carried a lease generation that is no longer current: another worker owns the instance."""


class VersionNotFound(StorageError):
    """A workflow, or a version of it, that the store does not hold; the message says what it holds."""


def parse_version(spec: Any) -> str | int:
    """``spec`` as :meth:`Storage.get_definition` reads it: ``"active"`` (also None), ``"latest"``
    or a version number (an int, or a string of digits as a command line or a step's params give
    it). The one place that reads a version spec (``legato start --version``, the subworkflow
    step's ``subworkflow_version``). Raises ValueError saying what is accepted."""
    if spec is None:
        return "active"
    if isinstance(spec, bool):
        raise ValueError(f"a version must be active, latest or a number from 1, got {spec!r}")
    if isinstance(spec, int):
        if spec >= 1:
            return spec
    elif isinstance(spec, str):
        text = spec.strip().lower()
        if text in ("active", "latest"):
            return text
        if text.isdigit() and text.isascii() and int(text) >= 1 and len(text) < 19:
            return int(text)
    raise ValueError(f"a version must be active, latest or a number from 1, got {spec!r:.40}")


def _span(versions: list[int]) -> str:
    if not versions:
        return "no versions"
    if versions == list(range(versions[0], versions[-1] + 1)) and len(versions) > 1:
        return f"versions {versions[0]}–{versions[-1]}"
    return f"version{'s' if len(versions) > 1 else ''} {', '.join(map(str, versions))}"


class Storage(abc.ABC):
    """Abstract storage backend. All methods that do I/O are async."""

    url: str = ""

    async def open(self) -> None:
        """Prepare the backend (create files, run migrations). Called once before use."""

    async def aclose(self) -> None:
        """Release resources. Everything committed stays."""

    def exists(self) -> bool:
        """Whether the store is already there, checked before :meth:`open` and without creating
        anything: read-only commands (``status``, ``list``, ``logs``) refuse to open a store that
        does not exist rather than create an empty one. A file-backed store answers whether its
        file exists; a server-backed or in-memory one is there once reachable (the default)."""
        return True

    async def __aenter__(self) -> "Storage":
        await self.open()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # -- definitions ----------------------------------------------------------------------
    @abc.abstractmethod
    async def push_definition(self, workflow_id: str, document: dict[str, Any],
                              activate: bool = True) -> DefinitionVersion:
        """Store ``document`` as a new immutable version (numbered from 1) and, with ``activate``,
        make it the active one. A document identical to a version already stored stores nothing:
        that version comes back (made active with ``activate``) with ``new`` False."""

    @abc.abstractmethod
    async def get_definition(self, workflow_id: str, version: str | int | None = None) -> DefinitionVersion | None:
        """The version ``version`` names (see :func:`parse_version`: None or ``"active"``,
        ``"latest"``, a number), or None when there is no such version."""

    @abc.abstractmethod
    async def list_versions(self, workflow_id: str) -> list[DefinitionVersion]:
        """Every stored version of ``workflow_id``, oldest first (none: an empty list)."""

    @abc.abstractmethod
    async def activate(self, workflow_id: str, version: int) -> DefinitionVersion:
        """Make ``version`` the active one (an instance started without a version runs it).
        Raises :class:`VersionNotFound` when there is no such version."""

    async def require_definition(self, workflow_id: str, version: str | int | None = None) -> DefinitionVersion:
        """:meth:`get_definition`, raising :class:`VersionNotFound` that says which versions
        exist when there is none (``workflow 'x' has versions 1–3; version 7 does not exist``).
        A malformed ``version`` raises VersionNotFound too, saying what is accepted."""
        try:
            spec = parse_version(version)
        except ValueError as exc:
            raise VersionNotFound(f"workflow {workflow_id!r}: {exc}") from None
        found = await self.get_definition(workflow_id, spec)
        if found is not None:
            return found
        raise VersionNotFound(await self._no_version(workflow_id, spec))

    async def _no_version(self, workflow_id: str, spec: str | int) -> str:
        versions = [v.version for v in await self.list_versions(workflow_id)]
        if not versions:
            return (f"no workflow {workflow_id!r} in {self.url or 'the store'}: push its definition first "
                    "(`legato push FILE`)")
        if spec == "active":
            return f"workflow {workflow_id!r} has {_span(versions)} and none is active: `legato activate` one"
        return f"workflow {workflow_id!r} has {_span(versions)}; version {spec} does not exist"

    # -- instances ------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_instance(self, record: InstanceRecord, owner: str | None = None,
                              ttl: float = 0.0) -> tuple[InstanceRecord, bool]:
        """Insert ``record``; if its ``request_id`` is already known for that workflow, return the
        existing instance and False instead (idempotent start). With ``owner``, the new instance
        is created already leased to it for ``ttl`` seconds (generation 1), so no other worker
        sees it as abandoned before its owner starts running it.

        Under a run strategy (``record.run_strategy``), in the same transaction, as
        :func:`legato.strategy.on_arrival` decides from :meth:`strategy_queue`'s counts: the new
        instance may come back queued (``queued`` True, no lease) although ``owner`` was given,
        or STOPPED at once (FIRST_ONLY), and the queued ones of its workflow may end STOPPED
        (LAST_ONLY, SERIAL_LATEST_ONLY), each with a timeline event saying why."""

    async def start_instance(self, document: dict[str, Any], record: InstanceRecord, owner: str,
                             ttl: float) -> tuple[InstanceRecord, bool]:
        """:meth:`push_definition` of ``document`` for ``record.workflow_id``, then
        :meth:`create_instance` of ``record`` leased to ``owner``; ``record.version`` is set to the
        version pushed. A backend may do both in one transaction (what a start costs)."""
        version = await self.push_definition(record.workflow_id, document)
        record.version = version.version
        return await self.create_instance(record, owner, ttl)

    @abc.abstractmethod
    async def commit(self, batch: Batch) -> None:
        """Apply one tick's changes atomically. Raise :class:`StaleWrite` if ``batch.generation``
        is older than the instance's current lease generation. The permits of
        ``batch.permits_released`` are dropped in the same transaction, then :meth:`wakeups`
        notified (steps elsewhere may be waiting for them)."""

    @abc.abstractmethod
    async def get_instance(self, instance_id: str) -> InstanceRecord | None: ...

    @abc.abstractmethod
    async def list_instances(self, workflow_id: str | None = None, limit: int = 50,
                             status: InstanceStatus | None = None) -> list[InstanceRecord]:
        """At most ``limit`` instances, newest first; only those of ``workflow_id`` and only those
        in ``status`` when given."""

    async def list_workflows(self) -> list[str]:
        """The id of every workflow with a stored version, sorted (the web UI's first page)."""
        raise StorageError(f"{self.url or 'this store'} cannot list its workflows")

    @abc.abstractmethod
    async def find_instances(self, prefix: str, limit: int = 10) -> list[InstanceRecord]:
        """Instances whose id starts with ``prefix`` (compared exactly: case-sensitive, no
        wildcards), ordered by id, at most ``limit``; an exact id is among them. The CLI resolves
        a unique prefix to its instance and lists the candidates of an ambiguous one."""

    @abc.abstractmethod
    async def get_attempts(self, instance_id: str) -> list[AttemptRecord]:
        """Every attempt of every step, ordered by step creation then attempt."""

    @abc.abstractmethod
    async def get_timeline(self, instance_id: str) -> list[Event]: ...

    async def get_timeline_since(self, instance_id: str, offset: int) -> list[Event]:
        """What :meth:`get_timeline` returns from position ``offset`` on (0-based): a follower (the
        web UI's event stream) asks again with ``offset`` plus the number of events it has read.
        This default reads them all; backends override it to read only the new ones."""
        return (await self.get_timeline(instance_id))[offset:]

    async def get_timeline_tail(self, instance_id: str, last: int) -> tuple[int, list[Event]]:
        """(how many events the timeline holds, its last ``last`` events): what a page shows
        first, the count being the offset it then follows from with :meth:`get_timeline_since`.
        This default reads them all; backends override it to read only the tail."""
        events = await self.get_timeline(instance_id)
        return len(events), events[max(0, len(events) - last):]

    @abc.abstractmethod
    async def get_logs(self, instance_id: str, step_id: str | None = None, attempt: int | None = None) -> list[LogChunk]: ...

    async def get_logs_since(self, instance_id: str, offset: int, step_id: str | None = None,
                             attempt: int | None = None) -> list[LogChunk]:
        """What :meth:`get_logs` returns with the same filter, from position ``offset`` on (0-based,
        in the same order). A follower (``legato logs -f``, the live view) asks again with
        ``offset`` plus the number of chunks it has read and gets only those committed since.
        This default reads them all; backends override it to read only the new ones."""
        return (await self.get_logs(instance_id, step_id, attempt))[offset:]

    # -- leases ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def acquire_lease(self, instance_id: str, owner: str, ttl: float,
                            generation: int | None = None) -> int | None:
        """Take or renew the instance's lease for ``owner``; return the generation to write with,
        or None while another owner's lease is live (:attr:`Lease.live`: a holder that ran on this
        machine and whose process is gone frees it at once). Taking a lease from another owner
        increments the generation, so that owner's writes are rejected from then on (fencing).
        The owner that holds it renews it and keeps its generation, even past its expiry (a
        paused worker that nobody replaced carries on). With ``generation`` (a heartbeat), only
        renew: None, changing nothing, unless ``owner`` still holds it at that generation.
        Record the calling process's :func:`legato.processes.this_process` with the lease.
        A queued instance (never leased) is taken only when its run strategy lets it start
        (:func:`legato.strategy.may_start`, decided in the same transaction): else None."""

    @abc.abstractmethod
    async def get_lease(self, instance_id: str) -> Lease | None:
        """Who holds (or last held) the instance's lease; None if it never had one."""

    @abc.abstractmethod
    async def list_leased(self, limit: int = 100) -> list[tuple[InstanceRecord, Lease]]:
        """Instances not yet ended whose lease is live (held by a live owner), oldest first: what
        a resume has to wait for."""

    @abc.abstractmethod
    async def release_lease(self, instance_id: str, owner: str) -> None:
        """Give the lease up (the instance ended, or the owner shuts down cleanly)."""

    @abc.abstractmethod
    async def list_resumable(self, limit: int = 100) -> list[InstanceRecord]:
        """Instances not yet ended whose lease is not live (free, expired, or its holder is
        known to be dead), oldest first; of the queued ones only those their run strategy lets
        start now (what :meth:`acquire_lease` would hand out). :meth:`release_lease` of an ended
        instance with queued ones behind it notifies :meth:`wakeups`."""

    async def claim_resumable(self, owner: str, ttl: float, limit: int = 100,
                              skip=frozenset()) -> list[tuple[InstanceRecord, int]]:
        """Take the leases of up to ``limit`` of the instances :meth:`list_resumable` lists (but
        those in ``skip``), oldest first, as :meth:`acquire_lease` does for ``owner``; return each
        taken one with the generation to write with. Each record is as it was when its lease was
        taken (a worker runs it from there). What a worker claims with; this default takes them
        one by one, a store may take them all in one transaction."""
        out: list[tuple[InstanceRecord, int]] = []
        for record in await self.list_resumable(limit + len(skip)):
            if len(out) >= limit:
                break
            if record.instance_id in skip:
                continue
            generation = await self.acquire_lease(record.instance_id, owner, ttl)
            if generation is None:
                continue  # another live worker has it, or it is no longer its turn
            if generation > 1 or record.run_strategy in ("last_only", "serial_latest_only"):
                # someone ran it before us, or a newer start may have stopped it since it was listed
                record = await self.get_instance(record.instance_id)
                if record is None:
                    continue
            out.append((record, generation))
        return out

    # -- run strategies (legato.strategy) ----------------------------------------------------
    @abc.abstractmethod
    async def strategy_queue(self, instance_id: str):
        """A :class:`legato.strategy.Queue` of the other instances of ``instance_id``'s workflow:
        started and unfinished ones, the queued ones created before it, and (STRICT_SEQUENTIAL)
        a failed one that blocks the queue. An empty Queue for an unknown instance."""

    @abc.abstractmethod
    async def end_queued(self, instance_id: str, status: InstanceStatus, message: str) -> InstanceRecord | None:
        """End a queued instance (created, never taken by anyone) at once as ``status`` (STOPPED,
        FAILED), with a timeline event carrying ``message``, in one transaction, and return it;
        None, changing nothing, once anyone has taken it (its owner ends it instead). What a stop
        or kill of a waiting instance does: its run strategy may refuse it a lease for long."""

    @abc.abstractmethod
    async def unblock_workflow(self, workflow_id: str, by: str, ts: float) -> list[str]:
        """Mark every instance of ``workflow_id`` that ended FAILED and blocks its queue as
        unblocked at its current run, with an ``UNBLOCKED`` event naming ``by`` at ``ts``
        (:func:`legato.strategy.unblocked_event`), in one transaction; their ids, oldest first.
        Callers use :func:`legato.strategy.unblock`."""

    # -- actions ----------------------------------------------------------------------------
    @abc.abstractmethod
    async def request_action(self, instance_id: str, verb: str, *, step_id: str | None = None,
                             params: dict[str, Any] | None = None, requested_by: str) -> ActionRecord:
        """Record an action asked of ``instance_id`` (or of its step ``step_id``), pending, and
        return it with its id (growing: later requests get larger ids). Nothing is checked here:
        :func:`legato.actions.request_action` validates first."""

    @abc.abstractmethod
    async def pending_actions(self, instance_ids) -> list[ActionRecord]:
        """The actions of these instances not applied yet, oldest first (what the process that
        runs them has to apply)."""

    @abc.abstractmethod
    async def mark_action_applied(self, action_id: int, outcome: str) -> bool:
        """Mark a pending action applied now, with ``outcome``; False (changing nothing) when it
        was applied already (or there is no such action): whoever marks it first decides."""

    @abc.abstractmethod
    async def list_actions(self, instance_id: str) -> list[ActionRecord]:
        """Every action asked of the instance, applied or not, oldest first."""
    # -- permits (legato.permits) ------------------------------------------------------------
    # A held permit is a row (key, holder); a key is ``workflow:<id>`` (step_concurrency),
    # ``tree:<root instance id>`` (instance_step_concurrency) or ``tag:<name>``. A holder whose
    # instance's lease is not live (expired, released: the instance ended or was handed back; or
    # its process is known to be gone, :attr:`Lease.live`) holds nothing: its rows are dropped
    # when the key is counted.

    async def acquire_permits(self, requests: list[tuple[tuple[str, str, int], list[tuple[str, int | None]]]]
                              ) -> list[tuple[str, int, int] | None]:
        """For each request ``((instance_id, step_id, attempt), [(key, limit), …])``, in order,
        in one transaction: if every key with a limit has fewer live holders than its limit (a
        ``tag:`` key's limit is the one :meth:`set_tag_permit` set, else the one given; None:
        no limit), the attempt holds all its keys from now on (None in the answer); otherwise
        it holds nothing and the answer is ``(key, held, limit)`` of the first full key. An
        attempt asking again for a key it holds is not counted against itself."""
        raise StorageError(f"{self.url or 'this store'} keeps no permits: use a store that does (sqlite:///…, memory://)")

    async def release_permits(self, instance_id: str, keep: list[tuple[str, int]] = ()) -> None:
        """Drop every permit the instance's attempts hold but those of ``keep`` ((step_id,
        attempt) pairs): a resumed run frees what its crashed owner held."""
        raise StorageError(f"{self.url or 'this store'} keeps no permits")

    async def set_tag_permit(self, tag: str, limit: int, *, by: str) -> None:
        """How many steps carrying ``tag`` may run at once (over a step's own tag permit), set by
        ``by``; replaces an earlier limit."""
        raise StorageError(f"{self.url or 'this store'} keeps no permits")

    async def get_tag_permits(self) -> list[dict[str, Any]]:
        """Every tag limit set, by tag: ``{"tag", "limit", "held", "set_by", "set_at"}`` (``held``:
        live holders now; ``set_at``: epoch seconds)."""
        raise StorageError(f"{self.url or 'this store'} keeps no permits")

    async def delete_tag_permit(self, tag: str) -> bool:
        """Remove ``tag``'s limit (steps fall back to their tag's own permit, if any); False when
        none was set."""
        raise StorageError(f"{self.url or 'this store'} keeps no permits")

    # -- signals (legato.signals) ------------------------------------------------------------
    # A signal is a row (name, seq, params, request_id, created_at); ``seq`` counts from 1 per
    # name in the order the store accepted them; (name, request_id) is unique.

    async def send_signal(self, name: str, params: dict[str, Any], request_id: str | None = None
                          ) -> tuple[SignalRecord, bool]:
        """Store a signal of ``name`` with ``params`` (checked by the caller:
        :func:`legato.signals.check_signal`), numbered after the name's last one, in one
        transaction, then notify :meth:`wakeups` (steps and triggers may wait for it). A
        ``request_id`` the name knows already: that signal and False, storing nothing."""
        raise StorageError(f"{self.url or 'this store'} keeps no signals: use a store that does "
                           "(sqlite:///…, memory://)")

    async def get_signal(self, name: str, seq: int | None = None) -> SignalRecord | None:
        """Signal ``seq`` of ``name`` (None: its latest), or None when there is none."""
        raise StorageError(f"{self.url or 'this store'} keeps no signals")

    async def list_signals(self, name: str, after: int = 0, limit: int = 100) -> list[SignalRecord]:
        """At most ``limit`` signals of ``name`` numbered above ``after``, oldest first (what a
        signal trigger reads since its checkpoint)."""
        raise StorageError(f"{self.url or 'this store'} keeps no signals")

    async def match_signal(self, name: str, match) -> SignalRecord | None:
        """The latest signal of ``name`` that meets every condition of ``match`` (``[(param,
        operator, value), …]``, :func:`legato.signals.satisfied`), or None. This default reads
        them all, newest first; a backend may override it with a query."""
        from .signals import satisfied

        latest = await self.get_signal(name)
        if latest is None:
            return None
        top = latest.seq + 1
        while top > 1:
            after = max(0, top - 1 - 500)
            page = await self.list_signals(name, after, top - 1 - after)
            for signal in reversed(page):
                if signal.seq < top and satisfied(signal.params, match):
                    return signal
            top = after + 1
        return None

    # -- triggers (legato.triggers) -----------------------------------------------------------
    # A checkpoint is one JSON value per (workflow, trigger key): what the trigger has consumed
    # (a cron trigger: its last tick). Pauses are per workflow, whatever its version.

    async def list_active_versions(self) -> dict[str, int]:
        """Every workflow that has an active version: workflow id -> that version (what the
        trigger host polls; cheap: no documents)."""
        raise StorageError(f"{self.url or 'this store'} keeps no definitions to trigger")

    async def get_trigger_checkpoint(self, workflow_id: str, key: str) -> dict[str, Any] | None:
        """The checkpoint of trigger ``key`` of ``workflow_id``: ``{"workflow_id", "key", "value",
        "fired_at", "saved_at"}`` (``fired_at``: when it last started an instance, or None;
        epoch seconds), or None when none was saved."""
        raise StorageError(f"{self.url or 'this store'} keeps no trigger checkpoints")

    async def save_trigger_checkpoint(self, workflow_id: str, key: str, value: Any, *,
                                      fired_at: float | None = None) -> None:
        """Replace the checkpoint of trigger ``key`` of ``workflow_id`` with the JSON ``value``,
        durably; ``fired_at`` None keeps the ``fired_at`` saved before."""
        raise StorageError(f"{self.url or 'this store'} keeps no trigger checkpoints")

    async def list_trigger_checkpoints(self, workflow_id: str | None = None) -> list[dict[str, Any]]:
        """Every checkpoint (of ``workflow_id`` when given), as :meth:`get_trigger_checkpoint`
        returns them, by workflow then key."""
        raise StorageError(f"{self.url or 'this store'} keeps no trigger checkpoints")

    async def set_triggers_paused(self, workflow_id: str, paused: bool, *, by: str) -> bool:
        """Pause (``paused``) or resume every trigger of ``workflow_id``, recording who; False,
        changing nothing, when it already was so."""
        raise StorageError(f"{self.url or 'this store'} keeps no trigger pauses")

    async def get_triggers_paused(self, workflow_id: str) -> dict[str, Any] | None:
        """``{"workflow_id", "by", "at"}`` while ``workflow_id``'s triggers are paused, else None."""
        raise StorageError(f"{self.url or 'this store'} keeps no trigger pauses")

    async def list_paused_triggers(self) -> list[dict[str, Any]]:
        """Every paused workflow, as :meth:`get_triggers_paused` returns it, by workflow id."""
        raise StorageError(f"{self.url or 'this store'} keeps no trigger pauses")

    # -- waking workers ---------------------------------------------------------------------
    def wakeups(self):
        """How this store tells its idle workers that work was queued: a
        :class:`legato.wakeup.Wakeups` (a backend returns the same object on every call). A
        backend notifies it after committing an instance created without an owner (queued); a
        worker notifies it when it hands instances back. The default tells nobody: workers find
        work by polling."""
        from .wakeup import Wakeups

        return Wakeups()


def open_storage(url: str, plugins=None) -> Storage:
    """Build the backend registered for ``url``'s scheme (``memory://``, ``sqlite:///…``)."""
    from .plugin_manager import get_plugins

    plugins = plugins or get_plugins()
    scheme = url.split(":", 1)[0] if ":" in url else url
    factory = plugins.storage.factories.get(scheme)
    if factory is None:
        known = ", ".join(sorted(plugins.storage.factories)) or "none installed"
        raise StorageError(f"no storage backend for {url!r}: known schemes are {known}. Check the store URL "
                           f"(--store or LEGATO_STORE), or install the plugin that provides {scheme!r:.40} "
                           "(`legato plugins` lists what is installed)")
    return factory(url)
