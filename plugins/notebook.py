"""``notebook``: executes a Jupyter notebook with papermill, in a child process.

Params (the notebook configuration):

- ``input_path`` (string, required): the notebook to run. A relative path resolves against the
  definition's directory (else the current directory).
- ``output_path`` (string, optional): where the executed notebook is written; default
  ``output.ipynb`` in the attempt's private directory. A relative path resolves against the
  instance's working directory; once symlinks and ``..`` are resolved it must lie there or under
  a directory the operator lists in the ``allowed_paths`` setting (``notebook: {allowed_paths:
  [/srv/reports]}``), else the step ends FATALLY_FAILED (:mod:`legato.paths`). Its absolute path
  is the step's output ``output_notebook``.
- ``parameters`` (map, optional): papermill parameters, see below.
- ``kernel_name`` (string, default ``python3``): the Jupyter kernel to run the notebook with
  (``jupyter kernelspec list``); the notebook's own kernelspec metadata is not used.
- ``working_dir`` (string, optional): the kernel's current directory; relative paths resolve
  against the definition's directory (else the current directory); default: the instance's
  shared working directory.
- ``cell_timeout`` (seconds, optional): the longest any one cell may run (the step's own
  ``timeout`` bounds the whole notebook); ``start_timeout`` (seconds, default 60): the longest
  the kernel may take to start.
- ``log_output`` (bool, default true): stream the cells' stdout and stderr into the step's log.
- ``env`` (map of string to string, optional): extra environment variables for the kernel.

**Parameters are data.** The notebook's papermill parameters are, in increasing precedence: the
workflow params, then the step's own params other than the configuration keys above, then the
explicit ``parameters`` map. papermill injects them as Python literals in a cell after the cell
tagged ``parameters`` (or at the top); values are JSON (strings, numbers, booleans, null, lists,
maps) and arrive byte for byte. Only names that are Python identifiers can be parameters: the
implicit ones that are not are skipped, an explicit one is refused when the definition loads.
``${}`` in a param's string (a ``parameters`` value, ``output_path``) is text interpolation done
before the notebook runs: the result is a value, and papermill writes it as a Python literal.
The notebook's code is never built from a value.

Operator settings (:class:`NotebookSettings`, ``notebook: {…}`` in ``--settings``):
``allowed_paths``, the absolute directories outside the instance's working directory that
``output_path`` may point into (none by default).

The kernel gets ``LEGATO_OUTPUT`` (a file of outputs: ``legato.notebook.output(key, value)``
appends JSON lines to it; ``key=value`` lines work too), ``LEGATO_INSTANCE_ID``,
``LEGATO_STEP_ID``, ``LEGATO_ATTEMPT`` and ``LEGATO_IDEMPOTENCY_KEY``, ``env``, and from the
worker's environment only the minimal base (``legato.processes.BASE_ENV``, plus where Jupyter
and IPython find kernels and configuration: ``JUPYTER_PATH``, ``IPYTHONDIR``…) and what the
operator allows in the step type's ``inherit_env`` setting.

**Secrets.** A secret param is injected like any other (the kernel needs its value), but every
copy of the executed notebook written to ``output_path`` (papermill saves it after each cell)
has each secret value masked as ``***``, in the parameters cell and in the cells' outputs alike.
The parameters travel to papermill through a pipe, never through a file.

Outcomes: DONE with the outputs and ``output_notebook``; a cell that raises is a USER_ERROR
naming the cell (its 1-based position in the input notebook and its first line) and the
exception, as is a cell that exceeds ``cell_timeout`` and a missing input notebook; a file that
is not a notebook is a FATAL_ERROR; a kernel that dies, an unknown ``kernel_name`` or papermill
failing are PLATFORM_ERRORs.

Processes: papermill runs as ``python -m legato.plugins.notebook`` in its own process group;
jupyter_client starts the kernel in a session (and process group) of its own, which the child
reports over a pipe as soon as it is launched. Both groups are recorded as the step's handle,
killed when the step is cancelled or ends, and reaped after a crash, so nothing outlives the step.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from legato.processes import killpg  # standard library only: cheap in the child too

# ---------------------------------------------------------------------------------------------
# The child side: ``python -m legato.plugins.notebook SPEC_FILE CONTROL_FD`` runs papermill.
# It comes first, before the parent's imports (pydantic, trio), which it does not need: they
# would cost every notebook step ~150 ms of start-up.
# ---------------------------------------------------------------------------------------------

_INJECTED_TAG = "injected-parameters"
_MAX_TEXT = 2000


_MASKED = "legato-masked://"


def _child_main(argv: list[str]) -> int:
    """Execute the notebook described by the spec (a JSON file, or ``-``: read from stdin);
    report on the control fd (JSON lines: ``{"kernel": {"pid", "pgid"}}`` once the kernel is
    launched, then ``{"result": {...}}``)."""
    if argv[0] == "-":
        spec = json.load(sys.stdin)
    else:
        with open(argv[0], encoding="utf-8") as f:
            spec = json.load(f)
    control = int(argv[1])
    state: dict = {"kernel": None, "launching": False, "term": False, "cell": None, "injected": 0}

    def send(message: dict) -> None:
        data = (json.dumps(message, default=str) + "\n").encode()
        while data:
            data = data[os.write(control, data):]

    def die() -> None:
        if state["kernel"]:
            killpg(state["kernel"], signal.SIGKILL)
        os._exit(128 + signal.SIGTERM)

    def on_term(signum, frame) -> None:
        if state["launching"]:  # the kernel is being launched: kill it once we know its pid
            state["term"] = True
        else:
            die()

    signal.signal(signal.SIGTERM, on_term)

    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("papermill").setLevel(logging.INFO)
    # Every workflow param becomes a parameter; that most are not in the parameters cell is normal.
    logging.getLogger("papermill").addFilter(lambda r: not r.getMessage().startswith("Passed unknown parameter"))

    try:
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
        from jupyter_client.manager import AsyncKernelManager
        import papermill
        from papermill.exceptions import PapermillExecutionError
    except ImportError as exc:
        send({"result": {"status": "error", "type": "ImportError", "message": str(exc)}})
        return 1

    class KernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd, **kw):
            state["launching"] = True
            try:
                await super()._async_launch_kernel(kernel_cmd, **kw)
            finally:
                state["launching"] = False
                pid = getattr(self.provisioner, "pid", None)
                pgid = getattr(self.provisioner, "pgid", None)
                if isinstance(pgid, int) and pgid > 1:
                    state["kernel"] = pgid
                    send({"kernel": {"pid": pid, "pgid": pgid}})
                if state["term"]:
                    die()

    def on_cell_start(cell, cell_index, **_):
        if _INJECTED_TAG in cell.get("metadata", {}).get("tags", []):
            state["injected"] += 1
            position = 0  # the cell papermill added
        else:
            position = cell_index + 1 - state["injected"]
        state["cell"] = (cell_index, position, cell.get("source", ""))

    def cell_info(index: int | None = None, source: str | None = None) -> dict:
        """Where the failing cell is in the input notebook (papermill adds a parameters cell)."""
        current = state["cell"]
        if index is None:
            if current is None:
                return {}
            index, position, source = current
        elif current is not None and current[0] == index:
            position = current[1]
        else:
            position = index + 1 - state["injected"]
        text = source if isinstance(source, str) else "".join(source or [])
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        return {"position": position, "first_line": first[:200]}

    try:
        import nbformat

        with open(spec["input_path"], encoding="utf-8") as f:
            nbformat.read(f, as_version=4)
    except Exception as exc:  # noqa: BLE001 - whatever the reason, it is not a notebook we can run
        send({"result": {"status": "invalid_notebook", "type": type(exc).__name__, "message": str(exc)[:_MAX_TEXT]}})
        return 1

    try:
        kernel_spec = KernelSpecManager().get_kernel_spec(spec["kernel_name"])
    except NoSuchKernel:
        try:
            known = sorted(KernelSpecManager().find_kernel_specs())
        except Exception:  # noqa: BLE001 - only for the message
            known = []
        send({"result": {"status": "no_such_kernel", "known": known}})
        return 1

    output_path = _escape_braces(spec["output_path"])
    if spec.get("mask"):
        output_path = _MASKED + output_path
        _register_masked_writer(spec["mask"])

    result: dict
    try:
        papermill.execute_notebook(
            _escape_braces(spec["input_path"]),
            output_path,
            parameters=spec["parameters"],
            kernel_name=spec["kernel_name"],
            language=kernel_spec.language or None,
            progress_bar=False,
            log_output=False,  # papermill would log each output with an extra newline; we copy them verbatim
            stdout_file=sys.stdout if spec["log_output"] else None,
            stderr_file=sys.stderr if spec["log_output"] else None,
            start_timeout=spec["start_timeout"],
            execution_timeout=spec["cell_timeout"],
            kernel_manager_class=KernelManager,
            on_cell_start=on_cell_start,
            # Concurrent kernels would contend for IPython's history database.
            extra_arguments=["--HistoryManager.hist_file=:memory:"],
        )
        result = {"status": "ok"}
    except PapermillExecutionError as exc:
        result = {"status": "cell_error", **cell_info(exc.cell_index, exc.source),
                  "ename": str(exc.ename)[:200], "evalue": str(exc.evalue)[:_MAX_TEXT]}
    except Exception as exc:  # noqa: BLE001 - classified for the parent
        name = type(exc).__name__
        if name == "DeadKernelError":
            result = {"status": "kernel_died", **cell_info()}
        elif name == "CellTimeoutError":
            result = {"status": "cell_timeout", **cell_info()}
        else:
            result = {"status": "error", "type": name, "message": str(exc)[:_MAX_TEXT]}
    send({"result": result})
    return 0 if result["status"] == "ok" else 1


def _register_masked_writer(values: list[str]) -> None:
    """papermill writes every copy of the output notebook (one after each cell) through this
    handler, which masks the secrets in the notebook's text first."""
    from papermill.iorw import LocalHandler, papermill_io

    from legato.secrets import Secrets

    masker = Secrets(values)

    class MaskedHandler(LocalHandler):
        def read(self, path):
            return super().read(path[len(_MASKED):])

        def write(self, buf, path):
            return super().write(masker.mask(buf), path[len(_MASKED):])

        def pretty_path(self, path):
            return path[len(_MASKED):]

    papermill_io.register(_MASKED, MaskedHandler())


