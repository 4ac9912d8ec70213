"""The lines a subprocess writes, read as they come by a thread of their own.

``select`` on a pipe then ``readline`` misses lines: ``readline`` reads ahead into the file
object's buffer, so a second line that arrived with the first sits there while ``select`` waits
for the pipe (where nothing more comes). Here one thread reads the stream line by line and the
test waits on a condition for the line it expects.
"""

from __future__ import annotations

import threading
import time
from typing import IO


class Lines:
    """Every line of ``stream`` so far (``lines``, a list that grows), and waits for one.

    ``arrived`` is notified whenever any stream read here gets a line or ends: what a test that
    waits for the first of several processes to say something waits on (see :func:`first_line`)."""

    arrived = threading.Condition()

    def __init__(self, stream: IO[str], lines: list[str] | None = None) -> None:
        self.lines: list[str] = [] if lines is None else lines
        self.ended = False  # the stream closed: its writer exited
        self._changed = Lines.arrived
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()
        except (OSError, ValueError):  # closed under us
            pass
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float, since: int = 0) -> str | None:
        """The first line from index ``since`` on holding ``text``, waiting up to ``timeout``
        seconds for it; None if the time ran out or the stream ended without it."""
        deadline = time.monotonic() + timeout
        seen = since
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if text in line:
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if self.ended or left <= 0:
                    return None
                self._changed.wait(left)

    def count(self, text: str, n: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``n`` lines holding ``text``; whether they came."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(text in line for line in self.lines) < n:
                left = deadline - time.monotonic()
                if self.ended or left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def find(self, text: str) -> str | None:
        return next((line for line in list(self.lines) if text in line), None)

    def join(self, timeout: float) -> None:
        """Wait for the stream to end (its writer exited and every line was read)."""
        self._thread.join(timeout)

    def text(self) -> str:
        with self._changed:
            return "".join(self.lines)


def first_line(readers: list[Lines], text: str, timeout: float) -> tuple[int, str] | None:
    """Which of ``readers`` (its index) first has a line holding ``text``, and that line; None if
    none has one within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    with Lines.arrived:
        while True:
            for i, reader in enumerate(readers):
                line = reader.find(text)
                if line is not None:
                    return i, line
            left = deadline - time.monotonic()
            if left <= 0 or all(r.ended for r in readers):
                return None
            Lines.arrived.wait(left)
