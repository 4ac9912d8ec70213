"""What ``legato run`` shows while a workflow runs and when it ends.

On a terminal: a live table (rich) of every step's state, attempt and duration under a title with
the progress and elapsed time (``etl: IN_PROGRESS · 3/6 done · 7.2s``), and below it the last
lines each running step printed (``extract | …``). Elsewhere: one plain line per step start and
end, and each line a step prints prefixed with the step (``extract | …``), in the order they
happened. A failed attempt that will be retried reads ``RETRYING in 4s (attempt 2/3)``, not as a
final failure.

States come from the engine's observer (durable events only, so what is shown is what storage
holds); output is read from storage by the view's own task, a few times a second
(:meth:`legato.storage.Storage.get_logs_since`), so the engine never waits on a redraw.
"""

from __future__ import annotations

import collections
import contextlib
import math
import sys
import time

from .model import Event, LogChunk

_TERMINAL_STYLE = {
    "SUCCEEDED": "green", "COMPLETED_WITH_ERROR": "yellow", "SKIPPED": "dim", "UNSATISFIED": "dim", "DISABLED": "dim",
    "STOPPED": "yellow", "TIMED_OUT": "red", "USER_FAILED": "red", "PLATFORM_FAILED": "red",
    "TIMEOUT_FAILED": "red", "FATALLY_FAILED": "red", "INTERNALLY_FAILED": "bold red",
}
_SHOWN = {"RUNNING", *_TERMINAL_STYLE}
_INSTANCE_ENDED = {"SUCCEEDED", "FAILED", "STOPPED", "TIMED_OUT"}

TAIL_LINES = 3  # lines of each running step's output under the live table
SUMMARY_FAILURES = 10  # failed steps the final report details
REDRAW_EVERY = 0.25  # seconds between live redraws, each with one read of new output
PLAIN_EVERY = 0.2  # seconds between plain mode's reads of new output
STOPPING = "interrupted: stopping… (Ctrl-C again to kill)"


class _Row:
    __slots__ = ("status", "attempt", "started", "ended", "message", "retry", "iterations")

    def __init__(self) -> None:
        self.status = "NOT_CREATED"
        self.attempt = 0
        self.started: float | None = None
        self.ended: float | None = None
        self.message = ""
        self.retry: tuple[float, int] | None = None  # (when the next attempt starts, the last one allowed)
        self.iterations: dict[str, str] | None = None  # a loop's iterations: number -> latest state

    def loop_line(self) -> str:
        """``12 iterations ended · 1 failed · 4 running`` for a loop step's row."""
        states = collections.Counter(self.iterations.values())
        running = states.pop("RUNNING", 0)
        parts = [f"{sum(states.values()):,} iterations ended"]
        failed = states.get("FATALLY_FAILED", 0) + states.get("INTERNALLY_FAILED", 0)
        if failed:
            parts.append(f"{failed:,} failed")
        if running:
            parts.append(f"{running:,} running")
        return " · ".join(parts)


def _duration(row: _Row) -> str:
    if row.started is None:
        return ""
    end = row.ended if row.ended is not None else time.time()
    return f"{end - row.started:.2f}s"


def _seconds(x: float) -> str:
    return (f"{x:.1f}".rstrip("0").rstrip(".") or "0") + "s"


def _first_line(text: str, width: int = 80) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


