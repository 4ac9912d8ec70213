"""``python``: runs a Python callable (``package.module:function``) in a child process.

Params (the configuration of the step type; see README.md for the whole story):

- ``callable`` (string, required): ``package.module:function`` (the attribute part may be a
  dotted path, ``module:Class.method``); checked when the definition is loaded;
- ``kwargs`` (map, optional): keyword arguments for the callable;
- ``python`` (string, optional): the interpreter; default: the one running Legato. A bare name is
  looked up on PATH; a relative path resolves against the definition's directory (else the
  current directory);
- ``working_dir`` (string, optional): the child's current directory, relative paths as for
  ``python``; default: the instance's shared working directory;
- ``sys_path`` (list of strings, optional): directories put in front of the child's
  ``sys.path``, relative ones resolved against the definition's directory (else the current
  directory). Nothing else is added: not the working directory, not the definition's directory.

The callable is called with keyword arguments: every step param that is not one of these config
keys, then ``kwargs`` on top (``kwargs`` wins a name clash, and is how to pass an argument whose
name is a config key). Workflow params are not passed; reference them in a step param. Values
travel as JSON in a request file, never as code.

What it returns: a dict is the step's outputs, ``None`` no outputs, anything else
``{"result": value}``; every output must be JSON-serialisable (a USER_ERROR names the key that is
not). Coroutines (``async def``) are run with ``asyncio.run``. An exception is a USER_ERROR whose
message is ``ExceptionType: message`` and whose traceback is in the step's log; a module or
attribute that cannot be found, or params the callable's signature does not accept, are a
FATAL_ERROR (retrying cannot help). The child runs in its own process group with the
``LEGATO_INSTANCE_ID``, ``LEGATO_STEP_ID``, ``LEGATO_ATTEMPT`` and ``LEGATO_IDEMPOTENCY_KEY``
environment variables and, of the worker's environment, only the minimal base
(``legato.processes.BASE_ENV``) and what the operator allows in the step type's ``inherit_env``
setting (``python: {inherit_env: [PYTHONPATH, "AWS_*"]}``); its stdout and stderr stream into the step's log; the group is killed when
the step is cancelled (SIGTERM, then SIGKILL after ``term_grace``) and after the child exits.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydantic
import trio

from legato import StepResult, StepType
from legato.process_settings import ProcessSettings
from legato.processes import (
    HandleNotRecorded,
    inherit_allowed,
    kill_if_attempts,
    last_line,
    legato_variables,
    process_environment,
    signal_name,
    supervise,
)

__all__ = ["CALLABLE_PATTERN", "CONFIG_KEYS", "MAX_RESULT_BYTES", "PythonParams", "PythonSettings", "PythonStep"]

_IDENT = r"[^\W\d]\w*"
#: What ``callable`` must look like: a dotted module path, a colon, a dotted attribute path.
CALLABLE_PATTERN = rf"{_IDENT}(?:\.{_IDENT})*:{_IDENT}(?:\.{_IDENT})*"
_CALLABLE = re.compile(rf"\A{CALLABLE_PATTERN}\Z")

#: The params the step type reads; every other step param is an argument of the callable.
CONFIG_KEYS = frozenset({"callable", "kwargs", "python", "working_dir", "sys_path"})

#: The largest result file read (the outputs, as JSON); a bigger one fails the step.
MAX_RESULT_BYTES = 1024 * 1024

_CHILD = Path(__file__).with_name("child.py")
_EXIT_TERMINATED = 143


class PythonParams(pydantic.BaseModel):
    """The params the ``python`` step type reads; every other param is an argument of the callable."""

    model_config = pydantic.ConfigDict(extra="allow")

    callable: str = pydantic.Field(description="`package.module:function`")
    kwargs: dict[str, Any] = pydantic.Field(default_factory=dict)
    python: str | None = pydantic.Field(None, min_length=1)
    working_dir: str | None = pydantic.Field(None, min_length=1)
    sys_path: list[str] = pydantic.Field(default_factory=list)

    @pydantic.field_validator("callable")
    @classmethod
    def _callable_form(cls, value: str) -> str:
        if not _CALLABLE.match(value):
            raise ValueError(
                f"expected `package.module:function` (a dotted module path, a colon, then the "
                f"function's name, e.g. `etl.load:main`), got {value!r}")
        return value


class _Unserialisable(ValueError):
    pass


class PythonSettings(ProcessSettings):
    """The operator's settings of the ``python`` step type (``--settings``: ``python: {…}``): ``inherit_env``."""


