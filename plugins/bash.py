"""``bash``: runs a bash script (or a plain argv) as a child process.

Params (the bash configuration):

- ``script`` (string) XOR ``argv`` (list of strings): exactly one. ``script`` runs as
  ``bash -c <script>``; ``argv`` runs the program directly, without a shell.

``${}`` in them: ``script`` is code and is never interpolated by Legato: ``${x}`` in it is bash's
own expansion of the environment variable ``x`` (every param is exported, see below), so a
value is never parsed as bash. In ``argv`` an element that is exactly ``${name}`` becomes the
value as one whole argument (not split, not parsed); ``${…}`` inside a longer element is refused
when the definition loads (``["sh", "-c", "echo ${x}"]`` would run the value as code: write
``["sh", "-c", "echo \"$x\""]``). ``$$`` is a literal ``$``. In the other params (``env``
values, ``working_dir``) ``${}`` is text interpolation: the result is a value, never code.
- ``working_dir`` (string, optional): relative paths resolve against the definition's directory
  (else the current directory); default: the instance's shared working directory.
- ``env`` (map of string to string, optional): extra environment variables.
- ``inherit_env`` (true, false or a list of names, default true): which variables of the
  worker's environment the process inherits beyond the minimal base (``PATH``, ``HOME``,
  ``LANG``/``LC_*``, ``TZ``, ``TMPDIR``…, see ``legato.processes.BASE_ENV``). Only variables the
  operator allows in the step type's settings (``bash: {inherit_env: [AWS_PROFILE, "PROXY_*"]}``)
  can be inherited: ``true`` takes all of them, a list asks for some by name (asking for one the
  operator does not allow fails the step), ``false`` none. The worker's whole environment never
  reaches a step.

Every other param is the user's data and reaches the process ONLY as an environment variable
(workflow params first, step params overriding them), never spliced into the script text:
strings as they are, booleans as ``true``/``false``, lists and maps as JSON. Params whose name is
not a valid variable name (``[A-Za-z_][A-Za-z0-9_]*``) are not exported.

The process also gets ``LEGATO_OUTPUT`` (a file to write outputs to, one ``key=value`` or one
JSON object per line), ``LEGATO_INSTANCE_ID``, ``LEGATO_STEP_ID``, ``LEGATO_ATTEMPT`` and
``LEGATO_IDEMPOTENCY_KEY``. Its stdout and stderr stream into the step's log. Exit code 0 is
DONE, anything else a USER_ERROR. The process runs in its own process group, which is killed
when the step is cancelled and after it exits, so nothing it started outlives the step.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pydantic

from legato import StepResult, StepType
from legato.hookspecs import hookimpl
from legato.process_settings import ProcessSettings
from legato.processes import (
    MAX_OUTPUTS_BYTES,
    HandleNotRecorded,
    env_value,
    inherit_names,
    kill_if_attempts,
    last_line,
    legato_variables,
    parse_outputs,
    process_environment,
    read_outputs,
    signal_name,
    start_process,
)

__all__ = ["BashParams", "BashSettings", "Bash", "parse_outputs", "MAX_OUTPUTS_BYTES"]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CONFIG_KEYS = frozenset({"script", "argv", "working_dir", "env", "inherit_env"})


class BashSettings(ProcessSettings):
    """The operator's settings of the ``bash`` step type (``--settings``: ``bash: {…}``): ``inherit_env``."""


class BashParams(pydantic.BaseModel):
    """The params the ``bash`` step type reads; every other param is user data (exported)."""

    model_config = pydantic.ConfigDict(extra="allow")

    script: str | None = None
    argv: list[str] | None = pydantic.Field(None, min_length=1)
    working_dir: str | None = None
    env: dict[str, str] | None = None
    inherit_env: bool | list[str] = True

    @pydantic.field_validator("inherit_env")
    @classmethod
    def _inherit_names(cls, names: bool | list[str]) -> bool | list[str]:
        if isinstance(names, list):
            for name in names:
                if not _ENV_NAME.match(name):
                    raise ValueError(f"`inherit_env` entry {name!r} is not a valid environment variable name")
        return names

    @pydantic.field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str] | None) -> dict[str, str] | None:
        for name in env or {}:
            if not _ENV_NAME.match(name):
                raise ValueError(f"`env` key {name!r} is not a valid environment variable name")
        return env

    @pydantic.model_validator(mode="after")
    def _script_xor_argv(self) -> "BashParams":
        if (self.script is None) == (self.argv is None):
            raise ValueError("give exactly one of `script` or `argv`")
        return self


