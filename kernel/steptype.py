"""The contract between the kernel and a step type (DESIGN §6).

A step type is a class with a ``name``, an optional pydantic ``Params`` model for the
configuration it reads from the step's params, and ``async run(ctx) -> StepResult``.  Step
failures are data (a :class:`StepResult`), never exceptions: an exception escaping ``run`` is a
broken contract and ends the attempt INTERNALLY_FAILED.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import pydantic

__all__ = ["Outcome", "StepResult", "StepContext", "StepType"]


class Outcome(str, enum.Enum):
    """How a step's work ended."""

    DONE = "DONE"
    USER_ERROR = "USER_ERROR"  # the step's own work failed: retried under error_retry_limit
    PLATFORM_ERROR = "PLATFORM_ERROR"  # the infrastructure could not run it: platform_retry_limit
    FATAL_ERROR = "FATAL_ERROR"  # retrying cannot help


@dataclass(slots=True)
class StepResult:
    """What ``StepType.run`` returns.

    ``retryable=False`` lets a step declare that a failure must not be retried (the attempt ends
    FATALLY_FAILED whatever the retry policy says).
    """

    outcome: Outcome = Outcome.DONE
    outputs: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    retryable: bool = True

    @classmethod
    def done(cls, outputs: Mapping[str, Any] | None = None, message: str = "") -> "StepResult":
        return cls(Outcome.DONE, dict(outputs or {}), message)

    @classmethod
    def user_error(cls, message: str, outputs: Mapping[str, Any] | None = None) -> "StepResult":
        return cls(Outcome.USER_ERROR, dict(outputs or {}), message)

    @classmethod
    def platform_error(cls, message: str) -> "StepResult":
        return cls(Outcome.PLATFORM_ERROR, {}, message)

    @classmethod
    def fatal_error(cls, message: str, outputs: Mapping[str, Any] | None = None) -> "StepResult":
        return cls(Outcome.FATAL_ERROR, dict(outputs or {}), message)


class StepContext:
    """Everything a running attempt may use.

    - ``params``: the step's evaluated params (plain JSON-like values), ``config``: the same
      validated by the step type's ``Params`` model (``None`` when it declares none);
    - ``workflow_params``: the instance's evaluated workflow params;
    - ``workdir``: the instance's shared working directory (created on first use);
    - ``attempt_dir``: a directory private to this attempt (created on first use);
    - ``outputs_path``: a file private to this attempt for outputs (``$LEGATO_OUTPUT``);
    - ``idempotency_key``: unique per attempt, stable across crash and resume;
    - ``log(stream, text)``: append to the step's log (streamed to storage while it runs);
    - ``await record_handle(handle)``: durably record what a restarted kernel needs to reattach.
    """

    __slots__ = (
        "instance_id",
        "workflow_id",
        "step_id",
        "attempt",
        "params",
        "config",
        "workflow_params",
        "idempotency_key",
        "definition_dir",
        "_workspace",
        "_workdir",
        "_attempt_dir",
        "_log",
        "_record_handle",
    )

    def __init__(
        self,
        *,
        instance_id: str,
        workflow_id: str,
        step_id: str,
        attempt: int,
        params: dict[str, Any],
        config: Any,
        workflow_params: dict[str, Any],
        workspace: Path,
        definition_dir: Path | None,
        log: Callable[[str, str], None],
        record_handle: Callable[[Any], Any],
    ) -> None:
        self.instance_id = instance_id
        self.workflow_id = workflow_id
        self.step_id = step_id
        self.attempt = attempt
        self.params = params
        self.config = config
        self.workflow_params = workflow_params
        self.idempotency_key = f"{instance_id}:{step_id}:{attempt}"
        self.definition_dir = definition_dir
        self._workspace = workspace
        self._workdir: Path | None = None
        self._attempt_dir: Path | None = None
        self._log = log
        self._record_handle = record_handle

    @property
    def workdir(self) -> Path:
        """The instance's working directory, shared by its steps (files flow from step to step)."""
        if self._workdir is None:
            self._workdir = _ensure_dir(self._workspace / self.instance_id)
        return self._workdir

    @property
    def outputs_path(self) -> Path:
        """A file path private to this attempt where its process may write ``key=value`` or JSON
        lines of outputs (what step types export as ``$LEGATO_OUTPUT``). Not created."""
        return _ensure_dir(self._workspace / self.instance_id / ".legato") / f"{self.step_id}.{self.attempt}.outputs"

    @property
    def attempt_dir(self) -> Path:
        """A directory private to this attempt, for outputs files and artifacts."""
        if self._attempt_dir is None:
            path = self._workspace / self.instance_id / ".legato" / f"{self.step_id}.{self.attempt}"
            try:
                os.mkdir(path)  # one system call once the instance's .legato exists
            except FileExistsError:
                pass
            except FileNotFoundError:
                os.makedirs(path, exist_ok=True)
            self._attempt_dir = path
        return self._attempt_dir

    def log(self, stream: str, text: str) -> None:
        """Append ``text`` to the step's ``stream`` ("stdout" or "stderr") log. Never blocks.
        Call it from the event loop's thread (from a worker thread: ``trio.from_thread.run_sync``)."""
        self._log(stream, text)

    async def record_handle(self, handle: Any) -> None:
        """Record a JSON-able handle (a pid, a container id). For a step type that can reattach
        it is durable when this returns; for others it is written with the next commit and
        serves to reap what a crashed kernel left running."""
        await self._record_handle(handle)


