"""Group commit across callers: the writes that reach a SQLite store in one scheduling tick share one
transaction.

A hundred instances running at once each commit their tick (:meth:`SqlStorage.commit
<legato.plugins.sqlstore.store.SqlStorage.commit>`), a worker claims and releases leases, the API
creates instances: one ``BEGIN IMMEDIATE … COMMIT`` each would pay the transaction, the file check
and (for a large one) the hop to a worker thread every time. Here the first writer of a tick leads:
it lets the other tasks of that tick run (one checkpoint), then writes everything queued meanwhile
in one transaction, each write in a savepoint of its own, so one write refused (a stale lease
generation, a missing instance) rolls back alone while the others commit. Nobody's write is
answered before the transaction's COMMIT returned: the durability of each is that of a commit of
its own.

Cancellation acts as it does on a single commit: a caller cancelled before its write is queued
writes nothing; once queued it waits, shielded, for the answer (what the thread path always did).
A leader writes one group, then hands the lead to the first write that queued meanwhile, so no
caller waits for more than the group before its own.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable

import trio

__all__ = ["GroupCommit"]


class _Write:
    __slots__ = ("fn", "args", "doing", "rows", "chars", "value", "error", "done", "lead")

    def __init__(self, fn: Callable[..., Any], args: tuple, doing: str, rows: int, chars: int) -> None:
        self.fn, self.args, self.doing, self.rows, self.chars = fn, args, doing, rows, chars
        self.value = self.error = None
        self.done = trio.Event()
        self.lead = False


class GroupCommit:
    """The group writer of one :class:`SqlStorage` on SQLite (its writer connection and lock).

    ``inline_rows``/``inline_chars``: a group at most this large is written on the event loop's
    thread when the write lock is free (a WAL commit without fsync is cheaper than the hop to a
    thread and back); a larger one, or one that would wait for the lock, in a worker thread."""

    def __init__(self, store, inline_rows: int, inline_chars: int) -> None:
        self.store = store
        self.inline_rows, self.inline_chars = inline_rows, inline_chars
        self.queue: list[_Write] = []
        self.leading = False
        #: True while a group's transaction is open: a write's own ``_sql_tx`` is then a part of it.
        self.open = False
        self.groups = self.writes = 0  # statistics: transactions and the writes they carried

    async def write(self, fn: Callable[..., Any], *args: Any, doing: str, rows: int = 1, chars: int = 0) -> Any:
        """``fn(*args)`` in a transaction shared with this tick's other writes; its value, or the
        :class:`StorageError` it (or the transaction) raised."""
        await trio.lowlevel.checkpoint_if_cancelled()
        w = _Write(fn, args, doing, rows, chars)
        self.queue.append(w)
        with trio.CancelScope(shield=True):
            if self.leading:
                await w.done.wait()
                if not w.lead:
                    return self._answer(w)
            else:
                self.leading = True
                await trio.lowlevel.checkpoint()  # this tick's other writers queue theirs
            try:
                group, self.queue = self.queue, []
                await self._flush(group)
            finally:
                if self.queue:  # queued while we wrote: the first of them leads the next group
                    self.queue[0].lead = True
                    self.queue[0].done.set()
                else:
                    self.leading = False
        return self._answer(w)

    @staticmethod
    def _answer(w: _Write) -> Any:
        if w.error is not None:
            raise w.error
        return w.value

    async def _flush(self, group: list[_Write]) -> None:
        store = self.store
        try:
            small = sum(w.rows for w in group) <= self.inline_rows and sum(w.chars for w in group) <= self.inline_chars
            if small and store._lock.acquire(blocking=False):  # else a call is under way in a thread
                try:
                    written = self._transaction(group, wait=False)
                finally:
                    store._lock.release()
                if written:
                    await trio.lowlevel.checkpoint()
                    return
            await trio.to_thread.run_sync(self._locked, group)
        except BaseException as exc:  # a bug here, or KeyboardInterrupt: nobody is left waiting
            for w in group:
                if w.error is None:
                    w.error = exc if isinstance(exc, Exception) else store._explain(exc, w.doing)
            if not isinstance(exc, Exception):
                raise
        finally:
            for w in group:
                if not w.lead:
                    w.done.set()

    def _locked(self, group: list[_Write]) -> None:
        with self.store._lock:
            self._transaction(group, wait=True)

    def _transaction(self, group: list[_Write], wait: bool) -> bool:
        """Write ``group`` in one transaction; False, with nothing written, when ``wait`` is off and
        another connection holds the write lock."""
        store = self.store
        raw = store._writer
        if raw is None:
            failed = store._explain(RuntimeError("the store is closed"), group[0].doing)
            for w in group:
                w.error = failed
            return True
        if not self._begin(raw, wait):
            return False
        self.open = True
        try:
            for w in group:
                raw.execute("SAVEPOINT w")
                try:
                    w.value = w.fn(*w.args)
                except Exception as exc:
                    if not raw.in_transaction:  # SQLite rolled the whole transaction back (a full disk)
                        raise
                    raw.execute("ROLLBACK TO w")
                    w.error = store._as_storage_error(exc, w.doing)
                raw.execute("RELEASE w")
            raw.execute("COMMIT")
        except BaseException as exc:
            if raw.in_transaction:
                raw.execute("ROLLBACK")
            if not isinstance(exc, Exception):
                raise
            failed = store._as_storage_error(exc, group[0].doing)
            for w in group:
                w.value, w.error = None, failed
            return True
        finally:
            self.open = False
        self.groups += 1
        self.writes += len(group)
        try:
            store._check_file()
        except Exception as exc:  # the file was deleted or replaced under us: what we wrote is gone
            for w in group:
                w.value, w.error = None, exc
        return True

    def _begin(self, raw: sqlite3.Connection, wait: bool) -> bool:
        if wait:
            raw.execute("BEGIN IMMEDIATE")
            return True
        busy_ms = self.store._busy_ms
        raw.execute("PRAGMA busy_timeout = 0")
        try:
            raw.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) in (5, 6) or "locked" in str(exc):  # BUSY, LOCKED
                return False
            raise
        finally:
            raw.execute(f"PRAGMA busy_timeout = {busy_ms}")
        return True