def _escape_braces(path: str) -> str:
    # papermill formats paths with the parameters (`{name}`): a path is a path, not a template.
    return path.replace("{", "{{").replace("}", "}}")


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))


# ---------------------------------------------------------------------------------------------
# The step type (the parent side, in the Legato process).
# ---------------------------------------------------------------------------------------------

import importlib.util  # noqa: E402
import keyword  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pydantic  # noqa: E402
import trio  # noqa: E402

from legato import Outcome, StepResult, StepType  # noqa: E402
from legato.hookspecs import hookimpl  # noqa: E402
from legato.paths import PathRefused, confine  # noqa: E402
from legato.process_settings import PathSettings, ProcessSettings  # noqa: E402
from legato.processes import (  # noqa: E402
    BASE_ENV,
    inherit_allowed,
    kill_if_attempts,
    last_line,
    legato_variables,
    process_environment,
    pump,
    read_outputs,
    signal_name,
)

__all__ = ["NotebookParams", "NotebookSettings", "Notebook", "papermill_parameters"]

_CONFIG_KEYS = frozenset({"input_path", "output_path", "parameters", "kernel_name", "working_dir",
                          "cell_timeout", "start_timeout", "log_output", "env"})
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_READ_CHUNK = 65536


def _is_name(name: Any) -> bool:
    return isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)


