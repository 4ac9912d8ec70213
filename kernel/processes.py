"""Helpers for step types that run processes (bash, notebook, docker, and third-party ones).

The pieces every such step type needs and must get right the same way: the ``$LEGATO_OUTPUT``
format, how param values are spelled in an environment, the minimal environment a step's process
starts from (plus what the operator allows it to inherit), streaming a pipe into the step's log,
killing a process group, and recognising (before killing it on resume) a process group that
really belongs to an attempt. Standard library only: cheap to import anywhere, including child
processes.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import subprocess

__all__ = [
    "MAX_OUTPUTS_BYTES",
    "parse_outputs",
    "read_outputs",
    "env_value",
    "BASE_ENV",
    "EXECUTION_CONTROL",
    "controls_execution",
    "env_patterns",
    "inherit_allowed",
    "inherit_names",
    "legato_variables",
    "process_environment",
    "pump",
    "killpg",
    "kill_if_attempts",
    "signal_name",
    "last_line",
    "start_process",
    "StartedProcess",
    "supervise",
    "HandleNotRecorded",
    "ProcessIdentity",
    "start_time",
    "this_process",
    "process_gone",
]

#: The largest ``$LEGATO_OUTPUT`` file read; a larger one is the step's error.
MAX_OUTPUTS_BYTES = 1024 * 1024
_READ_CHUNK = 65536
_TAIL = 4096  # characters of stderr kept for the failure message
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_outputs(text: str) -> dict[str, Any]:
    """Parse the contents of a ``$LEGATO_OUTPUT`` file into an outputs map.

    Each non-blank line is either ``key=value`` (``key`` an identifier, ``value`` everything
    after the first ``=``, kept as a string) or a JSON object, merged in. Later lines win.
    Raises ``ValueError`` naming the first line that is neither.
    """
    outputs: dict[str, Any] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise ValueError(_bad_line(number, line, f"invalid JSON ({exc})")) from None
            outputs.update(obj)  # a line starting with `{` can only parse as an object
            continue
        key, sep, value = line.partition("=")
        if not sep or not _KEY.match(key):
            raise ValueError(_bad_line(number, line, "expected `key=value` or a JSON object"))
        outputs[key] = value
    return outputs


def _bad_line(number: int, line: str, why: str) -> str:
    shown = line if len(line) <= 80 else line[:77] + "..."
    return f"bad line {number} in $LEGATO_OUTPUT: {shown!r}: {why}"


def read_outputs(path: Path, *, secrets: Any = None) -> tuple[dict[str, Any], str | None]:
    """Read and parse a ``$LEGATO_OUTPUT`` file: (outputs, None), or ({}, what is wrong with it).
    A file that was never written means no outputs. With ``secrets`` (``ctx.secrets``) a file
    that holds a secret is rewritten masked once read: the kernel stores the outputs masked
    anyway, so reading the file again (a resumed step) gives the same outputs."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_OUTPUTS_BYTES + 1)
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        return {}, f"cannot read $LEGATO_OUTPUT: {exc}"
    if len(data) > MAX_OUTPUTS_BYTES:
        if secrets:
            _remove(path)  # too big to parse, too big to keep
        return {}, f"$LEGATO_OUTPUT is larger than {MAX_OUTPUTS_BYTES} bytes"
    text = data.decode("utf-8", errors="replace")
    if secrets:
        masked = secrets.mask(text)
        if masked != text:
            _rewrite(path, masked)
    try:
        return parse_outputs(text), None
    except ValueError as exc:
        return {}, str(exc)


