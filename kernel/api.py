"""The Python API: run a workflow from a notebook, a script or a test.

``legato.run(definition, params=…, store=…)`` runs one instance to its end and returns it with its
steps; ``await legato.arun(…)`` does the same inside an async function, under trio or asyncio
(a Jupyter notebook's ``await``). ``definition`` is a path, a JSON or YAML text, a dict or a
loaded :class:`~legato.definition.Definition`.

Errors are the CLI's, as exceptions: :class:`~legato.definition.DefinitionError` (every problem,
located by JSON pointer), :class:`~legato.engine.StartError` (a param the start refuses),
:class:`~legato.storage.StorageError` (a store that cannot be opened or stops working),
:class:`~legato.steptype.SettingsError` (operator settings a step type refuses) and
:class:`~legato.plugin_manager.PluginError`. A workflow that fails is not an error: the returned
instance says ``FAILED`` and each step why.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

from .model import AttemptRecord
from .states import InstanceStatus, StepStatus

__all__ = ["run", "arun", "Instance", "Step", "DefinitionWarning"]

DEFAULT_STORE = "memory://"


class DefinitionWarning(UserWarning):
    """Something a definition says that is accepted but not enforced yet (the CLI's "warning:" lines)."""


@dataclass
class Step:
    """One step of a finished instance: its latest attempt, or ``NOT_CREATED`` if it never ran."""

    id: str
    type: str
    status: StepStatus
    #: The latest attempt's number (1 for the first; 0 when the step was never created).
    attempt: int = 0
    outputs: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    params: dict[str, Any] | None = None
    started_at: float | None = None
    ended_at: float | None = None
    #: What the latest attempt printed (stdout and stderr, in arrival order).
    logs: str = ""
    #: Every attempt of the step, oldest first.
    attempts: list[AttemptRecord] = field(default_factory=list)


@dataclass
class Instance:
    """A workflow instance as it ended, with its steps in definition order."""

    id: str
    workflow_id: str
    version: int
    status: InstanceStatus
    message: str
    params: dict[str, Any]
    steps: dict[str, Step]
    store: str
    started_at: float | None = None
    ended_at: float | None = None

    @property
    def succeeded(self) -> bool:
        """Whether the instance ended SUCCEEDED."""
        return self.status is InstanceStatus.SUCCEEDED

    @property
    def statuses(self) -> dict[str, str]:
        """Each step's status by step id: ``{"extract": "SUCCEEDED", "alert": "UNSATISFIED", …}``."""
        return {sid: step.status.value for sid, step in self.steps.items()}

    def __repr__(self) -> str:
        return f"<Instance {self.id} {self.workflow_id} v{self.version} {self.status.value} {self.statuses}>"


def run(
    definition: Any,
    params: Mapping[str, Any] | None = None,
    *,
    store: Any = DEFAULT_STORE,
    workspace: str | os.PathLike | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    request_id: str | None = None,
    observer: Callable[[Any], None] | None = None,
) -> Instance:
    """Run ``definition`` to its end and return the instance with its steps.

    ``params`` are typed overrides of the workflow's params (``{"threshold": 10}``); ``store`` is a
    storage URL (default ``memory://``: nothing is kept; ``sqlite:///.legato/legato.db`` is where
    the CLI looks) or a :class:`~legato.storage.Storage`; ``workspace`` is where instances get
    their working directories (default ``.legato/runs``); ``settings`` are the operator's settings
    per step type (``{"docker": {"allowed_mounts": ["/data"]}}``); ``request_id`` makes the start
    idempotent (the same id returns the instance it started). ``observer`` is called with every
    timeline event as it becomes durable. Interrupting (Ctrl-C, a notebook's stop button)
    cancels the run.
    """
    call = partial(_arun, definition, params, store=store, workspace=workspace, settings=settings,
                   request_id=request_id, observer=observer)
    library = _async_library()
    if library == "trio":
        raise RuntimeError("legato.run() blocks until the workflow ends; inside a trio task use "
                           "`await legato.arun(...)`")
    if library is not None:  # an asyncio loop runs this thread (a notebook cell): trio gets a thread of its own
        import threading

        box: dict[str, Any] = {}
        started: dict[str, Any] = {}

        def target() -> None:
            try:
                box["result"] = _trio_run(partial(call, started=started))
            except BaseException as exc:  # handed to the caller's thread
                box["error"] = exc

        thread = threading.Thread(target=target, name="legato.run")
        thread.start()
        try:
            thread.join()
        except KeyboardInterrupt:  # the notebook's stop button: stop the instance, then say so
            _stop(started)
            thread.join()
            raise
        if "error" in box:
            raise box["error"]
        return box["result"]
    return _trio_run(call)


async def arun(
    definition: Any,
    params: Mapping[str, Any] | None = None,
    *,
    store: Any = DEFAULT_STORE,
    workspace: str | os.PathLike | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    request_id: str | None = None,
    observer: Callable[[Any], None] | None = None,
) -> Instance:
    """:func:`run` for async code: ``await legato.arun(definition, params=…)``, under trio or
    asyncio. Under asyncio the workflow runs on trio in a worker thread; cancelling the awaiting
    task stops the instance (its running steps are cancelled and their processes killed)."""
    call = partial(_arun, definition, params, store=store, workspace=workspace, settings=settings,
                   request_id=request_id, observer=observer)
    library = _async_library()
    if library == "trio":
        return await call()
    if library != "asyncio":
        raise RuntimeError(f"legato.arun() runs under trio or asyncio, not {library or 'no event loop'}; "
                           "outside async code use legato.run()")
    import asyncio

    started: dict[str, Any] = {}
    future = asyncio.get_running_loop().run_in_executor(None, _trio_run, partial(call, started=started))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        _stop(started)
        await asyncio.wait([future])
        raise


def _stop(started: dict[str, Any]) -> None:
    """Stop, from another thread, the instance that :func:`_arun` runs on trio in a thread of its own."""
    import trio

    started["cancelled"] = True  # read before the instance runs, if it has not yet
    if "token" in started:
        try:
            trio.from_thread.run_sync(started["stop"], trio_token=started["token"])
        except trio.RunFinishedError:
            pass


def _async_library() -> str | None:
    import sniffio

    try:
        return sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return None


def _trio_run(call: Callable[[], Any]) -> Any:
    import trio

    try:
        return trio.run(call)
    except BaseExceptionGroup as group:  # the API's own nursery: raise what happened, not the group
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None


async def _arun(definition, params, *, store, workspace, settings, request_id, observer,
                started: dict[str, Any] | None = None) -> Instance:
    import trio

    from .engine import Engine
    from .plugin_manager import get_plugins
    from .storage import Storage, StorageError, open_storage

    iid: list[str] = []
    if started is not None:  # arun under asyncio: how its cancellation reaches this thread
        def stop() -> None:
            started["cancelled"] = True
            if iid and iid[0] in engine.runs:
                engine.runs[iid[0]].stop("cancelled")

        started.update(token=trio.lowlevel.current_trio_token(), stop=stop)
    plugins = get_plugins()
    storage = store if isinstance(store, Storage) else open_storage(str(store), plugins)
    engine = Engine(storage, plugins=plugins, workspace=workspace, step_settings=dict(settings or {}))
    loaded = _load(engine, definition)
    for warning in loaded.warnings:
        warnings.warn(f"{loaded.source or 'definition'}: {warning}", DefinitionWarning, stacklevel=4)
    try:
        await storage.open()
    except StorageError as exc:
        raise StorageError(f"cannot open the store {storage.url}: {exc}") from None
    try:
        instance, created = await engine.start(loaded, dict(params or {}), request_id=request_id)
        iid.append(instance.instance_id)
        if started is not None and started.get("cancelled"):
            pass  # cancelled while starting: the caller raises CancelledError
        elif created or not instance.status.terminal:
            if created:
                instance = await engine.run(loaded, instance, observer=observer)
            else:  # the same request id, unfinished: carry it on
                instance = await engine.resume(instance.instance_id, observer=observer)
        attempts = await storage.get_attempts(instance.instance_id)
        logs = await storage.get_logs(instance.instance_id)
    finally:
        with trio.CancelScope(shield=True):
            await storage.aclose()
    return _instance(loaded, instance, attempts, logs, storage.url)


def _load(engine, definition):
    from .definition import Definition

    if isinstance(definition, Definition):
        return definition
    if isinstance(definition, os.PathLike):
        return engine.load(Path(definition))
    if isinstance(definition, str) and "\n" not in definition and not definition.lstrip().startswith("{") \
            and len(definition) < 4096 and Path(definition).is_file():
        return engine.load(Path(definition))  # a path whatever its suffix
    return engine.load(definition)  # a path ending .json/.yaml, a document text, or a mapping


def _instance(definition, record, attempts: list[AttemptRecord], logs, store: str) -> Instance:
    text: dict[tuple[str, int], list[str]] = {}
    for chunk in logs:
        text.setdefault((chunk.step_id, chunk.attempt), []).append(chunk.text)
    by_step: dict[str, list[AttemptRecord]] = {}
    for attempt in attempts:
        by_step.setdefault(attempt.step_id, []).append(attempt)
    steps: dict[str, Step] = {}
    for sdef in definition.steps:
        tries = sorted(by_step.get(sdef.id, []), key=lambda a: (a.run_id, a.attempt))
        if not tries:
            steps[sdef.id] = Step(sdef.id, sdef.type, StepStatus.NOT_CREATED)
            continue
        last = tries[-1]
        steps[sdef.id] = Step(
            sdef.id, sdef.type, last.status, last.attempt, dict(last.outputs), last.message, last.params,
            last.started_at, last.ended_at, "".join(text.get((sdef.id, last.attempt), [])), tries,
        )
    return Instance(
        record.instance_id, record.workflow_id, record.version, record.status, record.message,
        dict(record.params), steps, store, record.started_at, record.ended_at,
    )
