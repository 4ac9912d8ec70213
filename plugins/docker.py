"""``docker``: runs a command in a container on a Docker engine.

Params (the docker configuration):

- ``image`` (string, required): the image to run.
- ``command`` (list of strings, optional): the argv, run without a shell unless it names one;
  ``entrypoint`` (list of strings, optional): replaces the image's entrypoint. Both are argument
  vectors: an element that is exactly ``${name}`` becomes the value as one whole argument
  (never split, never parsed by Legato); ``${…}`` inside a longer element is refused when the
  definition loads, because a shell (``sh -c "… ${x} …"``) would parse the pasted value as code:
  write ``sh -c '… "$name" …'`` and let the param arrive as an environment variable. ``$$`` is a
  literal ``$``.
- ``env`` (map of string to string), ``working_dir``, ``user``: as ``docker run`` has them.
- ``cpus`` (number > 0) and ``memory`` (bytes, or ``"256m"``, ``"1g"``…; at least 6 MiB): limits.
  The memory limit includes swap, so a container that exceeds it is killed (``out of memory``).
- ``network`` (default ``none``): the network mode. ``host`` and ``container:…`` are refused
  unless the operator lists them in the step type's settings (``allowed_networks``).
- ``docker_host`` (engine URL, optional): refused unless it is the operator's own
  ``docker_host`` setting or listed in the ``allowed_docker_hosts`` setting, since the engine is
  the operator's choice. Without it: the ``docker_host`` setting, else ``DOCKER_HOST`` and the
  default socket.
- ``pull``: ``if-missing`` (default: pull when the engine lacks the image) or ``never``.
- ``mounts`` (list of ``{source, target, read_only}``, read-only by default): bind mounts, refused
  unless ``source`` lies under a directory of the operator's allow-list (settings
  ``allowed_mounts``). A workflow cannot widen it.
- ``privileged``: refused when the definition is loaded. Privileged containers are never run.

Operator settings (:class:`DockerSettings`, ``docker: {…}`` in ``--settings``; validated, so a
wrong type or an unknown key is refused naming it): ``docker_host`` (the engine), and the
allow-lists ``allowed_docker_hosts``, ``allowed_mounts`` (absolute paths) and
``allowed_networks``, each empty by default. A workflow can narrow but never widen them.

Every other param is the user's data and reaches the container ONLY as an environment variable,
spelled as the ``bash`` step type spells them (workflow params first, step params overriding
them; strings as they are, booleans ``true``/``false``, lists and maps as JSON).

The container gets ``LEGATO_OUTPUT`` (``/legato/outputs``: one ``key=value`` or one JSON object
per line; ``/legato`` is this attempt's private directory, bind-mounted from the host),
``LEGATO_INSTANCE_ID``, ``LEGATO_STEP_ID``, ``LEGATO_ATTEMPT`` and ``LEGATO_IDEMPOTENCY_KEY``, and
the labels ``legato=1``, ``legato.instance``, ``legato.step``, ``legato.attempt`` and
``legato.key``. Its stdout and stderr stream into the step's log. Exit code 0 is DONE, anything
else a USER_ERROR; an engine that cannot be reached or an image that cannot be had is a
PLATFORM_ERROR. A cancelled step (stopped, timed out) kills and removes its container at once; a
container that ended is kept until the attempt's end is committed, then removed (``release``).

The container's id is recorded durably after it is created and before it starts, so a kernel that
restarts after a crash reattaches to it: a container never started is started, a running one is
followed to its end, an exited one yields its exit code, logs and outputs (it never runs twice,
even when the crash came between its exit and the commit of its result); then it is removed. A
reattached step's log gets the container's whole log again (after a ``[legato] reattached`` line),
since what the dead kernel had stored of it is unknown. A container that is gone (removed while no
kernel followed it) is a PLATFORM_ERROR.

The attempt's directory is bind-mounted, so the engine must share the kernel's filesystem (a local
engine); with ``user`` set it is made world-writable so that user can write its outputs there.
"""