class NotebookSettings(ProcessSettings, PathSettings):
    """The operator's settings of the ``notebook`` step type (``--settings``: ``notebook: {…}``):
    ``inherit_env``, and ``allowed_paths`` where `output_path` may point besides the working directory."""


class NotebookParams(pydantic.BaseModel):
    """The params the ``notebook`` step type reads; every other param is user data (a parameter)."""

    model_config = pydantic.ConfigDict(extra="allow")

    input_path: str = pydantic.Field(min_length=1)
    output_path: str | None = pydantic.Field(None, min_length=1)
    parameters: dict[str, Any] = pydantic.Field(default_factory=dict)
    kernel_name: str = pydantic.Field("python3", min_length=1)
    working_dir: str | None = None
    cell_timeout: float | None = pydantic.Field(None, gt=0)
    start_timeout: float = pydantic.Field(60.0, gt=0)
    log_output: bool = True
    env: dict[str, str] | None = None

    @pydantic.field_validator("parameters")
    @classmethod
    def _parameter_names(cls, parameters: dict[str, Any]) -> dict[str, Any]:
        for name in parameters:
            if not _is_name(name):
                raise ValueError(f"parameter name {name!r} is not a Python identifier")
        return parameters

    @pydantic.field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str] | None) -> dict[str, str] | None:
        for name in env or {}:
            if not _ENV_NAME.match(name):
                raise ValueError(f"`env` key {name!r} is not a valid environment variable name")
        return env


