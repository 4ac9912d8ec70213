"""Live updates for the web UI: an instance's new timeline events as Server-Sent Events.

A stream reads the store, which is the only truth, from the offset its client has seen
(:meth:`Storage.get_timeline_since <legato.storage.Storage.get_timeline_since>`). Between reads
it waits on :class:`LiveEvents`, an observer of this process's engine (``legato_on_event``: it
hears each event once it is durable), so a step run by the server's own worker reaches an open
page within milliseconds; an instance run by another process (a ``legato worker`` on the same
store) is seen by a read every :data:`POLL` seconds. Reads are at most one per :data:`COALESCE`
seconds per stream, however busy the instance: a 10,000-step fan-out does not make one read per
event.
"""

from __future__ import annotations

import json
from contextlib import contextmanager, nullcontext
from typing import Any, AsyncIterator, Iterator

import trio

from ...hookspecs import hookimpl
from ...states import InstanceStatus

__all__ = ["LiveEvents", "stream", "POLL", "COALESCE", "KEEPALIVE"]

POLL = 1.0  # seconds between reads of an instance nothing in this process tells us about
COALESCE = 0.03  # seconds a woken stream waits for the rest of a burst before reading
KEEPALIVE = 15.0  # seconds between comments that keep proxies from closing an idle stream
_ENDED = frozenset(s.value for s in InstanceStatus if s.terminal)


class LiveEvents:
    """A ``legato_on_event`` observer that wakes the streams following an instance (register it on
    the plugin manager before the engine is built: the engine asks once whether anyone observes).
    Only followed instances are tracked: a long-running server keeps nothing per instance run."""

    def __init__(self) -> None:
        self._watched: dict[str, _Watch] = {}

    @hookimpl
    def legato_on_event(self, event) -> None:
        watch = self._watched.get(event.instance_id)
        if watch is not None:
            watch.generation += 1
            watch.changed.set()
            watch.changed = trio.Event()

    @contextmanager
    def watch(self, instance_id: str) -> Iterator["_Watch"]:
        """Follow ``instance_id`` while the block runs (shared by every stream that follows it)."""
        watch = self._watched.get(instance_id)
        if watch is None:
            watch = self._watched[instance_id] = _Watch()
        watch.followers += 1
        try:
            yield watch
        finally:
            watch.followers -= 1
            if not watch.followers:
                del self._watched[instance_id]


class _Watch:
    """One followed instance: ``generation`` counts its durable events heard so far."""

    def __init__(self) -> None:
        self.generation = 0
        self.followers = 0
        self.changed = trio.Event()

    async def wait(self, seen: int, timeout: float) -> None:
        """Return once an event came after generation ``seen`` (at once if one did already: none
        heard between a read and this wait is missed), or after ``timeout`` seconds."""
        if self.generation != seen:
            return
        with trio.move_on_after(timeout):
            await self.changed.wait()


def _sse(kind: str, data: Any, ident: int | None = None) -> bytes:
    head = f"id: {ident}\n" if ident is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n".encode()


def event_json(e, iso) -> dict[str, Any]:
    """A timeline event as the API answers it."""
    return {"ts": iso(e.ts), "step_id": e.step_id, "attempt": e.attempt, "status": e.status, "message": e.message}


async def stream(storage, instance_id: str, offset: int | None, live: LiveEvents | None,
                 iso) -> AsyncIterator[bytes]:
    """The SSE body: ``hello`` (the offset the stream starts from), then ``timeline`` messages
    (``{"events": [...], "offset": n}``: n events seen so far, also the message id a reconnecting
    EventSource sends back), ``instance`` when its status changes, and ``end`` once the instance
    has ended and every event is sent (the stream closes: the page reopens it after a restart)."""
    if offset is None:  # from the current end: counted, not read (and the follower's cursor primed)
        offset = (await storage.get_timeline_tail(instance_id, 0))[0]
    yield b"retry: 2000\n\n" + _sse("hello", {"offset": offset}, offset)
    with live.watch(instance_id) if live is not None else nullcontext() as watch:
        status = None
        quiet = 0.0
        while True:
            seen = watch.generation if watch is not None else 0
            # The instance first: the events read after it include every one committed with its status.
            record = await storage.get_instance(instance_id)
            events = await storage.get_timeline_since(instance_id, offset)
            if events:
                offset += len(events)
                yield _sse("timeline", {"events": [event_json(e, iso) for e in events], "offset": offset}, offset)
                quiet = 0.0
            if record is not None and record.status.value != status:
                status = record.status.value
                yield _sse("instance", {"status": status, "run_id": record.run_id, "message": record.message,
                                        "ended_at": iso(record.ended_at)})
            if record is None or (record.status.terminal and not events):
                yield _sse("end", {"status": status, "offset": offset})
                return
            if any(e.step_id is None and e.status in _ENDED for e in events):
                continue  # it has just ended: the next look finds its status and ends the stream
            if quiet >= KEEPALIVE:
                yield b": keep-alive\n\n"
                quiet = 0.0
            start = trio.current_time()
            if watch is not None:
                await watch.wait(seen, POLL)
                await trio.sleep(COALESCE)
            else:
                await trio.sleep(POLL)
            quiet += trio.current_time() - start
