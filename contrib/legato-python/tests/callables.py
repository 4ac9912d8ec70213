"""Callables the tests run in the child process (found through the step's `sys_path`).

Standard library only: the child may be another interpreter.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time


def _write_atomically(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def totals(x=1, name="sales"):
    return {"x": x, "name": name, "nested": {"rows": [1, 2, 3]}}


def answer():
    return 42


def a_list():
    return ["a", 1, None]


def nothing():
    return None


async def fetch(delay=0.01):
    await asyncio.sleep(delay)
    return {"async": True, "delay": delay}


def echo(**kwargs):
    """Return what arrived, untouched."""
    return {"received": kwargs}


def environment():
    return {name: value for name, value in os.environ.items() if name.startswith("LEGATO_")}


def where():
    return {"cwd": os.getcwd(), "sys_path": sys.path, "executable": sys.executable}


def boom(reason="bad input"):
    raise ValueError(f"{reason}: the callable raised")


def returns_a_set():
    return {"fine": 1, "bad": {1, 2}}


def needs_a_date(date):
    return {"date": date}


def chatty(pidfile):
    print("hello from the child", flush=True)
    _write_atomically(pidfile, str(os.getpid()))
    time.sleep(60)


def sleepy(pidfile):
    _write_atomically(pidfile, str(os.getpid()))
    time.sleep(60)


def spawn_grandchild(pidfile):
    grandchild = subprocess.Popen(["sleep", "60"])
    _write_atomically(pidfile, f"{os.getpid()} {grandchild.pid}")
    time.sleep(60)


def leave_grandchild(pidfile):
    grandchild = subprocess.Popen(["sleep", "60"])
    _write_atomically(pidfile, f"{os.getpid()} {grandchild.pid}")
    return {"started": grandchild.pid}


def cleans_up(pidfile, marker):
    """Sleeps; when terminated, its `finally` still runs."""
    try:
        _write_atomically(pidfile, str(os.getpid()))
        time.sleep(60)
    finally:
        _write_atomically(marker, "cleaned up")


def ignores_sigterm(pidfile):
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _write_atomically(pidfile, str(os.getpid()))
    while True:
        time.sleep(0.05)


def exits(code):
    sys.exit(code)


def hard_exit():
    os._exit(0)


def killed():
    import signal

    print("about to die", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
