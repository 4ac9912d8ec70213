"""A fork server for crash batteries: imports Legato once, then forks one ``legato`` CLI process
per request, so a battery can SIGKILL hundreds of real kernels without paying the interpreter's
start-up (1–2 s of imports on a busy CI machine) each time.

Run as a script (``python tests/forkserver.py``). Protocol, one JSON object per line: the driver
writes ``{"argv": [...], "log": path, "kill_after": seconds}``; the server forks a child that runs
``legato <argv>`` exactly as the console script does (same ``main``, same exit codes) with stdout
and stderr in ``log``, answers ``{"pid": n}`` at once and ``{"pid": n, "exit": code, "killed":
bool}`` once the child is gone (``-9`` when it was SIGKILLed). The server itself SIGKILLs a child
still running after ``kill_after`` seconds: it holds the child unreaped until then, so the pid it
signals cannot belong to anyone else (a driver killing by pid races the child's own exit and the
pid's reuse). One child at a time.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys


def _warm() -> None:
    """Import what every run imports, in the parent, so that children start at once. No thread
    may be running at fork time: nothing here starts one."""
    import click  # noqa: F401
    import docker  # noqa: F401
    import pydantic  # noqa: F401
    import sqlalchemy  # noqa: F401
    import trio  # noqa: F401

    import legato.cli  # noqa: F401
    import legato.engine  # noqa: F401
    from legato.cel import _cel
    from legato.plugin_manager import get_plugins

    _cel()
    get_plugins()
    import legato.plugins.sqlstore.store  # noqa: F401


def _child(argv: list[str], log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    code = 0
    try:
        from legato.cli import main

        main(argv, prog_name="legato", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - say it in the log, exit like an uncaught exception
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(code)


def main() -> None:
    """Serve requests from stdin until it closes."""
    _warm()
    out = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request["argv"], request["log"])
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        killed = False
        pidfd = os.pidfd_open(pid)  # readable once the child has exited; it stays unreaped till waitpid
        try:
            ready, _, _ = select.select([pidfd], [], [], request.get("kill_after"))
            if not ready:
                os.kill(pid, signal.SIGKILL)  # still ours: not reaped yet, so the pid is not reused
                killed = True
        finally:
            os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        out.write(json.dumps({"pid": pid, "exit": os.waitstatus_to_exitcode(status), "killed": killed}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