def _rewrite(path: Path, text: str) -> None:
    """Replace the file's contents (a new file renamed over it: the old one may belong to a
    container's user); if that fails, remove it."""
    tmp = path.with_name(path.name + ".masked")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        _remove(tmp)
        _remove(path)


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def env_value(value: Any) -> str:
    """How a param value is spelled in an environment: strings as they are, booleans as
    ``true``/``false``, numbers in decimal, arrays and maps as JSON, null as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


#: What every step's process gets from the worker's environment, whatever the operator allows:
#: where programs are, who and where the user is, language and time zone, the temp directory.
#: Everything else (cloud credentials, tokens, DOCKER_HOST…) reaches a step only if the operator
#: lists it in the step type's ``inherit_env`` setting.
BASE_ENV = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
    "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME",
})
_BASE_PREFIXES = (b"LC_",)
_BASE_ENV_BYTES = {name: name.encode() for name in BASE_ENV}


#: Environment variables that change what a process runs rather than what it reads: a shell's
#: start-up and prompt hooks, the dynamic loader, interpreters' start-up paths, where programs
#: are found. Params are exported as variables of their own name, so a param so named would let a
#: start request (``-p BASH_ENV=/tmp/x``) run code; such names are refused as param names.
EXECUTION_CONTROL = frozenset({
    "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND", "IFS", "CDPATH", "GLOBIGNORE",
    "PATH", "PYTHONSTARTUP", "PYTHONPATH", "PYTHONHOME", "PYTHONINSPECT", "PYTHONWARNINGS",
    "PERL5OPT", "PERL5LIB", "PERLLIB", "RUBYOPT", "RUBYLIB", "NODE_OPTIONS", "NODE_PATH",
    "GCONV_PATH", "HOSTALIASES", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS",
})
_EXECUTION_PREFIXES = ("LD_", "BASH_FUNC_", "DYLD_")


def controls_execution(name: str) -> bool:
    """Whether the environment variable ``name`` changes what a step's process runs
    (:data:`EXECUTION_CONTROL`, ``LD_*``, ``BASH_FUNC_*``): such a name is no param's."""
    return name in EXECUTION_CONTROL or name.startswith(_EXECUTION_PREFIXES)


def env_patterns(values: Any) -> list[str]:
    """Check an ``inherit_env`` list: names of environment variables, a trailing ``*`` matching a
    prefix (``AWS_*``). For a ``Settings`` model's field validator; raises ``ValueError``."""
    if not isinstance(values, (list, tuple)) or not all(isinstance(n, str) and _ENV_PATTERN.match(n) for n in values):
        raise ValueError("must be a list of environment variable names (a trailing * matches a prefix, "
                         f"e.g. AWS_*), got {values!r:.80}")
    return list(values)


def inherit_allowed(settings: Any) -> tuple[str, ...]:
    """The operator's ``inherit_env`` setting of a step type: names of the worker's environment
    variables its steps may inherit beyond :data:`BASE_ENV`, a trailing ``*`` matching a prefix
    (``AWS_*``). Raises ValueError when it is not a list of such names."""
    allowed = (settings or {}).get("inherit_env") if isinstance(settings, dict) else None
    if allowed is None:
        return ()
    try:
        return tuple(env_patterns(allowed))
    except ValueError as exc:
        raise ValueError(f"the operator setting `inherit_env` {exc}") from None


_ENV_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\*?$|^\*$")


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name == p or (p.endswith("*") and name.startswith(p[:-1])) for p in patterns)


def inherit_names(settings, asked: bool | list[str], step_type: str) -> tuple[str, ...]:
    """What a step inherits from the worker's environment: the operator's ``inherit_env``
    allow-list (``asked`` true), nothing (false), or the names ``asked`` lists, each of which the
    operator must allow. Raises ValueError saying which name is not allowed and who can allow it."""
    allowed = inherit_allowed(settings)
    if asked is True:
        return allowed
    if not asked:
        return ()
    refused = [name for name in asked if not _matches(name, allowed)]
    if refused:
        shown = ", ".join(allowed) if allowed else "none"
        raise ValueError(f"`inherit_env` asks for {', '.join(refused)}, which the operator does not allow "
                         f"(the {step_type} step type's setting `inherit_env` allows: {shown}); ask the "
                         "operator to add it there, or pass the value as a (secret) param")
    return tuple(asked)


