"""The records Legato keeps: instances, step attempts, timeline events, log chunks.

These are what the kernel hands to storage and what storage hands back.  They are plain
dataclasses of JSON-able values so that every backend can persist them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .states import InstanceStatus, StepStatus

__all__ = ["ActionRecord", "InstanceRecord", "AttemptRecord", "Event", "LogChunk", "Batch", "DefinitionVersion", "Lease"]


@dataclass(slots=True)
class DefinitionVersion:
    """One immutable pushed version of a workflow definition."""

    workflow_id: str
    version: int
    document: dict[str, Any]
    created_at: float
    active: bool = True
    new: bool = False  # push_definition stored it just now (False: an identical version existed)


@dataclass(slots=True)
class InstanceRecord:
    """A workflow instance: one start of one pinned definition version."""

    instance_id: str
    workflow_id: str
    version: int
    status: InstanceStatus = InstanceStatus.CREATED
    run_id: int = 1
    params: dict[str, Any] = field(default_factory=dict)  # evaluated workflow params
    request_id: str | None = None
    initiator: str = "manual"
    created_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    message: str = ""
    #: The time the run is for (epoch seconds), what it reads as ``workflow.run_ts``: a cron
    #: tick's scheduled time. None: ``created_at``.
    run_ts: float | None = None
    #: A subworkflow's chain of parents, root first, the direct parent last (Maestro's
    #: UpstreamInitiator.ancestors): each ``{"workflow_id", "instance_id", "run_id", "step_id",
    #: "attempt"}``. Empty for an instance nothing started from a step.
    ancestors: list[dict[str, Any]] = field(default_factory=list)
    #: The run strategy the instance was started under (its pinned version's rule,
    #: :class:`legato.definition.RunStrategy` value, and how many instances it lets run at once):
    #: the store lets it start only when :mod:`legato.strategy` says so. Empty: no strategy (an
    #: instance recorded before strategies were enforced, or a record built by hand).
    run_strategy: str = ""
    workflow_concurrency: int = 1
    #: Set by the store on the records it returns: created and not yet taken by any process, so
    #: waiting in its workflow's queue (its run strategy) or for a worker.
    queued: bool = False

    @property
    def parent(self) -> dict[str, Any] | None:
        """The instance and step that started this one as a subworkflow, or None."""
        return self.ancestors[-1] if self.ancestors else None


@dataclass(slots=True)
class AttemptRecord:
    """One attempt of one step in one run of an instance."""

    instance_id: str
    step_id: str
    attempt: int
    status: StepStatus = StepStatus.CREATED
    run_id: int = 1
    params: dict[str, Any] | None = None  # evaluated once, reused by later attempts
    outputs: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    created_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    handle: Any = None


@dataclass(slots=True)
class Event:
    """One transition in an instance's timeline. ``step_id`` is None for the instance itself."""

    ts: float
    instance_id: str
    step_id: str | None
    attempt: int
    status: str
    message: str = ""
    #: On the event of an attempt whose failure will be retried: (when the next attempt starts, as
    #: epoch seconds; the last attempt the failure class's retry limit allows). Only the observer
    #: of the running instance sees it (storage keeps the status): ``legato run`` shows "RETRYING".
    retry: tuple[float, int] | None = None


@dataclass(slots=True)
class LogChunk:
    """A piece of a step attempt's stdout or stderr, in arrival order."""

    instance_id: str
    step_id: str
    attempt: int
    stream: str
    text: str
    ts: float


@dataclass(slots=True)
class Batch:
    """Everything one scheduling tick changed, committed to storage as one transaction.

    ``attempts`` maps (step_id, attempt) to the attempt's latest state: only the last write of a
    tick matters, while every transition is kept in ``events``.
    """

    instance_id: str
    generation: int = 0
    instance: InstanceRecord | None = None
    attempts: dict[tuple[str, int], AttemptRecord] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    logs: list[LogChunk] = field(default_factory=list)
    #: Actions (:class:`ActionRecord` ids) this tick applied, with their outcomes: marked applied
    #: in the same transaction as the changes they made (a pending one only: the first mark wins).
    actions: list[tuple[int, str]] = field(default_factory=list)
    #: (step_id, attempt) of attempts whose permits are given back in this commit (legato.permits).
    permits_released: list[tuple[str, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.instance is not None or self.attempts or self.events or self.logs or self.actions
                    or self.permits_released)


@dataclass(slots=True)
class Lease:
    """Who holds an instance's lease: the owner, where its process runs, and for how long.

    ``expires_in`` is in seconds by the storage's clock (zero or less: expired; None: released).
    ``host``, ``pid``, ``started`` and ``namespace`` are those of
    :class:`legato.processes.ProcessIdentity`: on the same machine they tell a dead holder."""

    owner: str
    generation: int
    expires_in: float | None
    host: str = ""
    pid: int | None = None
    started: int | None = None
    namespace: str = ""

    @property
    def live(self) -> bool:
        """Not expired nor released, and its holder is not known to be dead."""
        from .processes import process_gone

        if self.expires_in is None or self.expires_in <= 0:
            return False
        return not process_gone(self.pid, self.started, self.namespace)

    def describe(self) -> str:
        """The holder for people: ``worker-id (pid 123 on host)``."""
        where = f"pid {self.pid} on {self.host}" if self.pid is not None else self.host
        return f"{self.owner} ({where})" if where else self.owner


@dataclass(slots=True)
class ActionRecord:
    """An action asked of an instance (``step_id`` None) or of one of its steps, by someone, from any
    process (:mod:`legato.actions`): ``verb`` (stop, kill, restart, skip), its ``params`` (a
    restart's mode), who asked (``requested_by``: ``alice via cli``) and when. Pending until the
    process that runs the instance applies it: then ``applied_at`` is set and ``outcome`` says
    what came of it (``applied: …`` or ``refused: …``)."""

    id: int
    instance_id: str
    verb: str
    step_id: str | None
    params: dict[str, Any]
    requested_by: str
    requested_at: float
    applied_at: float | None = None
    outcome: str = ""