class View:
    """Collects step states from events; subclasses decide how to show them."""

    def __init__(self, definition) -> None:
        self.definition = definition
        self.rows = {s.id: _Row() for s in definition.steps}
        self.instance_status = "CREATED"
        self.started = time.time()
        self.ended: float | None = None
        self.storage = None
        self.instance_id: str | None = None
        self._offset = 0  # log chunks of the instance read so far

    def on_event(self, event: Event) -> None:
        if event.status == "ACTION":  # someone acted on the instance (legato.actions): say who
            self.note(f"action: {event.step_id + ': ' if event.step_id else ''}{event.message}")
            return
        if event.step_id is None:
            self.instance_status = event.status
            if event.status == "IN_PROGRESS":  # the summary's clock too
                self.started = event.ts
            elif event.status in _INSTANCE_ENDED:
                self.ended = event.ts
                for row in self.rows.values():  # no retry comes once the instance has ended
                    row.retry = None
            return
        row = self.rows.get(event.step_id)
        if row is None:
            loop, _, number = event.step_id.rpartition("/")
            row = self.rows.get(loop)
            if row is not None and number.isdigit():  # an iteration of a loop step
                if row.iterations is None:
                    row.iterations = {}
                row.iterations[number] = event.status
            return
        row.status, row.attempt = event.status, event.attempt
        if event.status == "RUNNING":
            row.started, row.ended, row.message, row.retry = event.ts, None, "", None
        elif event.status in _TERMINAL_STYLE:
            row.ended = event.ts
            row.message = event.message
            row.retry = event.retry
        self.show(event, row)

    def show(self, event: Event, row: _Row) -> None:
        pass

    def note(self, text: str) -> None:
        """Say something about the run as a whole (Ctrl-C's "stopping…") where it stays visible."""
        sys.stderr.write(f"\n{text}\n")
        sys.stderr.flush()

    def progress(self) -> str:
        """``3/6 done · 7.2s``: steps ended for good (a retry pending is not), time since the start."""
        done = sum(row.status in _TERMINAL_STYLE and row.retry is None for row in self.rows.values())
        elapsed = (self.ended or time.time()) - self.started
        return f"{done}/{len(self.rows)} done · {elapsed:.1f}s"

    async def _new_logs(self) -> list[LogChunk]:
        from .storage import StorageError

        if self.storage is None:
            return []
        try:
            chunks = await self.storage.get_logs_since(self.instance_id, self._offset)
        except StorageError:  # the engine reports a store that stops working; the view shows less
            return []
        self._offset += len(chunks)
        return chunks

    async def _attach(self, storage, instance_id: str | None, resume: bool) -> None:
        self.storage, self.instance_id = storage, instance_id
        if storage is not None and resume:  # output of earlier runs is history: `legato logs` shows it
            self._offset = len(await storage.get_logs(instance_id))

    @contextlib.asynccontextmanager
    async def open(self, nursery, storage=None, instance_id: str | None = None, *, resume: bool = False):
        await self._attach(storage, instance_id, resume)
        yield self

    def summary(self, instance, attempts, logs) -> None:
        """The final report: the instance's status, each failed step's message and log tail."""
        out = sys.stdout
        elapsed = (instance.ended_at or time.time()) - (instance.started_at or instance.created_at)
        counts: dict[str, int] = {}
        last = {}
        for a in attempts:
            last[a.step_id] = a
        for sid, a in last.items():
            if "/" not in sid:  # the workflow's own steps (a loop's iterations are counted in it)
                counts[a.status.value] = counts.get(a.status.value, 0) + 1
        tally = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        out.write(f"{instance.workflow_id} [{instance.instance_id}] {instance.status.value} "
                  f"in {elapsed:.2f}s ({tally})\n")
        if instance.message:
            out.write(f"  {instance.message}\n")
        # The steps that failed (inside loops too: ``loop/3/load``), not the iterations they failed.
        failed = [a for sid, a in last.items() if a.status.failed and a.status.value != "STOPPED"
                  and not sid.rpartition("/")[2].isdigit()]
        for a in failed[:SUMMARY_FAILURES]:
            out.write(f"  {a.step_id} (attempt {a.attempt}) {a.status.value}: {_first_line(a.message, 200)}\n")
            tail = [c.text for c in logs if c.step_id == a.step_id and c.attempt == a.attempt]
            text = "".join(tail).rstrip().splitlines()[-5:]
            for line in text:
                out.write(f"    | {line}\n")
        if len(failed) > SUMMARY_FAILURES:
            out.write(f"  … and {len(failed) - SUMMARY_FAILURES} more failed steps (legato status "
                      f"{instance.instance_id} shows them)\n")
        out.flush()