def legato_variables(ctx, output: Any = None) -> dict[str, str]:
    """The ``LEGATO_*`` variables of an attempt: ``LEGATO_OUTPUT`` (when ``output`` is given),
    ``LEGATO_INSTANCE_ID``, ``LEGATO_STEP_ID``, ``LEGATO_ATTEMPT``, ``LEGATO_IDEMPOTENCY_KEY``."""
    out = {} if output is None else {"LEGATO_OUTPUT": str(output)}
    out.update(
        LEGATO_INSTANCE_ID=str(ctx.instance_id),
        LEGATO_STEP_ID=str(ctx.step_id),
        LEGATO_ATTEMPT=str(ctx.attempt),
        LEGATO_IDEMPOTENCY_KEY=str(ctx.idempotency_key),
    )
    return out


def process_environment(ours: dict[str, str], inherit: Any = (), *, base: frozenset[str] = BASE_ENV) -> dict[bytes, bytes]:
    """The environment of a step's process: :data:`BASE_ENV` (and ``LC_*``) from the worker's
    environment, the worker's variables matching ``inherit`` (what the operator allowed, see
    :func:`inherit_allowed`), then ``ours`` (params, ``env``, ``LEGATO_*``) on top. Never the
    worker's whole environment. Raises ValueError for a value with a NUL byte."""
    env: dict[bytes, bytes] = {}
    # Bytes all the way: decoding every variable of os.environ, every step, costs for nothing.
    # On POSIX os.environb keeps its variables in a plain dict of bytes (``_data``, the one
    # os.environ and putenv keep current): read at C speed, not through the mapping's per-item
    # encode and check.
    environ = getattr(os.environb, "_data", None)
    if not isinstance(environ, dict):
        environ = os.environb
    for name in base:
        key = _BASE_ENV_BYTES.get(name) or name.encode()
        value = environ.get(key)
        if value is not None:
            env[key] = value
    for name, value in environ.items():
        if name.startswith(_BASE_PREFIXES):
            env[name] = value
    if inherit:
        patterns = tuple(inherit)
        for name, value in environ.items():
            text = os.fsdecode(name)
            if _matches(text, patterns):
                env[name] = value
    encode = os.fsencode
    for name, value in ours.items():
        if "\0" in value:
            raise ValueError(f"the value of {name} contains a NUL byte, which no environment can hold")
        env[encode(name)] = encode(value)
    return env


async def pump(ctx, stream, name: str, tail: list[str] | None = None) -> None:
    """Copy a trio receive stream into the step's ``name`` log until EOF, as it arrives.
    With ``tail`` (a one-element list), keep the last few KB there for the failure message."""
    # Incremental, so a multi-byte character split across two reads still decodes.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        chunk = await stream.receive_some(_READ_CHUNK)
        text = decoder.decode(chunk, final=not chunk)
        if text:
            ctx.log(name, text)
            if tail is not None:
                tail[0] = (tail[0] + text)[-_TAIL:]
        if not chunk:
            return


def killpg(pgid: int, sig: int) -> None:
    """Signal a whole process group; an empty group is not an error."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def kill_if_attempts(pgid: Any, idempotency_key: str) -> bool:
    """SIGKILL process group ``pgid`` if its leader's environment carries this attempt's
    ``LEGATO_IDEMPOTENCY_KEY`` (so a pid reused by someone else is left alone). For ``reap``."""
    if not isinstance(pgid, int) or isinstance(pgid, bool) or pgid <= 1:
        return False
    try:
        with open(f"/proc/{pgid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
    except OSError:
        return False  # gone already (or not ours to read)
    if f"LEGATO_IDEMPOTENCY_KEY={idempotency_key}".encode() not in environ:
        return False
    killpg(pgid, signal.SIGKILL)
    return True


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9; the number itself when it names no signal."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def last_line(text: str, width: int = 200) -> str:
    """The last non-blank line of ``text``, shortened to ``width``: what a failure message quotes."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line:
            return line if len(line) <= width else line[: width - 3] + "..."
    return ""