def papermill_parameters(ctx, cfg: NotebookParams) -> dict[str, Any]:
    """The notebook's parameters: workflow params, then the step's non-configuration params, then
    ``parameters``; names that are not Python identifiers skipped; values made plain JSON."""
    merged: dict[str, Any] = {}
    for source in (ctx.workflow_params or {}, {k: v for k, v in (ctx.params or {}).items() if k not in _CONFIG_KEYS}):
        merged.update((k, v) for k, v in source.items() if _is_name(k))
    merged.update(cfg.parameters)
    # Through JSON: papermill pastes str() of a value it does not know (bytes, dates) inside quotes
    # unescaped; as JSON every value is one of the types it escapes.
    return json.loads(json.dumps(merged, default=str))


class Notebook(StepType):
    """Runs a Jupyter notebook with papermill; params arrive as papermill parameters."""

    name = "notebook"
    description = "executes a Jupyter notebook with papermill; params are injected as notebook parameters"
    Params = NotebookParams
    Settings = NotebookSettings

    #: Seconds between SIGTERM and SIGKILL of papermill when the step is cancelled.
    term_grace: float = 0.5
    #: Seconds to keep reading output once papermill is gone (see the bash step type).
    drain_timeout: float = 2.0

    @classmethod
    def unavailable(cls) -> str | None:
        """A reason when papermill is not installed, else None (without importing it)."""
        if importlib.util.find_spec("papermill") is None:
            return "papermill is not installed: pip install 'legato[notebook]'"
        return None

    async def run(self, ctx):
        cfg = ctx.config
        if not isinstance(cfg, NotebookParams):
            try:
                cfg = NotebookParams.model_validate(ctx.params)
            except pydantic.ValidationError as exc:
                return StepResult.fatal_error(f"invalid notebook params: {exc}")

        input_path = _resolve(cfg.input_path, _base(ctx))
        if not input_path.is_file():
            what = "does not exist" if not input_path.exists() else "is not a file"
            return StepResult.user_error(f"input notebook {str(input_path)!r} {what}")
        cwd = ctx.workdir if cfg.working_dir is None else _resolve(cfg.working_dir, _base(ctx))
        if not cwd.is_dir():
            what = "does not exist" if not cwd.exists() else "is not a directory"
            return StepResult.user_error(f"working_dir {str(cwd)!r} {what}")
        attempt_dir = ctx.attempt_dir
        if cfg.output_path is None:
            output_path = attempt_dir / "output.ipynb"
        else:
            try:
                output_path = confine(cfg.output_path, ctx.workdir, self.settings["allowed_paths"],
                                      what="output_path", setting="notebook.allowed_paths")
            except PathRefused as exc:
                return StepResult.fatal_error(str(exc))
        try:
            output_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return StepResult.user_error(f"cannot create the directory of output_path {str(output_path)!r}: {exc}")

        output_file = ctx.outputs_path
        output_file.unlink(missing_ok=True)  # a stale file must not count as this run's outputs
        runtime_dir = attempt_dir / "jupyter-runtime"
        try:
            inherit = inherit_allowed(self.settings)
        except ValueError as exc:
            return StepResult.fatal_error(str(exc))
        try:
            # Through a pipe, not a file: the parameters may hold secrets.
            spec = json.dumps({
                "input_path": str(input_path),
                "output_path": str(output_path),
                "parameters": papermill_parameters(ctx, cfg),
                "kernel_name": cfg.kernel_name,
                "cell_timeout": cfg.cell_timeout,
                "start_timeout": cfg.start_timeout,
                "log_output": cfg.log_output,
                "mask": sorted(ctx.secrets.values) if ctx.secrets else [],
            }).encode()
            env = self._environment(ctx, cfg, output_file, runtime_dir, inherit)
        except (ValueError, TypeError) as exc:
            return StepResult.user_error(f"cannot start the notebook: {exc}")

        read_fd, write_fd = os.pipe()
        try:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-u", "-m", "legato.plugins.notebook", "-", str(write_fd)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=str(cwd),
                env=env,
                pass_fds=(write_fd,),
                # Its own process group, so one killpg reaches papermill and whatever it starts
                # (but not the kernel: jupyter_client gives it a session of its own).
                start_new_session=True,
            )
        except OSError as exc:
            os.close(read_fd)
            return StepResult.platform_error(f"cannot start papermill ({sys.executable}): {exc}")
        finally:
            os.close(write_fd)
        pgid = proc.pid
        control = _Control(trio.lowlevel.FdStream(read_fd))
        stderr_tail = [""]
        drain_abandoned = False
        try:
            try:
                await ctx.record_handle({"pid": proc.pid, "pgid": pgid})
            except Exception as exc:  # storage trouble: the finally below stops the processes
                return StepResult.platform_error(f"could not record the process handle: {exc}")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(_send_spec, proc.stdin, spec)
                nursery.start_soon(pump, ctx, proc.stdout, "stdout", None)
                nursery.start_soon(pump, ctx, proc.stderr, "stderr", stderr_tail)
                nursery.start_soon(control.follow, ctx, pgid)
                await proc.wait()
                # Whatever papermill left (a kernel it failed to shut down, background children)
                # may hold our pipes open: kill it so the pumps see EOF and nothing outlives the step.
                self._kill_groups(pgid, control)
                nursery.cancel_scope.deadline = trio.current_time() + self.drain_timeout
            drain_abandoned = nursery.cancel_scope.cancelled_caught
        finally:
            with trio.CancelScope(shield=True):
                await self._stop(proc, pgid, control)
                shutil.rmtree(runtime_dir, ignore_errors=True)

        if drain_abandoned:
            ctx.log("stderr", "\n[legato] stopped reading output: a process outside the step's process "
                              "groups still holds stdout/stderr open\n")
        return self._result(ctx, cfg, proc.returncode, control.result, stderr_tail[0], output_path, output_file)

    def reap(self, ctx, handle) -> None:
        """Kill papermill's and the kernel's process groups a dead Legato left behind, if they are
        still this attempt's (their environment carries its idempotency key)."""
        if not isinstance(handle, dict):
            return
        for name in ("kernel_pgid", "pgid"):
            kill_if_attempts(handle.get(name), ctx.idempotency_key)

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _environment(ctx, cfg: NotebookParams, output_file: Path, runtime_dir: Path, inherit=()) -> dict[bytes, bytes]:
        ours: dict[str, str] = dict(cfg.env or {})
        # Connection files (with the kernel's HMAC key) go in the attempt's directory, removed
        # after the step, rather than in ~/.local/share/jupyter, where a killed kernel would leave them.
        ours["JUPYTER_RUNTIME_DIR"] = str(runtime_dir)
        ours.update(legato_variables(ctx, output_file))
        return process_environment(ours, (*inherit, *_JUPYTER_ENV), base=BASE_ENV)

    @staticmethod
    def _kill_groups(pgid: int, control: "_Control") -> None:
        killpg(pgid, signal.SIGKILL)
        if control.kernel_pgid is not None:
            killpg(control.kernel_pgid, signal.SIGKILL)

    async def _stop(self, proc, pgid: int, control: "_Control") -> None:
        """Make sure papermill is reaped and both process groups are gone. Call shielded."""
        if control.kernel_pgid is not None:
            # Cancelled: the kernel's state is being thrown away, no need to be gentle.
            killpg(control.kernel_pgid, signal.SIGKILL)
        if proc.returncode is None:
            # papermill's SIGTERM handler kills the kernel it launched, even one not reported yet.
            killpg(pgid, signal.SIGTERM)
            with trio.move_on_after(self.term_grace):
                await proc.wait()
        killpg(pgid, signal.SIGKILL)
        await proc.wait()
        # A kernel papermill reported after we stopped listening is in the pipe: read it and kill it.
        with trio.move_on_after(0.5):
            await control.follow(None, pgid)
        await control.aclose()
        if control.kernel_pgid is not None:
            killpg(control.kernel_pgid, signal.SIGKILL)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                await stream.aclose()

    def _result(self, ctx, cfg, returncode, result, stderr_tail, output_path: Path, output_file: Path) -> StepResult:
        outputs, outputs_error = read_outputs(output_file, secrets=ctx.secrets)
        status = (result or {}).get("status")
        if status == "ok":
            if outputs_error:
                return StepResult.user_error(outputs_error, {"output_notebook": str(output_path)})
            outputs["output_notebook"] = str(output_path)
            return StepResult.done(outputs)
        if output_path.exists():
            outputs["output_notebook"] = str(output_path)
        suffix = f" (and {outputs_error})" if outputs_error else ""
        if status == "cell_error":
            return StepResult.user_error(
                f"{_cell(result)} raised {result.get('ename')}: {result.get('evalue')}{suffix}", outputs)
        if status == "cell_timeout":
            return StepResult.user_error(f"{_cell(result)} did not finish within cell_timeout={cfg.cell_timeout:g}s"
                                         f"{suffix}", outputs)
        if status == "kernel_died":
            where = f" while running {_cell(result)}" if result.get("position") else ""
            return StepResult(Outcome.PLATFORM_ERROR, outputs, f"the kernel died{where} (it exited or was killed){suffix}")
        if status == "no_such_kernel":
            known = ", ".join(result.get("known") or []) or "none"
            return StepResult.platform_error(
                f"no Jupyter kernel named {cfg.kernel_name!r} is installed here (known: {known}); install it "
                f"(`python -m ipykernel install --name {cfg.kernel_name}`) or set kernel_name")
        if status == "invalid_notebook":
            return StepResult.fatal_error(
                f"input notebook {str(_resolve(cfg.input_path, _base(ctx)))!r} is not a Jupyter notebook: "
                f"{result.get('type')}: {result.get('message')}")
        if status == "error":
            return StepResult.platform_error(f"papermill failed: {result.get('type')}: {result.get('message')}")
        # No result: papermill died before it could say why.
        if returncode is not None and returncode < 0:
            how = f"was killed by signal {signal_name(-returncode)}"
        else:
            how = f"exited with code {returncode} without a result"
        last = last_line(stderr_tail)
        return StepResult.platform_error(f"papermill {how}" + (f": {last}" if last else ""))


