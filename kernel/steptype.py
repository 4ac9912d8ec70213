"""The contract between the kernel and a step type (DESIGN §6).

A step type is a class with a ``name``, an optional pydantic ``Params`` model for the
configuration it reads from the step's params, an optional pydantic ``Settings`` model for what
the operator configures (per worker, never per workflow), and ``async run(ctx) -> StepResult``.
Step failures are data (a :class:`StepResult`), never exceptions: an exception escaping ``run``
is a broken contract and ends the attempt INTERNALLY_FAILED.

Operator settings are validated against ``Settings`` when they are loaded (``legato run
--settings FILE``: a wrong type or an unknown key is exit 2 naming the key, e.g. ``settings
x.yaml: docker.allowed_mounts: must be a list of absolute paths, got a string '/'``), when an
``Engine`` is built with ``step_settings``, and again whenever a step type is instantiated, so a
step type only ever sees settings its model accepted (``self.settings``, a plain dict of every
field, defaults included). A step type without a ``Settings`` model takes no settings.
"""

from __future__ import annotations

import contextvars
import enum
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import pydantic

__all__ = ["Outcome", "StepResult", "StepContext", "StepType", "SettingsError", "validate_settings",
           "validate_step_settings", "RUNNING_ENGINE"]

#: The :class:`legato.engine.Engine` running the current instance, set by ``Engine.run`` for the
#: instance's tasks (a step's task inherits it); what :attr:`StepContext.workflows` builds on.
RUNNING_ENGINE: contextvars.ContextVar[Any] = contextvars.ContextVar("legato_running_engine", default=None)


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
    - ``secrets``: the instance's :class:`legato.secrets.Secrets` when its workflow has secret
      params (``None`` otherwise). ``params`` and ``workflow_params`` hold the resolved values;
      the kernel masks them in logs, messages and outputs, and a step type masks with
      ``secrets.mask(text)`` whatever it writes elsewhere itself (a notebook's output copy);
    - ``await record_handle(handle)``: durably record what a restarted kernel needs to reattach;
    - ``workflows``: start other stored workflows as this step's children and follow them to
      their end (:class:`legato.children.ChildWorkflows`; what the ``subworkflow`` step uses).
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
        "secrets",
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
        secrets: Any = None,
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
        self.secrets = secrets

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
        return _ensure_dir(self._workspace / self.instance_id / ".legato") / f"{_file_name(self.step_id)}.{self.attempt}.outputs"

    @property
    def attempt_dir(self) -> Path:
        """A directory private to this attempt, for outputs files and artifacts."""
        if self._attempt_dir is None:
            path = self._workspace / self.instance_id / ".legato" / f"{_file_name(self.step_id)}.{self.attempt}"
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

    @property
    def workflows(self):
        """A :class:`legato.children.ChildWorkflows` for this attempt: start a stored workflow as
        a child of this step (pinned version, linked to its parent, idempotent per attempt),
        follow it to its end (running it here when no live worker does; cancelled, it stops the
        child). Only inside a step run by an engine (a RuntimeError otherwise)."""
        engine = RUNNING_ENGINE.get()
        if engine is None:
            raise RuntimeError("ctx.workflows is only there while an engine runs the step")
        from .children import ChildWorkflows

        return ChildWorkflows(engine, self)


def _file_name(step_id: str) -> str:
    """A step's path (``loop/3/job`` inside a loop's body) as one file name: ``loop~3~job``."""
    return step_id.replace("/", "~") if "/" in step_id else step_id


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
    - ``argv_params``: params that are argument vectors (a bash ``argv``, a docker ``command``):
      an element that is exactly ``${name}`` is replaced by the value as one whole element;
      ``${…}`` anywhere else in an element is refused when the definition loads, since the
      program (``sh -c …``) might parse the pasted text as code. ``$$`` is a literal ``$``.
    - ``Settings``: a pydantic model of the operator's settings (say ``extra="forbid"``; Legato
      refuses keys the model does not declare in any case). Give a field a ``description``
      ("a list of absolute paths") and a wrong type is reported as "must be <description>".
      ``None``: the step type takes no settings.

    A cancelled ``run`` must end promptly, within 2 seconds on an idle machine (the conformance suite
    checks it with a 10 s hang guard, so that a busy CI machine does not fail a correct plugin).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Params: ClassVar[type["pydantic.BaseModel"] | None] = None
    Settings: ClassVar[type["pydantic.BaseModel"] | None] = None
    raw_params: ClassVar[frozenset[str]] = frozenset()
    argv_params: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        #: The operator's settings as validated by ``Settings`` (every field, defaults included).
        #: Raises :class:`SettingsError` for settings the model refuses.
        self.settings = validate_settings(type(self), settings)

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