class HandleNotRecorded(Exception):
    """The process handle could not be recorded (storage trouble); the process was stopped."""


async def supervise(ctx, proc, *, term_grace: float = 1.0, drain_timeout: float = 2.0) -> tuple[int, str]:
    """Follow a process started with ``start_new_session=True`` and piped stdout/stderr to its end.

    Records ``{"pid", "pgid"}`` as the attempt's handle, streams stdout and stderr into the step's
    log as they arrive, and once the process exits kills whatever it left in its process group
    (so nothing outlives the step and the pipes reach EOF). On cancellation, and whatever
    happens, the group gets SIGTERM, then SIGKILL after ``term_grace`` seconds, and the process is
    reaped. Returns (exit code, the last few KB of stderr). Raises :class:`HandleNotRecorded`.
    """
    import trio

    pgid = proc.pid  # a session leader leads its own process group
    tail = [""]
    drain_abandoned = False
    try:
        try:
            await ctx.record_handle({"pid": proc.pid, "pgid": pgid})
        except Exception as exc:  # storage trouble: the finally below stops the process
            raise HandleNotRecorded(f"could not record the process handle: {exc}") from None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, ctx, proc.stdout, "stdout", None)
            nursery.start_soon(pump, ctx, proc.stderr, "stderr", tail)
            await proc.wait()
            killpg(pgid, signal.SIGKILL)
            # Only a process that left the group (setsid) can still hold the pipes open.
            nursery.cancel_scope.deadline = trio.current_time() + drain_timeout
        drain_abandoned = nursery.cancel_scope.cancelled_caught
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                killpg(pgid, signal.SIGTERM)
                with trio.move_on_after(term_grace):
                    await proc.wait()
            # Unconditionally: the leader may be gone while members that ignored SIGTERM remain.
            killpg(pgid, signal.SIGKILL)
            await proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    await stream.aclose()
    if drain_abandoned:
        ctx.log("stderr", "\n[legato] stopped reading output: a process outside the step's process group "
                          "still holds stdout/stderr open\n")
    return proc.returncode, tail[0]


async def start_process(command: list[str], *, cwd: str, env: dict[bytes, bytes]) -> "StartedProcess":
    """Start ``command`` in its own session and process group, stdin ``/dev/null``, stdout and
    stderr piped; follow it with :meth:`StartedProcess.supervise`, at once. Raises OSError or
    ValueError when it cannot start (nothing is left behind then)."""
    import subprocess

    import trio

    if not _fast_watch():
        proc = await trio.lowlevel.open_process(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=cwd, env=env, start_new_session=True)
        return _TrioProcess(proc)
    # In a worker thread, as trio does it: the spawn returns only once the child has exec'd.
    return _Watch(*await trio.to_thread.run_sync(_spawn, command, cwd, env))


class StartedProcess:
    """A process :func:`start_process` started, to be followed to its end."""

    pid: int

    async def supervise(self, ctx, *, term_grace: float = 1.0, drain_timeout: float = 2.0) -> tuple[int, str]:
        """What :func:`supervise` does: the handle recorded, both streams live in the step's log,
        the group killed once the process exits, on cancellation SIGTERM then SIGKILL after
        ``term_grace``. Returns (exit code, the last few KB of stderr). Raises
        :class:`HandleNotRecorded` (the process was stopped)."""
        raise NotImplementedError


class _TrioProcess(StartedProcess):
    def __init__(self, proc) -> None:
        self.proc = proc
        self.pid = proc.pid

    async def supervise(self, ctx, *, term_grace: float = 1.0, drain_timeout: float = 2.0) -> tuple[int, str]:
        return await supervise(ctx, self.proc, term_grace=term_grace, drain_timeout=drain_timeout)


