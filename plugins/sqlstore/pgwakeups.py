"""Waking workers through PostgreSQL's LISTEN/NOTIFY (the PostgreSQL side of :mod:`legato.wakeup`).

Every process that opens one database shares its wake-ups through the server: a notifier sends
``NOTIFY legato_work`` and every session that listens on the channel hears it, on any machine.

- :meth:`PgWakeups.notify` never blocks: it pokes a sender thread, which sends one NOTIFY on a
  connection of its own for every poke since its last (wake-ups say only "look again", so pokes
  that arrive together are one). :meth:`PgWakeups.close` sends what is still owed before the
  process exits (``legato start --no-wait`` returns right after its commit).
- Listening takes one connection per process, whatever the number of listeners: a thread waits on
  it and wakes each listener (a trio event, set through its trio token). The first
  :meth:`~PgWakeups.listen` waits until the LISTEN is in place, so nothing committed after it
  returns goes unheard.
- A connection lost is opened again with backoff (0.1 s doubling to 5 s); when the listening one
  is back, every listener is woken once (it may have missed something meanwhile) and, until then,
  listeners fall back on their poll.
"""

from __future__ import annotations

import select
import threading
from typing import Callable

import trio

from legato.wakeup import EventListener, Listener, Wakeups

CHANNEL = "legato_work"
BACKOFF = (0.1, 5.0)  # seconds: the first wait after a failed connection, and the longest
CONNECT_TIMEOUT = 10  # seconds, libpq's connect_timeout
READY_WAIT = 10.0  # seconds the first listen() waits for the LISTEN to be in place


def _connect(conninfo: str):
    import psycopg

    return psycopg.connect(conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                           application_name="legato-wakeups")


class _PgListener(EventListener):
    def __init__(self, owner: "PgWakeups") -> None:
        self.owner = owner
        self.token = trio.lowlevel.current_trio_token()
        self.event = trio.Event()

    def wake(self) -> None:
        """Called from the listening thread."""
        try:
            self.token.run_sync_soon(self.event.set)
        except trio.RunFinishedError:
            pass

    def close(self) -> None:
        self.owner._forget(self)


class _Backoff:
    def __init__(self) -> None:
        self.delay = BACKOFF[0]

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, BACKOFF[1])
        return delay

    def reset(self) -> None:
        self.delay = BACKOFF[0]


class PgWakeups(Wakeups):
    """Wake-ups through LISTEN/NOTIFY on the database ``conninfo`` (a libpq URI)."""

    notifies = True

    def __init__(self, conninfo: str, *, connect: Callable = _connect) -> None:
        self.conninfo = conninfo
        self._connect = connect
        self._mutex = threading.Lock()
        self._closed = threading.Event()
        # sending
        self._owed = threading.Event()  # a notify is waiting to be sent
        self._idle = threading.Event()  # nothing owed and nothing being sent
        self._idle.set()
        self._sender: threading.Thread | None = None
        # listening
        self._listeners: set[_PgListener] = set()
        self._listening: threading.Thread | None = None
        self._ready = threading.Event()

    # -- notifying --------------------------------------------------------------------------

    def notify(self) -> None:
        with self._mutex:
            if self._closed.is_set():
                return
            self._idle.clear()
            self._owed.set()
            if self._sender is None:
                self._sender = threading.Thread(target=self._send_loop, name="legato-pg-notify", daemon=True)
                self._sender.start()

    def _send_loop(self) -> None:
        conn, backoff = None, _Backoff()
        try:
            while True:
                self._owed.wait()
                if self._closed.is_set() and not self._owed.is_set():
                    return
                self._owed.clear()
                while True:
                    try:
                        if conn is None:
                            conn = self._connect(self.conninfo)
                        conn.execute(f"NOTIFY {CHANNEL}")
                        backoff.reset()
                        break
                    except Exception:  # noqa: BLE001 - best effort: the listeners poll as well
                        if conn is not None:
                            _close_quietly(conn)
                            conn = None
                        if self._closed.wait(backoff.next()):
                            return  # closing with the server away: nothing more can be sent
                with self._mutex:
                    if not self._owed.is_set():
                        self._idle.set()
                if self._closed.is_set() and not self._owed.is_set():
                    return
        finally:
            self._idle.set()
            if conn is not None:
                _close_quietly(conn)

    # -- listening --------------------------------------------------------------------------

    def listen(self) -> Listener:
        listener = _PgListener(self)
        with self._mutex:
            if self._closed.is_set():
                return Listener()
            self._listeners.add(listener)
            if self._listening is None:
                self._listening = threading.Thread(target=self._listen_loop, name="legato-pg-listen", daemon=True)
                self._listening.start()
        self._ready.wait(READY_WAIT)  # once: later listeners find it set (or the server away: they poll)
        return listener

    def _forget(self, listener: _PgListener) -> None:
        with self._mutex:
            self._listeners.discard(listener)

    def _wake_all(self) -> None:
        with self._mutex:
            listeners = list(self._listeners)
        for listener in listeners:
            listener.wake()

    def _listen_loop(self) -> None:
        backoff, first = _Backoff(), True
        while not self._closed.is_set():
            try:
                conn = self._connect(self.conninfo)
            except Exception:  # noqa: BLE001 - the server is away: try again, listeners poll meanwhile
                self._ready.set()  # do not hold listen() up: its caller polls as a fallback
                self._closed.wait(backoff.next())
                continue
            try:
                conn.execute(f"LISTEN {CHANNEL}")
                backoff.reset()
                self._ready.set()
                if not first:
                    self._wake_all()  # something may have been sent while we were not listening
                first = False
                pgconn = conn.pgconn
                fd = pgconn.socket
                while not self._closed.is_set():
                    readable, _, _ = select.select([fd], [], [], 0.5)
                    if not readable:
                        continue
                    pgconn.consume_input()
                    if pgconn.status != 0:  # CONNECTION_OK
                        raise ConnectionError("the listening connection was lost")
                    heard = False
                    while pgconn.notifies() is not None:
                        heard = True
                    if heard:
                        self._wake_all()
            except Exception:  # noqa: BLE001 - lost: connect again
                first = False
                self._closed.wait(backoff.next())
            finally:
                _close_quietly(conn)

    # -- closing ----------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Send what is owed (at most ``timeout`` seconds), then stop both threads."""
        self._idle.wait(timeout)
        with self._mutex:
            self._closed.set()
            self._owed.set()  # let the sender see it is closing
            sender, listening = self._sender, self._listening
        for thread in (sender, listening):
            if thread is not None:
                thread.join(1.0)


def _close_quietly(conn) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001
        pass