class PlainView(View):
    """One line per step start and end, and every output line prefixed with its step: for logs,
    pipes and CI. Lines are written in the order they happened, a fraction of a second late."""

    def __init__(self, definition, quiet: bool = False) -> None:
        super().__init__(definition)
        self.quiet = quiet
        self._events: list[Event] = []  # delivered, not written yet
        self._held: list[LogChunk] = []  # output of an attempt whose start is not written yet
        self._shown: dict[str, int] = {}  # the latest attempt of each step written as started
        self._partial: dict[tuple[str, int, str], str] = {}  # a line not ended yet, per stream
        self._started: dict[tuple[str, int], float] = {}

    def show(self, event: Event, row: _Row) -> None:
        if not self.quiet and (event.status in _SHOWN or (event.status == "WAITING_FOR_SIGNALS" and event.message)):
            self._events.append(event)  # (a step that waits says for what; the others pass through it)

    def _event_line(self, event: Event) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(event.ts)) + f".{int(event.ts * 1000) % 1000:03d}"
        started = self._started.get((event.step_id, event.attempt))
        extra = f" after {event.ts - started:.2f}s" if event.status != "RUNNING" and started else ""
        if event.retry:
            at, last = event.retry
            extra += f", RETRYING in {_seconds(max(0.0, at - event.ts))} (attempt {event.attempt + 1}/{last})"
        message = f": {_first_line(event.message)}" if event.message else ""
        return f"{stamp} {event.step_id} #{event.attempt} {event.status}{extra}{message}\n"

    async def _attach(self, storage, instance_id, resume) -> None:
        await super()._attach(None if self.quiet else storage, instance_id, resume)
        if self.storage is not None and resume:  # attempts already running write output as well
            for a in await storage.get_attempts(instance_id):
                self._shown[a.step_id] = max(self._shown.get(a.step_id, 0), a.attempt)

    def _write_output(self, chunk: LogChunk, out: list[str]) -> None:
        key = (chunk.step_id, chunk.attempt, chunk.stream)
        text = self._partial.pop(key, "") + chunk.text
        *lines, rest = text.split("\n")
        if rest:
            self._partial[key] = rest
        out.extend(f"{chunk.step_id} | {line}\n" for line in lines)

    def _end_output(self, step_id: str, attempt: int, out: list[str]) -> None:
        for key in [k for k in self._partial if k[0] == step_id and k[1] == attempt]:
            out.append(f"{step_id} | {self._partial.pop(key)}\n")

    async def _drain(self, final: bool = False) -> None:
        async with self._draining:  # the last drain waits for the loop's one to end
            await self._drain_once(final)

    async def _drain_once(self, final: bool) -> None:
        # Events first, then output: output committed up to the last event delivered is read,
        # and sorting by time puts each line between its step's start and end.
        events, self._events = self._events, []
        chunks = await self._new_logs()
        items = sorted([*events, *self._held, *chunks], key=lambda item: item.ts)
        self._held = []
        out: list[str] = []
        for item in items:
            if isinstance(item, Event):
                if item.status == "RUNNING":
                    self._shown[item.step_id] = max(self._shown.get(item.step_id, 0), item.attempt)
                    self._started[(item.step_id, item.attempt)] = item.ts
                else:
                    self._end_output(item.step_id, item.attempt, out)
                out.append(self._event_line(item))
            elif final or item.attempt <= self._shown.get(item.step_id, 0):
                self._write_output(item, out)
            else:
                self._held.append(item)
        if final:
            for step_id, attempt, _ in list(self._partial):
                self._end_output(step_id, attempt, out)
        if out:
            sys.stdout.write("".join(out))
            sys.stdout.flush()

    @contextlib.asynccontextmanager
    async def open(self, nursery, storage=None, instance_id: str | None = None, *, resume: bool = False):
        import trio

        await self._attach(storage, instance_id, resume)
        if self.quiet:
            yield self
            return
        self._draining = trio.Lock()

        async def loop() -> None:
            while True:
                await trio.sleep(PLAIN_EVERY)
                await self._drain()

        scope = trio.CancelScope()
        nursery.start_soon(_run_in, scope, loop)
        try:
            yield self
        finally:
            scope.cancel()
            with trio.CancelScope(shield=True):
                await self._drain(final=True)