#: Where Jupyter and IPython look for kernels and configuration: the kernel needs them as the worker
#: has them (named one by one: JUPYTER_TOKEN, say, is a credential).
_JUPYTER_ENV = ("JUPYTER_PATH", "JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR", "JUPYTER_CONFIG_PATH",
                "JUPYTER_PLATFORM_DIRS", "IPYTHONDIR")


async def _send_spec(stream, data: bytes) -> None:
    """Hand papermill its spec on stdin, then close it (a child that died first just never reads it)."""
    try:
        await stream.send_all(data)
        await stream.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def _cell(result: dict) -> str:
    position, first = result.get("position"), result.get("first_line")
    if not position:
        return "a cell"
    if position < 1:
        return "the injected parameters cell"
    return f"cell {position}" + (f" (`{first}`)" if first else "")


class _Control:
    """The child's control pipe: the kernel's process group as soon as it is launched, then the result."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.buffer = b""
        self.kernel_pgid: int | None = None
        self.result: dict | None = None
        self.eof = False

    async def follow(self, ctx, pgid: int) -> None:
        """Read messages until EOF; with ``ctx``, record the kernel in the step's handle."""
        while not self.eof:
            chunk = await self.stream.receive_some(_READ_CHUNK)
            if not chunk:
                self.eof = True
            self.buffer += chunk
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                if isinstance(message.get("kernel"), dict):
                    kernel = message["kernel"].get("pgid")
                    if isinstance(kernel, int) and kernel > 1:
                        self.kernel_pgid = kernel
                        if ctx is not None:
                            try:
                                await ctx.record_handle({"pid": pgid, "pgid": pgid, "kernel_pid": message["kernel"].get("pid"),
                                                         "kernel_pgid": kernel})
                            except Exception as exc:  # noqa: BLE001 - the kernel still dies with the step
                                ctx.log("stderr", f"[legato] could not record the kernel's handle: {exc}\n")
                elif isinstance(message.get("result"), dict):
                    self.result = message["result"]

    async def aclose(self) -> None:
        await self.stream.aclose()


def _base(ctx) -> Path:
    return Path(ctx.definition_dir) if ctx.definition_dir is not None else Path.cwd()


def _resolve(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


@hookimpl
def legato_register_step_types(registry):
    registry.add(Notebook)