from __future__ import annotations

import codecs
import importlib.util
import os
import re
import socket
from pathlib import Path
from typing import Any, Literal

import pydantic
import trio

from legato import StepResult, StepType
from legato.hookspecs import hookimpl
from legato.paths import absolute_paths, is_under
from legato.processes import env_value, last_line, legato_variables, read_outputs, signal_name

__all__ = ["DockerParams", "DockerSettings", "Docker", "Mount"]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CONFIG_KEYS = frozenset({
    "image", "command", "entrypoint", "env", "working_dir", "user", "cpus", "memory", "network",
    "docker_host", "pull", "privileged", "mounts",
})
_MEMORY = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)i?b?\s*\Z", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_MIN_MEMORY = 6 * 1024 * 1024  # the engine refuses less
#: Where the attempt's private directory appears inside the container.
IO_DIR = "/legato"
OUTPUTS_NAME = "outputs"
_STDERR_TAIL = 4096
_INSTALL_HINT = "the docker step type needs the Docker SDK for Python: pip install 'legato[docker]'"


def _memory_bytes(value: int | str) -> int:
    if isinstance(value, bool):
        raise ValueError("memory is a number of bytes or a size like '256m'")
    if isinstance(value, int):
        n = value
    else:
        m = _MEMORY.match(value)
        if not m:
            raise ValueError(f"memory {value!r} is not a size: use bytes or a number with b, k, m or g (e.g. '256m')")
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n < _MIN_MEMORY:
        raise ValueError(f"memory {value!r} is below the engine's minimum of 6 MiB")
    return n


class Mount(pydantic.BaseModel):
    """A bind mount of a host directory (or file) into the container; read-only by default."""

    model_config = pydantic.ConfigDict(extra="forbid")

    source: str
    target: str
    read_only: bool = True

    @pydantic.field_validator("source", "target")
    @classmethod
    def _absolute(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError(f"mount paths are absolute, got {path!r}")
        return path

    @pydantic.field_validator("target")
    @classmethod
    def _not_ours(cls, path: str) -> str:
        norm = os.path.normpath(path)
        if norm == "/" or norm == IO_DIR or norm.startswith(IO_DIR + "/"):
            raise ValueError(f"the mount target {path!r} is reserved ({IO_DIR} is Legato's)")
        return path


class DockerParams(pydantic.BaseModel):
    """The params the ``docker`` step type reads; every other param is user data (exported)."""

    model_config = pydantic.ConfigDict(extra="allow")

    image: str = pydantic.Field(min_length=1)
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    env: dict[str, str] | None = None
    working_dir: str | None = None
    user: str | None = None
    cpus: float | None = pydantic.Field(None, gt=0)
    memory: int | str | None = None
    network: str = pydantic.Field("none", min_length=1)
    docker_host: str | None = None
    pull: Literal["never", "if-missing"] = "if-missing"
    privileged: bool = False
    mounts: list[Mount] | None = None

    @pydantic.field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str] | None) -> dict[str, str] | None:
        for name in env or {}:
            if not _ENV_NAME.match(name):
                raise ValueError(f"`env` key {name!r} is not a valid environment variable name")
        return env

    @pydantic.field_validator("memory")
    @classmethod
    def _memory(cls, value: int | str | None) -> int | str | None:
        if value is not None:
            _memory_bytes(value)
        return value

    @pydantic.field_validator("privileged")
    @classmethod
    def _no_privileged(cls, value: bool) -> bool:
        if value:
            raise ValueError("privileged containers are refused")
        return value