class SettingsError(ValueError):
    """Operator settings a step type's ``Settings`` model refuses. ``problems`` holds
    ``(key, message)`` pairs, the key dotted from the step type's name
    (``docker.allowed_mounts``; empty for the settings as a whole); ``str()`` is one line per
    problem."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{key}: {message}" if key else message for key, message in problems))


def validate_settings(cls: type[StepType], raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """``raw`` checked against ``cls.Settings``: a dict of every field (defaults filled in).
    Raises :class:`SettingsError` naming each wrong or unknown key."""
    name = cls.name or cls.__name__
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise SettingsError([(name, f"must be a map of setting -> value, got {_kind(raw)}")])
    model = cls.Settings
    if model is None:
        if raw:
            keys = ", ".join(sorted(str(k) for k in raw))
            raise SettingsError([(name, f"the {name} step type takes no settings (got {keys})")])
        return {}
    import pydantic

    fields = model.model_fields
    known = set(fields) | {f.alias for f in fields.values() if f.alias}
    problems: list[tuple[str, str]] = []
    for key in raw:
        if key not in known:
            import difflib

            close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
            hint = f"did you mean `{close[0]}`?" if close else f"{name}'s settings are: {', '.join(sorted(known))}"
            problems.append((f"{name}.{key}", f"unknown setting ({hint})"))
    try:
        settings = model.model_validate({k: v for k, v in raw.items() if k in known})
    except pydantic.ValidationError as exc:
        seen: set[str] = set()
        for err in exc.errors():
            loc = list(err.get("loc") or ())
            field = fields.get(str(loc[0])) if loc else None
            if field is not None and field.description and not err["type"].startswith("value_error"):
                where, message = [loc[0]], f"must be {field.description}, got {_kind(raw.get(loc[0]))}"
            else:
                where, message = loc, str(err.get("msg", "invalid"))
                if message.startswith("Value error, "):
                    message = message[len("Value error, "):]
            key = name + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in where)
            if key not in seen:
                seen.add(key)
                problems.append((key, message))
    if problems:
        raise SettingsError(problems)
    return settings.model_dump()


def validate_step_settings(types: Mapping[str, type[StepType]],
                           settings: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Every step type's settings in ``settings`` (step type name -> its settings) checked with
    :func:`validate_settings`; a name no installed step type has is a problem too. Raises
    :class:`SettingsError` listing every problem found."""
    if settings is None:
        return {}
    if not isinstance(settings, Mapping):
        raise SettingsError([("", f"must map each step type's name to its settings, got {_kind(settings)}")])
    out: dict[str, dict[str, Any]] = {}
    problems: list[tuple[str, str]] = []
    for name, raw in settings.items():
        cls = types.get(name) if isinstance(name, str) else None
        if cls is None:
            problems.append((str(name), f"no installed step type is named {name!r} "
                                        f"(installed: {', '.join(sorted(types)) or 'none'})"))
            continue
        try:
            out[name] = validate_settings(cls, raw)
        except SettingsError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SettingsError(problems)
    return out


def _kind(value: Any) -> str:
    """A value as an error message shows it: its JSON kind and a short repr."""
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a map", type(None): "null"}.get(type(value), type(value).__name__)
    if value is None:
        return kind
    text = repr(value)
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"