class PythonStep(StepType):
    """Calls ``callable`` in a child Python process; params arrive as keyword arguments."""

    name = "python"
    description = "calls a Python function (`package.module:function`) in a child process; params are its kwargs"
    Params = PythonParams
    Settings = PythonSettings

    #: Seconds between SIGTERM and SIGKILL when the step is cancelled.
    term_grace: float = 1.0
    #: Seconds to keep reading stdout/stderr after the process group is gone (only a process that
    #: escaped the group can hold the pipes open that long; we stop waiting for it).
    drain_timeout: float = 2.0

    async def run(self, ctx):
        """Run the callable to its end; see the module docstring for the semantics."""
        cfg = ctx.config
        if not isinstance(cfg, PythonParams):
            # Run directly (not through the kernel), or with a config from elsewhere.
            try:
                cfg = PythonParams.model_validate(ctx.params)
            except pydantic.ValidationError as exc:
                return StepResult.fatal_error(f"invalid python params: {exc}")

        cwd = ctx.workdir if cfg.working_dir is None else _resolve(ctx, cfg.working_dir)
        if not cwd.is_dir():
            what = "does not exist" if not cwd.exists() else "is not a directory"
            return StepResult.user_error(f"working_dir {str(cwd)!r} {what}")

        interpreter = self._interpreter(ctx, cfg)
        if not interpreter:
            return StepResult.platform_error("cannot tell which Python runs Legato (sys.executable is empty); "
                                             "set the step's `python` param")
        kwargs = {k: v for k, v in (ctx.params or {}).items() if k not in CONFIG_KEYS}
        kwargs.update(cfg.kwargs)
        attempt_dir = ctx.attempt_dir
        request_path = attempt_dir / "python-request.json"
        result_path = attempt_dir / "python-result.json"
        try:
            request = _to_json({
                "callable": cfg.callable,
                "kwargs": kwargs,
                "sys_path": [str(_resolve(ctx, p)) for p in cfg.sys_path],
                "result_path": str(result_path),
            })
        except _Unserialisable as exc:
            return StepResult.fatal_error(str(exc))
        # A stale result (an earlier run of this same attempt) must not count as this run's.
        try:
            result_path.unlink(missing_ok=True)
            request_path.write_text(request, encoding="utf-8")
        except OSError as exc:
            return StepResult.platform_error(f"cannot write the request for the Python process: {exc}")

        command = [interpreter, "-u", str(_CHILD), str(request_path)]
        try:
            inherit = inherit_allowed(self.settings)
        except ValueError as exc:
            request_path.unlink(missing_ok=True)
            return StepResult.fatal_error(str(exc))
        try:
            proc = await trio.lowlevel.open_process(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=str(cwd),
                env=process_environment(legato_variables(ctx), inherit),
                # Its own process group, so one killpg reaches everything it starts.
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:
            request_path.unlink(missing_ok=True)
            return self._spawn_failure(exc, interpreter, cwd, cfg)
        try:
            returncode, stderr_tail = await supervise(ctx, proc, term_grace=self.term_grace,
                                                      drain_timeout=self.drain_timeout)
        except HandleNotRecorded as exc:
            return StepResult.platform_error(str(exc))
        finally:
            # The params may be secrets: they need not outlive the process that read them.
            request_path.unlink(missing_ok=True)
        result = self._result(result_path, returncode, stderr_tail)
        result_path.unlink(missing_ok=True)  # read: the outputs travel in the StepResult
        return result

    def reap(self, ctx, handle) -> None:
        """Kill the process group a dead kernel left behind, if it is still this attempt's (its
        environment carries this attempt's idempotency key, so a reused pid is left alone)."""
        if isinstance(handle, dict):
            kill_if_attempts(handle.get("pgid"), ctx.idempotency_key)

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _interpreter(ctx, cfg: PythonParams) -> str:
        if cfg.python is None:
            return sys.executable
        if os.sep not in cfg.python and (os.altsep is None or os.altsep not in cfg.python):
            return cfg.python  # a bare name: exec looks it up on PATH
        return str(_resolve(ctx, cfg.python))

    @staticmethod
    def _spawn_failure(exc: Exception, interpreter: str, cwd: Path, cfg: PythonParams) -> StepResult:
        if isinstance(exc, ValueError):  # e.g. a NUL byte in a path
            return StepResult.fatal_error(f"cannot start the Python process: {exc}")
        if getattr(exc, "filename", None) == str(cwd):  # the directory vanished since the check
            return StepResult.user_error(f"working_dir {str(cwd)!r}: {exc.strerror or exc}")
        if cfg.python is None:
            # Failing to exec the interpreter that runs Legato is the host's problem.
            return StepResult.platform_error(f"cannot start {interpreter}: {exc}")
        if isinstance(exc, (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)):
            reason = "not found" if isinstance(exc, FileNotFoundError) else (exc.strerror or str(exc))
            return StepResult.fatal_error(f"cannot run the interpreter {interpreter!r} (`python` param): {reason}")
        return StepResult.platform_error(f"cannot start {interpreter!r}: {exc}")

    @staticmethod
    def _result(path: Path, rc: int, stderr_tail: str) -> StepResult:
        """Map the child's result file and exit code to a StepResult."""
        reported, problem = _read_result(path)
        if reported is not None:
            outcome, outputs, message = reported
            if outcome == "USER_ERROR":
                return StepResult.user_error(message or "the callable failed")
            if outcome == "FATAL_ERROR":
                return StepResult.fatal_error(message or "the callable cannot be run")
            if rc == 0:
                return StepResult.done(outputs)
            # It returned, then something at interpreter exit (atexit, os._exit) failed it.
            return StepResult.user_error(f"the callable returned, then the Python process {_exit(rc)}"
                                         f"{_quote(stderr_tail)}", outputs)
        if problem:
            return StepResult.user_error(problem)
        if rc == 0:
            return StepResult.user_error("the Python process exited without reporting a result "
                                         "(did the callable call os._exit?)")
        return StepResult.user_error(f"the Python process {_exit(rc)} before reporting a result"
                                     f"{_quote(stderr_tail)}")


def _resolve(ctx, path: str) -> Path:
    """``path`` as an absolute path: relative ones against the definition's directory, else the
    current directory."""
    resolved = Path(path).expanduser()
    if not resolved.is_absolute():
        base = Path(ctx.definition_dir) if ctx.definition_dir is not None else Path.cwd()
        resolved = base / resolved
    return resolved


def _to_json(request: dict[str, Any]) -> str:
    try:
        return json.dumps(request, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        pass
    for name, value in request["kwargs"].items():  # find the culprit, to name it
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise _Unserialisable(f"param {name!r} cannot be passed to the callable as JSON: {exc}") from None
    raise _Unserialisable("the step's params cannot be passed to the callable as JSON")


def _read_result(path: Path) -> tuple[tuple[str, dict[str, Any], str] | None, str | None]:
    """((outcome, outputs, message), None), or (None, a problem), or (None, None) when absent."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RESULT_BYTES + 1)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot read the callable's result: {exc}"
    if len(data) > MAX_RESULT_BYTES:
        return None, f"the callable's outputs are larger than {MAX_RESULT_BYTES} bytes as JSON"
    try:
        result = json.loads(data)
        outcome, outputs, message = result["outcome"], result["outputs"], result["message"]
    except (ValueError, KeyError, TypeError) as exc:
        return None, f"the callable's result file is malformed: {exc}"
    if outcome not in ("DONE", "USER_ERROR", "FATAL_ERROR") or not isinstance(outputs, dict) \
            or not isinstance(message, str):
        return None, "the callable's result file is malformed"
    return (outcome, outputs, message), None


def _exit(rc: int) -> str:
    if rc < 0:
        return f"was killed by signal {signal_name(-rc)}"
    if rc == _EXIT_TERMINATED:
        return "was terminated (exit code 143)"
    return f"exited with code {rc}"


def _quote(stderr_tail: str) -> str:
    line = last_line(stderr_tail)
    return f": {line}" if line else ""