_fast: list[bool] = []


def _fast_watch() -> bool:
    """Whether this system has epoll and pidfds (Linux 5.3+, and no sandbox refusing them)."""
    if not _fast:
        import select

        ok = hasattr(select, "epoll") and hasattr(os, "pidfd_open") and hasattr(os, "pipe2")
        if ok:
            try:
                os.close(os.pidfd_open(os.getpid()))
            except OSError:
                ok = False
        _fast.append(ok)
    return _fast[0]


def _spawn(command: list[str], cwd: str, env: dict[bytes, bytes]) -> tuple[subprocess.Popen, int, int, int]:
    """Popen ``command`` with both outputs into new pipes: (popen, its pidfd, stdout and stderr's
    read ends). No descriptor outlives a failure."""
    import subprocess

    fds: list[int] = []
    try:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        fds += (out_r, out_w)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        fds += (err_r, err_w)
        # close_fds (the default) keeps subprocess on its vfork fast path; so does a new session.
        popen = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                                 cwd=cwd, env=env, start_new_session=True)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    os.close(out_w)
    os.close(err_w)
    try:
        # Nobody else reaps our child (it stays a zombie until we do): its pid cannot be reused.
        pidfd = os.pidfd_open(popen.pid)
    except BaseException:
        killpg(popen.pid, signal.SIGKILL)
        popen.wait()
        os.close(out_r)
        os.close(err_r)
        raise
    return popen, pidfd, out_r, err_r


_Utf8Decoder = codecs.getincrementaldecoder("utf-8")


class _Stream:
    __slots__ = ("name", "fd", "decoder", "tail")

    def __init__(self, name: str, fd: int, tail: str | None) -> None:
        self.name = name
        self.fd = fd
        self.decoder: Any = None  # made at the first byte: most steps' stderr stays empty
        self.tail = tail  # None: not kept


