"""Waking idle workers when work is queued (DESIGN §8, `legato worker`).

A worker waits for startable instances in the store; polling for them costs latency or load, so a
store tells its waiting workers instead, best effort, and they poll only as a fallback (a worker
that died with its instances sends nothing). Each backend picks the channel (:meth:`Storage.wakeups
<legato.storage.Storage.wakeups>`):

- :class:`Wakeups`, the default: nobody is told; workers find work when they poll.
- :class:`LocalWakeups`: in one process (``memory://``), a trio event per listener.
- :class:`FifoWakeups`: on one machine (a SQLite file), a named pipe per listening worker in a
  directory beside the database. A notifier writes one byte into each (a few microseconds, never
  blocking); a pipe nobody reads any more (its worker died) refuses to open and is removed. A
  FIFO, unlike a unix socket, has no path-length limit and works on every POSIX system.

A wake-up says only "look again": the worker then reads the store, which is the only truth.
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

import trio

__all__ = ["Wakeups", "LocalWakeups", "FifoWakeups", "Listener", "EventListener"]


class Listener:
    """One worker's end: :meth:`wait` returns True when woken, False when ``timeout`` passed."""

    async def wait(self, timeout: float) -> bool:
        await trio.sleep(timeout)
        return False

    def close(self) -> None:
        """Stop listening (idempotent)."""

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Wakeups:
    """No channel: :meth:`notify` does nothing and listeners wake only when their timeout passes."""

    #: Whether a notification reaches listeners (False: workers only poll).
    notifies = False

    def notify(self) -> None:
        """Wake every listening worker (best effort: never blocks, never raises)."""

    def listen(self) -> Listener:
        """Start listening; use as a context manager (``with wakeups.listen() as listener``)."""
        return Listener()


class EventListener(Listener):
    """A listener woken by setting its trio event (``self.event``, made anew once seen)."""

    event: trio.Event

    async def wait(self, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            await self.event.wait()
        woken = self.event.is_set()
        if woken:
            self.event = trio.Event()
        return woken


class _LocalListener(EventListener):
    def __init__(self, owner: "LocalWakeups") -> None:
        self.owner = owner
        self.event = trio.Event()
        owner.listeners.add(self)

    def close(self) -> None:
        self.owner.listeners.discard(self)


class LocalWakeups(Wakeups):
    """Listeners in this process (notified from the same trio run)."""

    notifies = True

    def __init__(self) -> None:
        self.listeners: set[_LocalListener] = set()

    def notify(self) -> None:
        for listener in list(self.listeners):
            try:
                listener.event.set()
            except RuntimeError:  # pragma: no cover - set from outside the trio run that made it
                pass

    def listen(self) -> Listener:
        return _LocalListener(self)


class _FifoListener(Listener):
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = directory / f"{name}.new"
        os.mkfifo(tmp, 0o600)
        try:
            # Opened for reading before it gets the name notifiers look for: a notifier that finds
            # no reader removes the pipe as a dead worker's. Our own writer keeps the read end
            # from seeing end-of-file (which would make it readable forever) between notifiers.
            self.rfd = os.open(tmp, os.O_RDONLY | os.O_NONBLOCK)
            self.wfd = os.open(tmp, os.O_WRONLY | os.O_NONBLOCK)
            self.path = directory / f"{name}.fifo"
            os.rename(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    async def wait(self, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            await trio.lowlevel.wait_readable(self.rfd)
        woken = False
        while True:  # take every byte sent so far: one look at the store answers them all
            try:
                data = os.read(self.rfd, 4096)
            except BlockingIOError:
                break
            if not data:
                break
            woken = True
        return woken

    def close(self) -> None:
        if self.rfd < 0:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self.rfd)
        os.close(self.wfd)
        self.rfd = self.wfd = -1


class FifoWakeups(Wakeups):
    """Workers on this machine, each listening on a named pipe in ``directory``."""

    notifies = True

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    def notify(self) -> None:
        try:
            names = os.listdir(self.directory)
        except OSError:
            return  # no worker ever listened here
        for name in names:
            if not name.endswith(".fifo"):
                continue
            path = os.path.join(self.directory, name)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # nobody reads it: its worker died without closing it
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
                continue  # gone meanwhile, or not ours to write: best effort
            try:
                os.write(fd, b"!")
            except OSError:
                pass  # full: that worker has wake-ups waiting already
            finally:
                os.close(fd)

    def listen(self) -> Listener:
        try:
            return _FifoListener(self.directory)
        except OSError:  # no named pipes here (a file system without them): poll only
            return Listener()