class DockerSettings(pydantic.BaseModel):
    """The operator's settings of the ``docker`` step type (``--settings``: ``docker: {…}``)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    docker_host: str | None = pydantic.Field(
        None, min_length=1, description="an engine URL (unix:///var/run/docker.sock, tcp://host:2376)")
    allowed_docker_hosts: list[str] = pydantic.Field(
        default_factory=list, description="a list of engine URLs workflows may choose with `docker_host`")
    allowed_mounts: list[str] = pydantic.Field(
        default_factory=list, description="a list of absolute paths (directories workflows may mount)")
    allowed_networks: list[str] = pydantic.Field(
        default_factory=list, description="a list of network modes (host, container:NAME) workflows may use")

    @pydantic.field_validator("allowed_mounts")
    @classmethod
    def _absolute(cls, value: list[str]) -> list[str]:
        return absolute_paths(value)


class _ImageMissing(Exception):
    pass


_follow_limiter: trio.lowlevel.RunVar = trio.lowlevel.RunVar("legato_docker_follow")
_control_limiter: trio.lowlevel.RunVar = trio.lowlevel.RunVar("legato_docker_control")


def _limiters() -> tuple[trio.CapacityLimiter, trio.CapacityLimiter]:
    """Threads that follow containers (one per running step) must never starve the short control
    calls (create, kill) of threads, or a cancellation would wait for a long container to end."""
    try:
        return _follow_limiter.get(), _control_limiter.get()
    except LookupError:
        follow, control = trio.CapacityLimiter(100_000), trio.CapacityLimiter(64)
        _follow_limiter.set(follow)
        _control_limiter.set(control)
        return follow, control


class _Engine:
    """Two SDK clients for one engine: ``api`` for ordinary calls, ``quick`` (short timeouts)
    for the kill path."""

    def __init__(self, host: str | None) -> None:
        self.host = host
        self.api = self.client(host, timeout=60).api
        # Same engine, same API version (no second version probe), short timeouts.
        self.quick = self.client(host, timeout=3, version=self.api.api_version).api

    @staticmethod
    def client(host: str | None, **kwargs):
        import docker

        if host:
            return docker.DockerClient(base_url=host, **kwargs)
        return docker.DockerClient.from_env(**kwargs)

    @staticmethod
    def describe(host: str | None) -> str:
        return host or os.environ.get("DOCKER_HOST") or "the default Docker socket"


class Docker(StepType):
    """Runs ``command`` in a container of ``image``; params arrive as environment variables."""

    name = "docker"
    description = "runs a command in a Docker container; params are passed as environment variables"
    Params = DockerParams
    Settings = DockerSettings
    # Argument vectors: `${x}` only as a whole element (one argument); inside an element it is
    # refused at load, since `sh -c "… ${x} …"` would parse the pasted value as code.
    argv_params = frozenset({"command", "entrypoint"})
    can_reattach = True

    #: Seconds the kill path may take once cancelled (inside the 2 s cancellation bound).
    kill_timeout: float = 1.5

    def __init__(self, settings=None) -> None:
        super().__init__(settings)
        self._engines: dict[str | None, _Engine] = {}

    @classmethod
    def unavailable(cls) -> str | None:
        """A reason when the Docker SDK is not installed (cheap: nothing is imported). Whether an
        engine answers is found out when a step runs (a platform error)."""
        if importlib.util.find_spec("docker") is None:
            return _INSTALL_HINT
        return None

    # -- running -----------------------------------------------------------------------------

    async def run(self, ctx):
        """Create, start and follow the container; see the module docstring for the semantics."""
        cfg = ctx.config
        if not isinstance(cfg, DockerParams):
            try:
                cfg = DockerParams.model_validate(ctx.params)
            except pydantic.ValidationError as exc:
                return StepResult.fatal_error(f"invalid docker params: {exc}")
        refused = self._refused(cfg)
        if refused:
            return StepResult.fatal_error(refused)
        host = self._host(cfg)
        io_dir = ctx.attempt_dir
        outputs_file = io_dir / OUTPUTS_NAME
        try:
            env = self._environment(ctx, cfg)
        except ValueError as exc:
            return StepResult.user_error(f"cannot start the container: {exc}")

        try:
            engine = await self._engine(host)
        except Exception as exc:  # noqa: BLE001 - any failure to reach the engine is the platform's
            return StepResult.platform_error(f"cannot reach the Docker engine at {_Engine.describe(host)}: {_why(exc)}")

        # A stale file (an earlier run of this same attempt) must not count as this run's outputs.
        outputs_file.unlink(missing_ok=True)
        if cfg.user is not None:
            os.chmod(io_dir, 0o777)  # another user inside the container writes the outputs there
        if ctx.attempt > 1:
            await self._remove_earlier_attempts(ctx, engine)

        _, control = _limiters()
        try:
            cid = await trio.to_thread.run_sync(self._create, engine, cfg, ctx, env, io_dir, limiter=control)
        except _ImageMissing as exc:
            return StepResult.platform_error(str(exc))
        except Exception as exc:  # noqa: BLE001
            return self._api_failure("cannot create the container", exc)

        try:
            try:
                await ctx.record_handle({"container": cid, "docker_host": host})
            except Exception as exc:  # noqa: BLE001 - storage trouble: no kernel could ever find it
                with trio.CancelScope(shield=True):
                    await self._remove(engine, cid)
                return StepResult.platform_error(f"could not record the container's handle: {exc}")
            # Kept once it ends: `release` removes it when the attempt's end is durable.
            return await self._follow(ctx, engine, cid, cfg.memory, start=True)
        except BaseException:  # cancelled (stopped, timed out, the lease lost): kill it now
            with trio.CancelScope(shield=True):
                await self._remove(engine, cid)
            raise

    async def reattach(self, ctx, handle):
        """Follow the container a previous kernel started for this attempt to its end."""
        if not isinstance(handle, dict):
            return StepResult.platform_error(f"cannot reattach: the recorded handle {handle!r} names no container")
        host = handle.get("docker_host")
        try:
            engine = await self._engine(host)
        except Exception as exc:  # noqa: BLE001
            return StepResult.platform_error(f"cannot reach the Docker engine at {_Engine.describe(host)} to "
                                             f"reattach: {_why(exc)}")
        _, control = _limiters()
        try:
            found = await trio.to_thread.run_sync(self._find, engine, handle.get("container"), ctx.idempotency_key,
                                                  limiter=control)
        except Exception as exc:  # noqa: BLE001
            return self._api_failure("cannot look up the container to reattach", exc)
        if found is None:
            return StepResult.platform_error(
                f"the container {str(handle.get('container'))[:12]} of this attempt is gone (removed while no "
                "worker followed it): its outcome is unknown")
        cid, state, memory = found
        try:  # as in `run`: kept once it ends, removed at once when cancelled
            if state == "created":  # recorded, never started: starting it now runs the work exactly once
                ctx.log("stderr", f"[legato] reattached to container {cid[:12]}, which never started: starting it\n")
                return await self._follow(ctx, engine, cid, memory, start=True)
            if state in ("running", "paused", "restarting", "exited"):
                ctx.log("stderr", f"[legato] reattached to container {cid[:12]} ({state}); its whole log follows\n")
                return await self._follow(ctx, engine, cid, memory, start=False)
            return StepResult.platform_error(f"the container {cid[:12]} of this attempt is {state}: its outcome is unknown")
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._remove(engine, cid)
            raise

    async def release(self, ctx, handle) -> None:
        """Remove the attempt's container once its end is durable. Until then it is kept, exited,
        so that a kernel that crashed in between reattaches and reads its exit code, logs and
        outputs instead of running it a second time."""
        if not isinstance(handle, dict) or not isinstance(handle.get("container"), str):
            return
        host = handle.get("docker_host")
        try:
            engine = await self._engine(host)
        except Exception:  # noqa: BLE001 - an engine out of reach has nothing of ours to free
            return
        await self._remove(engine, handle["container"])

    def reap(self, ctx, handle) -> None:
        """Remove this attempt's container (by its id, or by the attempt's idempotency key)."""
        if not isinstance(handle, dict) or importlib.util.find_spec("docker") is None:
            return
        import docker

        host = handle.get("docker_host")
        engine = self._engines.get(host)
        api = engine.quick if engine is not None else _Engine.client(host, timeout=3).api
        ids = set()
        cid = handle.get("container")
        if isinstance(cid, str) and cid:
            ids.add(cid)
        for c in api.containers(all=True, filters={"label": f"legato.key={ctx.idempotency_key}"}):
            ids.add(c["Id"])
        for one in ids:
            try:
                labels = api.inspect_container(one)["Config"]["Labels"] or {}
                if labels.get("legato.key") == ctx.idempotency_key:
                    api.remove_container(one, force=True, v=True)
            except docker.errors.NotFound:
                pass

    # -- steps of a run ----------------------------------------------------------------------

    def _refused(self, cfg: DockerParams) -> str | None:
        """The operator's policy (settings), which a workflow cannot widen."""
        allowed_networks = set(self.settings["allowed_networks"])
        net = cfg.network
        if (net == "host" or net.startswith("container:")) and net not in allowed_networks:
            return (f"network {net!r} is refused: it shares a namespace with the host or another container "
                    "(the operator may allow it in the docker step type's settings, `allowed_networks`)")
        if cfg.mounts:
            allowed = self.settings["allowed_mounts"]
            for mount in cfg.mounts:
                if not is_under(os.path.realpath(mount.source), allowed):
                    where = ", ".join(os.path.realpath(p) for p in allowed) if allowed else "none are allowed"
                    return (f"the mount of {mount.source!r} is refused: it is not under a directory the operator "
                            f"allows (settings `allowed_mounts`: {where})")
        if cfg.docker_host is not None and cfg.docker_host != self.settings["docker_host"] \
                and cfg.docker_host not in self.settings["allowed_docker_hosts"]:
            listed = ", ".join(self.settings["allowed_docker_hosts"]) or "none is allowed"
            return (f"docker_host {cfg.docker_host!r} is refused: the Docker engine is the operator's choice "
                    f"(settings `docker.docker_host`); a workflow may name only an engine the operator lists "
                    f"in `docker.allowed_docker_hosts` ({listed}). Remove `docker_host` from the step's params")
        return None

    def _host(self, cfg: DockerParams) -> str | None:
        """The engine to use: the workflow's ``docker_host`` (only once :meth:`_refused` allowed
        it), else the operator's, else ``DOCKER_HOST`` and the default socket."""
        return cfg.docker_host or self.settings["docker_host"] or None

    async def _engine(self, host: str | None) -> _Engine:
        engine = self._engines.get(host)
        if engine is None:
            _, control = _limiters()
            engine = await trio.to_thread.run_sync(_Engine, host, limiter=control)
            self._engines[host] = engine
        return engine

    @staticmethod
    def _environment(ctx, cfg: DockerParams) -> list[str]:
        ours: dict[str, str] = {}
        params: dict[str, Any] = dict(ctx.workflow_params or {})
        params.update((k, v) for k, v in (ctx.params or {}).items() if k not in _CONFIG_KEYS)
        for name, value in params.items():
            if isinstance(name, str) and _ENV_NAME.match(name):
                ours[name] = env_value(value)
        ours.update(cfg.env or {})
        # Last, so neither params nor `env` can spoof them.
        ours.update(legato_variables(ctx, f"{IO_DIR}/{OUTPUTS_NAME}"))
        for name, value in ours.items():
            if "\0" in value:
                raise ValueError(f"the value of {name} contains a NUL byte, which no environment can hold")
        return [f"{k}={v}" for k, v in ours.items()]

    @staticmethod
    def _labels(ctx) -> dict[str, str]:
        return {
            "legato": "1",
            "legato.instance": str(ctx.instance_id),
            "legato.step": str(ctx.step_id),
            "legato.attempt": str(ctx.attempt),
            "legato.key": str(ctx.idempotency_key),
        }

    def _create(self, engine: _Engine, cfg: DockerParams, ctx, env: list[str], io_dir: Path) -> str:
        """In a thread: create the container (pulling the image first if allowed and needed)."""
        import docker
        from docker.types import Mount as BindMount

        api = engine.api

        mounts = [BindMount(IO_DIR, str(io_dir), type="bind", read_only=False)]
        for m in cfg.mounts or ():
            # The resolved path, as checked against the allow-list (a symlink swapped since stays out).
            mounts.append(BindMount(m.target, os.path.realpath(m.source), type="bind", read_only=m.read_only))
        limits: dict[str, Any] = {}
        if cfg.memory is not None:
            limits["mem_limit"] = limits["memswap_limit"] = _memory_bytes(cfg.memory)
        if cfg.cpus is not None:
            limits["nano_cpus"] = int(cfg.cpus * 1e9)
        host_config = api.create_host_config(mounts=mounts, network_mode=cfg.network, privileged=False, **limits)
        kwargs = dict(
            image=cfg.image, command=cfg.command, entrypoint=cfg.entrypoint, environment=env,
            working_dir=cfg.working_dir, user=cfg.user, labels=self._labels(ctx), host_config=host_config,
            detach=True, stdin_open=False, tty=False,
        )
        try:
            return api.create_container(**kwargs)["Id"]
        except docker.errors.ImageNotFound as exc:
            if cfg.pull == "never":
                raise _ImageMissing(f"the image {cfg.image!r} is not on the Docker engine at "
                                    f"{_Engine.describe(engine.host)} and `pull` is never") from exc
        try:
            api.pull(cfg.image)
        except Exception as exc:  # noqa: BLE001 - a registry that cannot be reached, an unknown image
            raise _ImageMissing(f"the image {cfg.image!r} is not on the Docker engine at "
                                f"{_Engine.describe(engine.host)} and pulling it failed: {_why(exc)}") from exc
        return api.create_container(**kwargs)["Id"]

    async def _follow(self, ctx, engine: _Engine, cid: str, memory, *, start: bool) -> StepResult:
        """Stream the container's output into the step's log until it exits (starting it first when
        ``start``), and turn its exit into a result. Cancellation kills it."""
        import docker

        follow, control = _limiters()
        tail = [""]
        box: dict[str, Any] = {}
        if start:
            # Attach before starting, so no output is lost; a stream attached to a started container
            # could miss its first lines, or hang if it has already exited.
            try:
                box["sock"] = await trio.to_thread.run_sync(
                    lambda: engine.api.attach_socket(cid, {"stdout": 1, "stderr": 1, "stream": 1, "logs": 1}),
                    limiter=control)
                await trio.to_thread.run_sync(engine.api.start, cid, limiter=control)
            except docker.errors.APIError as exc:
                _close(box.get("sock"))
                if exc.status_code is not None and 400 <= exc.status_code < 500 and exc.status_code != 404:
                    # e.g. the command is not in the image, the working_dir cannot be made
                    return StepResult.user_error(f"the container could not start: {_why(exc)}")
                return self._api_failure("cannot start the container", exc)
            except Exception as exc:  # noqa: BLE001
                _close(box.get("sock"))
                return self._api_failure("cannot start the container", exc)
            work = lambda: self._pump_attached(engine, cid, box["sock"], ctx, tail)  # noqa: E731
        else:
            work = lambda: self._pump_logs(engine, cid, ctx, tail, box)  # noqa: E731

        finished = False

        async def guard() -> None:
            try:
                await trio.sleep_forever()
            finally:
                if not finished:  # cancelled while the container runs: kill it, unblock the readers
                    with trio.CancelScope(shield=True) as scope:
                        scope.deadline = trio.current_time() + self.kill_timeout
                        _shutdown(box.get("sock"))  # (a reattached follower's streams end with the container)
                        await trio.to_thread.run_sync(_kill, engine.quick, cid, limiter=control,
                                                      abandon_on_cancel=True)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(guard)
                status = await trio.to_thread.run_sync(work, limiter=follow)
                finished = True
                nursery.cancel_scope.cancel()
        finally:
            _close(box.get("sock"))
        if isinstance(status, Exception):
            return self._api_failure("lost the container while following it", status)

        code = status.get("StatusCode")
        outputs, outputs_error = read_outputs(ctx.attempt_dir / OUTPUTS_NAME, secrets=ctx.secrets)
        if code == 0:
            if outputs_error:
                return StepResult.user_error(outputs_error)
            return StepResult.done(outputs)
        try:
            state = await trio.to_thread.run_sync(lambda: engine.api.inspect_container(cid)["State"], limiter=control)
        except Exception:  # noqa: BLE001
            state = {}
        if state.get("OOMKilled"):
            message = "killed: out of memory" + (f" (limit {_size(memory)})" if memory else "")
        else:
            message = f"exit code {code}"
            if isinstance(code, int) and 128 < code < 128 + 65:
                message += f" (killed by {signal_name(code - 128)})"
            error = status.get("Error") or {}
            if isinstance(error, dict) and error.get("Message"):
                message += f" ({error['Message']})"
        last = last_line(tail[0])
        if last:
            message += f": {last}"
        if outputs_error:
            message += f" (and {outputs_error})"
        return StepResult.user_error(message, outputs)

    # -- in threads --------------------------------------------------------------------------

    @staticmethod
    def _deliver(ctx, decoders: dict, name: str, data: bytes, tail: list[str], final: bool = False) -> None:
        text = decoders[name].decode(data, final=final)
        if not text:
            return
        if name == "stderr":
            tail[0] = (tail[0] + text)[-_STDERR_TAIL:]
        try:
            trio.from_thread.run_sync(ctx.log, name, text)
        except BaseException:  # noqa: BLE001 - the run is ending: keep draining, drop the text
            pass

    def _pump_attached(self, engine: _Engine, cid: str, sock, ctx, tail: list[str]):
        """Read the attached stream to its end, then wait for the exit status. Returns the wait
        result, or the exception that broke the stream."""
        from docker.utils.socket import frames_iter

        decoders = {n: codecs.getincrementaldecoder("utf-8")(errors="replace") for n in ("stdout", "stderr")}
        try:
            for stream, data in frames_iter(sock, False):
                if data:
                    self._deliver(ctx, decoders, "stderr" if stream == 2 else "stdout", data, tail)
        except OSError:
            pass  # the socket was shut down by the kill path, or the engine went away: wait() decides
        for name in decoders:
            self._deliver(ctx, decoders, name, b"", tail, final=True)
        return self._wait(engine, cid)

    def _pump_logs(self, engine: _Engine, cid: str, ctx, tail: list[str], box: dict):
        """Reattached: follow stdout and stderr through the logs endpoint (which ends at once for an
        exited container), one reader thread per stream, then wait for the exit status."""
        import threading

        decoders = {n: codecs.getincrementaldecoder("utf-8")(errors="replace") for n in ("stdout", "stderr")}
        errors: list[Exception] = []

        def read(name: str) -> None:
            try:
                chunks = engine.api.logs(cid, stdout=name == "stdout", stderr=name == "stderr", stream=True,
                                         follow=True)
                for data in chunks:
                    self._deliver(ctx, decoders, name, data, tail)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
            self._deliver(ctx, decoders, name, b"", tail, final=True)

        other = threading.Thread(target=read, args=("stderr",), name=f"legato-docker-logs-{cid[:12]}", daemon=True)
        other.start()
        read("stdout")
        other.join()
        status = self._wait(engine, cid)
        if isinstance(status, Exception) and errors:
            return errors[0]
        return status

    @staticmethod
    def _wait(engine: _Engine, cid: str):
        import requests

        while True:
            try:
                return engine.api.wait(cid, timeout=300)
            except requests.exceptions.ReadTimeout:
                continue  # stdout/stderr closed while the process runs on: keep waiting
            except Exception as exc:  # noqa: BLE001
                return exc

    def _find(self, engine: _Engine, cid: Any, key: str):
        """(id, state, memory limit as given) of this attempt's container, or None when it is gone."""
        import docker

        api = engine.api
        candidates = [cid] if isinstance(cid, str) and cid else []
        if not candidates:
            candidates = [c["Id"] for c in api.containers(all=True, filters={"label": f"legato.key={key}"})]
        for one in candidates:
            try:
                info = api.inspect_container(one)
            except docker.errors.NotFound:
                continue
            labels = info["Config"].get("Labels") or {}
            if labels.get("legato.key") != key:
                continue  # not this attempt's: never touch it
            memory = info["HostConfig"].get("Memory") or None
            return info["Id"], info["State"].get("Status", ""), memory
        return None

    async def _remove(self, engine: _Engine, cid: str) -> None:
        """Remove the container (killing it if it runs). Call shielded; bounded in time."""
        _, control = _limiters()
        with trio.move_on_after(self.kill_timeout + 1.0):
            try:
                await trio.to_thread.run_sync(_kill, engine.quick, cid, limiter=control, abandon_on_cancel=True)
            except Exception:  # noqa: BLE001 - the engine went away: its containers are out of reach anyway
                pass

    async def _remove_earlier_attempts(self, ctx, engine: _Engine) -> None:
        """Containers of this step's earlier attempts that a crash left behind (created, but their
        handle never recorded) are over: their attempts ended. Remove them."""
        _, control = _limiters()
        attempt = int(ctx.attempt)

        def sweep() -> None:
            found = engine.quick.containers(all=True, filters={"label": [
                f"legato.instance={ctx.instance_id}", f"legato.step={ctx.step_id}"]})
            for c in found:
                try:
                    if int((c.get("Labels") or {}).get("legato.attempt", attempt)) < attempt:
                        _kill(engine.quick, c["Id"])
                except ValueError:
                    pass

        with trio.move_on_after(5):
            try:
                await trio.to_thread.run_sync(sweep, limiter=control, abandon_on_cancel=True)
            except Exception as exc:  # noqa: BLE001 - best effort
                ctx.log("stderr", f"[legato] could not remove containers of earlier attempts: {_why(exc)}\n")

    @staticmethod
    def _api_failure(what: str, exc: Exception) -> StepResult:
        import docker

        if isinstance(exc, docker.errors.APIError) and exc.status_code is not None and 400 <= exc.status_code < 500 \
                and exc.status_code not in (404, 409):
            return StepResult.user_error(f"{what}: {_why(exc)}")
        return StepResult.platform_error(f"{what}: {_why(exc)}")


def _kill(api, cid: str) -> None:
    """Kill and remove a container; a container already gone is fine."""
    import docker

    try:
        api.remove_container(cid, force=True, v=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code != 409 or "already in progress" not in str(exc):
            raise


def _size(memory: int | str) -> str:
    """A memory limit as the user wrote it, or bytes in the largest exact unit."""
    if isinstance(memory, str):
        return memory
    for unit, factor in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if memory % factor == 0:
            return f"{memory // factor}{unit}"
    return f"{memory} bytes"


def _shutdown(sock) -> None:
    raw = getattr(sock, "_sock", sock)
    try:
        raw.shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError):
        pass


def _close(obj) -> None:
    if obj is None:
        return
    try:
        obj.close()
    except Exception:  # noqa: BLE001
        pass


def _why(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    if explanation:
        return str(explanation if isinstance(explanation, str) else explanation.decode("utf-8", "replace"))
    return str(exc) or type(exc).__name__


@hookimpl
def legato_register_step_types(registry):
    registry.add(Docker)
