"""What ``legato run`` shows while a workflow runs and when it ends.

On a terminal: a live table (rich) of every step's state, attempt and duration, redrawn ten times
a second.  Elsewhere: one plain line per step start and end, flushed as it happens.  Both read
durable timeline events only, so what is shown is what storage holds.
"""

from __future__ import annotations

import contextlib
import sys
import time

from .model import Event

_TERMINAL_STYLE = {
    "SUCCEEDED": "green", "COMPLETED_WITH_ERROR": "yellow", "SKIPPED": "dim", "UNSATISFIED": "dim",
    "STOPPED": "yellow", "TIMED_OUT": "red", "USER_FAILED": "red", "PLATFORM_FAILED": "red",
    "TIMEOUT_FAILED": "red", "FATALLY_FAILED": "red", "INTERNALLY_FAILED": "bold red",
}
_SHOWN = {"RUNNING", *_TERMINAL_STYLE}


class _Row:
    __slots__ = ("status", "attempt", "started", "ended", "message")

    def __init__(self) -> None:
        self.status = "NOT_CREATED"
        self.attempt = 0
        self.started: float | None = None
        self.ended: float | None = None
        self.message = ""


def _duration(row: _Row) -> str:
    if row.started is None:
        return ""
    end = row.ended if row.ended is not None else time.time()
    return f"{end - row.started:.2f}s"


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

    def on_event(self, event: Event) -> None:
        if event.step_id is None:
            self.instance_status = event.status
            return
        row = self.rows.get(event.step_id)
        if row is None:
            return
        row.status, row.attempt = event.status, event.attempt
        if event.status == "RUNNING":
            row.started, row.ended, row.message = event.ts, None, ""
        elif event.status in _TERMINAL_STYLE:
            row.ended = event.ts
            row.message = event.message
        self.show(event, row)

    def show(self, event: Event, row: _Row) -> None:
        pass

    @contextlib.asynccontextmanager
    async def open(self, nursery):
        yield self

    def summary(self, instance, attempts, logs) -> None:
        """The final report: the instance's status, each failed step's message and log tail."""
        out = sys.stdout
        elapsed = (instance.ended_at or time.time()) - (instance.started_at or instance.created_at)
        counts: dict[str, int] = {}
        last = {}
        for a in attempts:
            last[a.step_id] = a
        for a in last.values():
            counts[a.status.value] = counts.get(a.status.value, 0) + 1
        tally = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        out.write(f"{instance.workflow_id} [{instance.instance_id}] {instance.status.value} "
                  f"in {elapsed:.2f}s ({tally})\n")
        if instance.message:
            out.write(f"  {instance.message}\n")
        for a in last.values():
            if a.status.failed and a.status.value != "STOPPED":
                out.write(f"  {a.step_id} (attempt {a.attempt}) {a.status.value}: {_first_line(a.message, 200)}\n")
                tail = [c.text for c in logs if c.step_id == a.step_id and c.attempt == a.attempt]
                text = "".join(tail).rstrip().splitlines()[-5:]
                for line in text:
                    out.write(f"    | {line}\n")
        out.flush()


class PlainView(View):
    """One line per step start and end: for logs, pipes and CI."""

    def __init__(self, definition, quiet: bool = False) -> None:
        super().__init__(definition)
        self.quiet = quiet

    def show(self, event: Event, row: _Row) -> None:
        if self.quiet or event.status not in _SHOWN:
            return
        stamp = time.strftime("%H:%M:%S", time.localtime(event.ts)) + f".{int(event.ts * 1000) % 1000:03d}"
        extra = f" after {_duration(row)}" if event.status != "RUNNING" and row.started else ""
        message = f": {_first_line(event.message)}" if event.message else ""
        sys.stdout.write(f"{stamp} {event.step_id} #{event.attempt} {event.status}{extra}{message}\n")
        sys.stdout.flush()


class LiveView(View):
    """A table redrawn while the workflow runs (rich)."""

    def render(self):
        from rich.table import Table

        table = Table(title=f"{self.definition.workflow_id}: {self.instance_status}", title_justify="left",
                      expand=False, box=None, pad_edge=False)
        for column in ("step", "type", "state", "attempt", "time", "message"):
            table.add_column(column)
        for sdef in self.definition.steps:
            row = self.rows[sdef.id]
            style = _TERMINAL_STYLE.get(row.status, "cyan" if row.status == "RUNNING" else "dim")
            table.add_row(sdef.id, sdef.type, f"[{style}]{row.status}[/]", str(row.attempt or ""),
                          _duration(row), _first_line(row.message, 60))
        return table

    @contextlib.asynccontextmanager
    async def open(self, nursery):
        import trio
        from rich.live import Live

        with Live(self.render(), auto_refresh=False, transient=False) as live:
            async def refresh() -> None:
                while True:
                    live.update(self.render(), refresh=True)
                    await trio.sleep(0.1)

            scope = trio.CancelScope()
            nursery.start_soon(_run_in, scope, refresh)
            try:
                yield self
            finally:
                scope.cancel()
                live.update(self.render(), refresh=True)


async def _run_in(scope, fn) -> None:
    with scope:
        await fn()


def make_view(definition, *, plain: bool, quiet: bool = False) -> View:
    """A live table on a terminal with a small workflow; plain lines otherwise."""
    if plain or len(definition.steps) > 200:
        return PlainView(definition, quiet=quiet)
    return LiveView(definition)