class _Watch(StartedProcess):
    """A started process that one task follows where Linux gives process file descriptors: an
    epoll set of both pipes and the pidfd, itself waited on by trio. Beside the spawn a step is
    then a few system calls and a wake-up or two, not a nursery with a task per pipe. The pipes
    stay blocking: a pipe is read only when the set reports it readable, so a read never waits."""

    def __init__(self, popen: subprocess.Popen, pidfd: int, out_fd: int, err_fd: int) -> None:
        self.pid = popen.pid
        self.popen = popen
        self.pidfd = pidfd  # -1 once closed
        self.streams = {out_fd: _Stream("stdout", out_fd, None), err_fd: _Stream("stderr", err_fd, "")}
        self.stderr = self.streams[err_fd]
        self.epoll: Any = None
        self.trio_saw_pidfd = False

    async def supervise(self, ctx, *, term_grace: float = 1.0, drain_timeout: float = 2.0) -> tuple[int, str]:
        import select

        import trio

        popen, pgid = self.popen, self.popen.pid  # a session leader leads its own process group
        wait_readable = trio.lowlevel.wait_readable
        drain_abandoned = False
        try:
            self.epoll = epoll = select.epoll(3)
            epoll.register(self.pidfd, select.EPOLLIN)
            for fd in self.streams:
                epoll.register(fd, select.EPOLLIN)
            try:
                await ctx.record_handle({"pid": popen.pid, "pgid": pgid})
            except Exception as exc:  # storage trouble: the finally below stops the process
                raise HandleNotRecorded(f"could not record the process handle: {exc}") from None
            while popen.returncode is None:
                await wait_readable(epoll.fileno())
                for fd, _ in epoll.poll(0, 3):
                    if fd == self.pidfd:
                        # Before reaping: while the leader is a zombie its pid is no one else's.
                        killpg(pgid, signal.SIGKILL)
                        popen.wait()  # exited: reaps at once
                        epoll.unregister(fd)
                        os.close(fd)
                        self.pidfd = -1
                    else:
                        self._read(ctx, self.streams[fd])
            if self.streams:
                # Only a process that left the group (setsid) can hold the pipes open this long.
                with trio.move_on_after(drain_timeout) as drain:
                    while self.streams:
                        await wait_readable(epoll.fileno())
                        for fd, _ in epoll.poll(0, 3):
                            self._read(ctx, self.streams[fd])
                drain_abandoned = drain.cancelled_caught
        finally:
            if popen.returncode is None:
                self.trio_saw_pidfd = True
                with trio.CancelScope(shield=True):
                    killpg(pgid, signal.SIGTERM)
                    with trio.move_on_after(term_grace):
                        await wait_readable(self.pidfd)
                    # Even when the leader is gone: members that ignored SIGTERM may remain.
                    killpg(pgid, signal.SIGKILL)
                    await wait_readable(self.pidfd)
                    popen.wait()
            self._close()
        if drain_abandoned:
            ctx.log("stderr", "\n[legato] stopped reading output: a process outside the step's process "
                              "group still holds stdout/stderr open\n")
        return popen.returncode, self.stderr.tail

    def _read(self, ctx, stream: _Stream) -> None:
        chunk = os.read(stream.fd, _READ_CHUNK)
        decoder = stream.decoder
        if chunk:
            if decoder is None:
                # Incremental, so a multi-byte character split across two reads still decodes.
                decoder = stream.decoder = _Utf8Decoder(errors="replace")
            text = decoder.decode(chunk)
        else:  # EOF
            text = "" if decoder is None else decoder.decode(b"", final=True)
            # Out of the set before closing: a child another thread is spawning may hold a copy
            # of the descriptor for a moment, and the set follows the file, not the number.
            self.epoll.unregister(stream.fd)
            os.close(stream.fd)
            del self.streams[stream.fd]
        if text:
            ctx.log(stream.name, text)
            if stream.tail is not None:
                stream.tail = (stream.tail + text)[-_TAIL:]

    def _close(self) -> None:
        import trio

        if self.epoll is not None:
            trio.lowlevel.notify_closing(self.epoll.fileno())
            self.epoll.close()
        if self.pidfd >= 0:
            if self.trio_saw_pidfd:
                trio.lowlevel.notify_closing(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1
        for fd in self.streams:
            os.close(fd)
        self.streams.clear()


class ProcessIdentity(NamedTuple):
    """Who a process is, precisely enough to tell later that it is gone: its host name (for
    people), pid, start time (``/proc/<pid>/stat`` field 22, clock ticks after boot: a reused pid
    has another) and ``namespace`` (the boot id and pid namespace in which the pid means this
    process; empty where that cannot be known, e.g. without /proc)."""

    host: str
    pid: int
    started: int | None
    namespace: str


def start_time(pid: int, *, zombie: bool = False) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (clock ticks after boot; with the pid, who a process is),
    or None when the process is gone, or a zombie (unless ``zombie``: a zombie leader's process
    group may still have live members to kill)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()  # the name, in parentheses, may hold spaces
    if not fields or (fields[0] == b"Z" and not zombie):
        return None
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _namespace() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


_identity: list[ProcessIdentity] = []  # per process (a fork gets its own: the pid is checked)


def this_process() -> ProcessIdentity:
    """The identity of the calling process (computed once per process)."""
    pid = os.getpid()
    if not _identity or _identity[0].pid != pid:
        import socket

        _identity[:] = [ProcessIdentity(socket.gethostname(), pid, start_time(pid), _namespace())]
    return _identity[0]


def process_gone(pid: int | None, started: int | None, namespace: str | None) -> bool:
    """Whether the process so identified is known to be dead: it ran where this process runs
    (same boot, same pid namespace) and its pid is free now, a zombie, or another process's.
    False when that cannot be known (another machine or container, no /proc)."""
    here = this_process()
    if not namespace or namespace != here.namespace or not isinstance(pid, int) or started is None:
        return False
    return start_time(pid) != started