_made: set[Path] = set()


def _ensure_dir(path: Path) -> Path:
    """Create ``path`` once per process (a step per second would otherwise pay a mkdir each)."""
    if path not in _made:
        os.makedirs(path, exist_ok=True)
        _made.add(path)
    return path


class StepType:
    """Base class of every step type. Subclass it, set ``name``, implement ``run``.

    Class attributes:

    - ``name``: the ``type`` used in definitions;
    - ``description``: one line for ``legato plugins``;
    - ``Params``: a pydantic model of the params the step type reads (extra params are allowed:
      they are the user's data). Literal values are validated when a definition is loaded,
      evaluated values before the step starts.
    - ``raw_params``: params that are code for the step type (a bash ``script``, a SQL ``query``):
      Legato does not interpolate ``${…}`` in them, so values never get pasted into code.

    A cancelled ``run`` must end within 2 seconds (the conformance suite's bound).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Params: ClassVar[type["pydantic.BaseModel"] | None] = None
    raw_params: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings = dict(settings or {})

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this step type cannot run here (a missing library, with the install hint), or None."""
        return None

    async def run(self, ctx: StepContext) -> StepResult:  # pragma: no cover - abstract
        """Do the step's work. Honour trio cancellation within 2 s; leave nothing behind."""
        raise NotImplementedError

    #: Set to True by step types that implement :meth:`reattach`.
    can_reattach: ClassVar[bool] = False

    async def reattach(self, ctx: StepContext, handle: Any) -> StepResult:  # pragma: no cover
        """Follow a step started by a previous kernel (found through ``handle``) to its end."""
        raise NotImplementedError

    async def release(self, ctx: StepContext, handle: Any) -> None:
        """Free what this attempt kept after its work ended (found through the ``handle`` it
        recorded), once the attempt's end is durable.

        Called by the kernel after the commit that holds the attempt's terminal state, and again
        on resume for ended attempts (a crash may have come between that commit and this call),
        so it must be idempotent and bounded in time (the kernel gives it 5 s). It lets a step
        type keep the evidence of its result (a finished container with its exit code, logs and
        outputs) until nothing can ask for it again: a kernel that crashes after the work ended
        but before its result was committed reattaches and reads that result instead of running
        the work a second time. Only step types that override it pay for the call. The default
        does nothing."""

    def reap(self, ctx: StepContext, handle: Any) -> None:
        """Stop whatever a previous kernel left running for this attempt (found through the
        ``handle`` it recorded), when the attempt cannot be reattached. Must not block for long
        and must not touch anything that is not this attempt's. The default does nothing."""