class Bash(StepType):
    """Runs ``script`` with bash (or ``argv`` directly); params arrive as environment variables."""

    name = "bash"
    description = "runs a bash script or a command; params are passed as environment variables"
    Params = BashParams
    Settings = BashSettings
    # The script is code: `${x}` in it is bash's expansion of the env var, never Legato's paste.
    raw_params = frozenset({"script"})
    # An argument vector: `${x}` only as a whole element (one argument, never re-parsed); inside an
    # element it is refused at load (`["sh", "-c", "echo ${x}"]` would run the value as code).
    argv_params = frozenset({"argv"})

    #: Seconds between SIGTERM and SIGKILL when the step is cancelled.
    term_grace: float = 1.0
    #: Seconds to keep reading stdout/stderr after the process group is gone. Only a process that
    #: escaped the group (``setsid``) can hold the pipes open that long; we stop waiting for it.
    drain_timeout: float = 2.0

    @classmethod
    def unavailable(cls) -> str | None:
        """A reason when there is no ``bash`` on PATH, else None."""
        if shutil.which("bash") is None:
            return "no `bash` executable on PATH: install bash"
        return None

    async def run(self, ctx):
        """Run the process to its end; see the module docstring for the semantics."""
        cfg = ctx.config
        if not isinstance(cfg, BashParams):
            # Run directly (not through the kernel), or with a config from elsewhere.
            try:
                cfg = BashParams.model_validate(ctx.params)
            except pydantic.ValidationError as exc:
                return StepResult.fatal_error(f"invalid bash params: {exc}")

        if cfg.script is not None:
            bash = self._bash or shutil.which("bash")
            self._bash = bash
            if bash is None:
                return StepResult.platform_error("no `bash` executable on PATH")
            command = [bash, "-c", cfg.script]
        else:
            command = list(cfg.argv)

        cwd = self._working_dir(ctx, cfg)  # a missing one is the spawn's error (_spawn_failure)
        output_file = ctx.outputs_path
        try:  # a stale file (an earlier run of this same attempt) must not count as this run's outputs
            os.unlink(output_file)
        except FileNotFoundError:
            pass
        try:
            inherit = inherit_names(self.settings, cfg.inherit_env, self.name)
        except ValueError as exc:
            return StepResult.fatal_error(str(exc))
        try:
            env = self._environment(ctx, cfg, output_file, inherit)
            proc = await start_process(command, cwd=str(cwd), env=env)
        except (OSError, ValueError) as exc:
            return self._spawn_failure(exc, command, cwd, cfg)
        try:
            rc, stderr_tail = await proc.supervise(ctx, term_grace=self.term_grace, drain_timeout=self.drain_timeout)
        except HandleNotRecorded as exc:
            return StepResult.platform_error(str(exc))

        outputs, outputs_error = read_outputs(output_file, secrets=ctx.secrets)
        if rc == 0:
            if outputs_error:
                return StepResult.user_error(outputs_error)
            return StepResult.done(outputs)

        if rc < 0:
            message = f"killed by signal {signal_name(-rc)}"
        else:
            message = f"exit code {rc}"
        last = last_line(stderr_tail)
        if last:
            message += f": {last}"
        if outputs_error:
            message += f" (and {outputs_error})"
        return StepResult.user_error(message, outputs)

    _bash: str | None = None

    def reap(self, ctx, handle) -> None:
        """Kill the process group a dead kernel left behind, if it is still this attempt's (its
        environment carries this attempt's idempotency key, so a reused pid is left alone)."""
        if isinstance(handle, dict):
            kill_if_attempts(handle.get("pgid"), ctx.idempotency_key)

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _working_dir(ctx, cfg: BashParams) -> Path:
        if cfg.working_dir is None:
            return ctx.workdir
        path = Path(cfg.working_dir)
        if not path.is_absolute():
            base = Path(ctx.definition_dir) if ctx.definition_dir is not None else Path.cwd()
            path = base / path
        return path

    @staticmethod
    def _environment(ctx, cfg: BashParams, output_file: Path, inherit=()) -> dict[bytes, bytes]:
        ours: dict[str, str] = {}
        params: dict[str, Any] = dict(ctx.workflow_params or {})
        # The config keys are the step's own settings, not data; a workflow param that happens to
        # share such a name (say `env`) is still the user's data and is exported.
        params.update((k, v) for k, v in (ctx.params or {}).items() if k not in _CONFIG_KEYS)
        for name, value in params.items():
            if isinstance(name, str) and _ENV_NAME.match(name):
                ours[name] = env_value(value)
        ours.update(cfg.env or {})
        # Last, so neither params nor `env` can spoof them.
        ours.update(legato_variables(ctx, output_file))
        return process_environment(ours, inherit)

    @staticmethod
    def _spawn_failure(exc: Exception, command: list[str], cwd: Path, cfg: BashParams) -> StepResult:
        if isinstance(exc, ValueError):  # e.g. a NUL byte in an argument or a param value
            return StepResult.user_error(f"cannot start the process: {exc}")
        if getattr(exc, "filename", None) == str(cwd):
            what = {FileNotFoundError: "does not exist", NotADirectoryError: "is not a directory"}.get(
                type(exc), f"cannot be entered: {exc.strerror or exc}")
            return StepResult.user_error(f"working_dir {str(cwd)!r} {what}")
        if cfg.script is not None:
            # Failing to exec bash itself is the host's problem, not the script's.
            return StepResult.platform_error(f"cannot start bash ({command[0]}): {exc}")
        if isinstance(exc, (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)):
            reason = "command not found" if isinstance(exc, FileNotFoundError) else (exc.strerror or str(exc))
            return StepResult.user_error(f"cannot run {command[0]!r}: {reason}")
        return StepResult.platform_error(f"cannot start {command[0]!r}: {exc}")



@hookimpl
def legato_register_step_types(registry):
    registry.add(Bash)