class LiveView(View):
    """A table redrawn while the workflow runs (rich), with the last lines of each running step."""

    def __init__(self, definition) -> None:
        super().__init__(definition)
        self._tails: dict[tuple[str, int], collections.deque] = {}
        self._partial: dict[tuple[str, int, str], str] = {}
        self._live = None

    def _feed(self, chunks: list[LogChunk]) -> None:
        for chunk in chunks:
            key = (chunk.step_id, chunk.attempt, chunk.stream)
            *lines, rest = (self._partial.pop(key, "") + chunk.text).split("\n")
            if rest:
                self._partial[key] = rest[-1000:]
            tail = self._tails.get(key[:2])
            if tail is None:
                tail = self._tails[key[:2]] = collections.deque(maxlen=TAIL_LINES)
            tail.extend(line[-1000:] for line in lines[-TAIL_LINES:])

    def _tail(self, step_id: str, attempt: int) -> list[str]:
        lines = list(self._tails.get((step_id, attempt), ()))
        lines += [text for (s, a, _), text in self._partial.items() if s == step_id and a == attempt]
        return lines[-TAIL_LINES:]

    def _state(self, row: _Row, now: float) -> str:
        if row.retry is not None:
            at, last = row.retry
            return (f"[yellow]RETRYING in {math.ceil(max(0.0, at - now))}s "
                    f"(attempt {row.attempt + 1}/{last})[/]")
        style = _TERMINAL_STYLE.get(row.status, "cyan" if row.status == "RUNNING" else "dim")
        return f"[{style}]{row.status}[/]"

    def render(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        now = time.time()
        # Text, not markup: ids, messages and output are the user's ("[error] …" stays as written).
        table = Table(title=Text(f"{self.definition.workflow_id}: {self.instance_status} · {self.progress()}",
                                 style="bold"), title_justify="left", expand=False, box=None, pad_edge=False)
        for column in ("step", "type", "state", "attempt", "time", "message"):
            table.add_column(column)
        output = []
        for sdef in self.definition.steps:
            row = self.rows[sdef.id]
            message = row.message if row.iterations is None or row.message else row.loop_line()
            table.add_row(Text(sdef.id), Text(sdef.type), self._state(row, now), str(row.attempt or ""),
                          _duration(row), Text(_first_line(message, 60)))
            if row.status == "RUNNING":
                for line in self._tail(sdef.id, row.attempt):
                    text = Text(f"{sdef.id} | ", style="dim")
                    text.append_text(Text.from_ansi(line))
                    text.no_wrap, text.overflow = True, "ellipsis"
                    output.append(text)
        return Group(table, *output) if output else table

    def note(self, text: str) -> None:
        if self._live is None:
            return super().note(text)
        self._live.console.print(text, style="bold yellow", markup=False, highlight=False)

    @contextlib.asynccontextmanager
    async def open(self, nursery, storage=None, instance_id: str | None = None, *, resume: bool = False):
        import trio
        from rich.live import Live

        await self._attach(storage, instance_id, resume)
        with Live(self.render(), auto_refresh=False, transient=False) as live:
            self._live = live

            async def refresh() -> None:
                while True:
                    self._feed(await self._new_logs())
                    live.update(self.render(), refresh=True)
                    await trio.sleep(REDRAW_EVERY)

            scope = trio.CancelScope()
            nursery.start_soon(_run_in, scope, refresh)
            try:
                yield self
            finally:
                scope.cancel()
                live.update(self.render(), refresh=True)
                self._live = None


async def _run_in(scope, fn) -> None:
    with scope:
        await fn()


def make_view(definition, *, plain: bool, quiet: bool = False) -> View:
    """A live table on a terminal with a small workflow; plain lines otherwise."""
    if plain or len(definition.steps) > 200:
        return PlainView(definition, quiet=quiet)
    return LiveView(definition)
