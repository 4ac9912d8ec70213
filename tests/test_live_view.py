"""What ``legato run`` shows on a terminal (issue 10, "Logs where people look"), captured as a user
sees it: the CLI runs in a pseudo-terminal and pyte (a VT100 emulator) renders the screen.

Every wait is on what the screen shows (or on the process ending), with a generous hang guard;
none on time passing. The steps wait on gate files the test creates once it has seen what it
expects."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import termios
import time

import pyte
import pytest

from .conftest import LEGATO

COLUMNS, LINES = 110, 40
HANG_GUARD = 90.0  # seconds: only a hung run gets near it


class Terminal:
    """``argv`` running in a pseudo-terminal of COLUMNS x LINES, its screen rendered by pyte."""

    def __init__(self, argv, cwd) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("LEGATO_STORE", "COLUMNS", "LINES")}
        env["TERM"] = "xterm-256color"

        def controlling_terminal() -> None:  # the child's terminal, so that Ctrl-C reaches it
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True, preexec_fn=controlling_terminal)
        os.close(slave)
        self.master = master
        self.screen = pyte.Screen(COLUMNS, LINES)
        self.stream = pyte.ByteStream(self.screen)
        self.closed = False

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display).rstrip()

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: every writer closed the terminal
            data = b""
        if not data:
            self.closed = True
        self.stream.feed(data)

    def wait_for(self, predicate, what: str) -> str:
        """Read output until ``predicate(screen text)`` holds; the screen text then."""
        deadline = time.monotonic() + HANG_GUARD
        while not predicate(self.text()):
            assert not self.closed, f"the run ended before the screen showed {what}:\n{self.text()}"
            assert time.monotonic() < deadline, f"the screen never showed {what}:\n{self.text()}"
            self._read(1.0)
        return self.text()

    def finish(self) -> tuple[int, str]:
        """Read to the end of the output; the exit code and the final screen."""
        deadline = time.monotonic() + HANG_GUARD
        while not self.closed:
            assert time.monotonic() < deadline, f"the run never ended:\n{self.text()}"
            self._read(1.0)
        os.close(self.master)
        return self.proc.wait(timeout=HANG_GUARD), self.text()

    def type(self, data: bytes) -> None:
        os.write(self.master, data)


@pytest.fixture
def run_live(tmp_path):
    started = []

    def start(doc: dict, *args) -> Terminal:
        path = tmp_path / f"{doc['workflow']['id']}.json"
        path.write_text(json.dumps(doc))
        term = Terminal([LEGATO, "run", str(path), "--store", f"sqlite:///{tmp_path / 'legato.db'}",
                         "--workspace", str(tmp_path / "runs"), *args], cwd=tmp_path)
        started.append(term)
        return term

    yield start
    for term in started:
        if term.proc.poll() is None:
            term.proc.kill()
            term.proc.wait()
    for gate in GATES:  # a step's shell that outlived a killed run ends too
        (tmp_path / gate).touch()


GATES = ("gate", "warm", "never")


def _gated(tmp_path, name: str, script: str) -> str:
    """Bash that runs ``script`` once the test creates the gate file ``name`` (one of GATES)."""
    assert name in GATES
    return f"while [ ! -e {tmp_path / name} ]; do sleep 0.02; done; {script}"


def _count(screen: str, pattern: str) -> int:
    return len(re.findall(pattern, screen, re.MULTILINE))


def test_the_live_view_shows_progress_and_the_last_lines_of_running_steps(run_live, tmp_path):
    """A step's output shows under the table while it runs (its last lines, prefixed with the
    step); the title counts the steps done and the time; the final screen holds one table."""
    doc = {"workflow": {"id": "gated", "steps": [
        {"step": {"id": "extract", "type": "bash", "params": {"script": (
            "for i in 1 2 3 4 5; do echo \"row $i of 5\"; done; "
            + _gated(tmp_path, "warm", "echo 'warming up' >&2; ") + _gated(tmp_path, "gate", "echo extracted"))},
            "transition": {"successors": ["load"]}}},
        {"step": {"id": "load", "type": "bash", "params": {"script": "echo loaded"}}}]}}
    term = run_live(doc)
    screen = term.wait_for(lambda s: "extract | row 5 of 5" in s, "the running step's output")
    assert re.search(r"^gated: IN_PROGRESS · 0/2 done · \d+\.\ds$", screen, re.MULTILINE), screen
    assert re.search(r"^extract\s+bash\s+RUNNING\s+1\b", screen, re.MULTILINE), screen
    assert [line for line in screen.splitlines() if " | " in line] == [
        "extract | row 3 of 5", "extract | row 4 of 5", "extract | row 5 of 5"], screen
    (tmp_path / "warm").touch()  # stderr shows too, and the tail moves on
    screen = term.wait_for(lambda s: "extract | warming up" in s, "the step's stderr")
    assert [line for line in screen.splitlines() if " | " in line] == [
        "extract | row 4 of 5", "extract | row 5 of 5", "extract | warming up"], screen
    (tmp_path / "gate").touch()
    code, screen = term.finish()
    assert code == 0, screen
    assert _count(screen, r"^gated: ") == 1, f"stale header lines left behind:\n{screen}"
    assert _count(screen, r"^step\s+type\s+state") == 1, screen
    assert re.search(r"^gated: SUCCEEDED · 2/2 done · \d+\.\ds$", screen, re.MULTILINE), screen
    assert " | " not in screen, f"output of steps that ended is left on the screen:\n{screen}"
    assert re.search(r"^gated \[[0-9a-f]+\] SUCCEEDED in \d+\.\d\ds \(2 succeeded\)$", screen, re.MULTILINE)


def test_a_retry_waiting_on_its_backoff_reads_as_retrying(run_live, tmp_path):
    """Between attempts the step reads RETRYING with the time left and the attempt to come, and
    is not counted as done: the step has not ended, its next attempt is coming."""
    doc = {"workflow": {"id": "flaky", "steps": [{"step": {
        "id": "fetch", "type": "bash",
        "params": {"script": '[ "$LEGATO_ATTEMPT" -ge 2 ] && { echo fetched; exit 0; }; echo "try 1 failed"; exit 1'},
        "retry_policy": {"error_retry_limit": 2, "backoff": {"type": "fixed", "base": 3}}}}]}}
    term = run_live(doc)
    screen = term.wait_for(lambda s: "RETRYING" in s, "the retry")
    assert re.search(r"^fetch\s+bash\s+RETRYING in [123]s \(attempt 2/3\)\s+1\s", screen, re.MULTILINE), screen
    assert re.search(r"^flaky: IN_PROGRESS · 0/1 done · ", screen, re.MULTILINE), screen
    assert "USER_FAILED" not in screen, screen
    code, screen = term.finish()
    assert code == 0, screen
    assert re.search(r"^fetch\s+bash\s+SUCCEEDED\s+2\s", screen, re.MULTILINE), screen
    assert re.search(r"^flaky: SUCCEEDED · 1/1 done · ", screen, re.MULTILINE), screen
    assert "RETRYING" not in screen and _count(screen, r"^flaky: ") == 1, screen


def test_ctrl_c_shows_stopping_and_leaves_one_table(run_live, tmp_path):
    """Ctrl-C typed at the terminal: the "stopping…" line stays visible above the table, the
    table ends STOPPED, and no stale copies of its header are left behind."""
    doc = {"workflow": {"id": "long", "steps": [{"step": {"id": "wait", "type": "bash", "params": {
        "script": "echo waiting; " + _gated(tmp_path, "never", "true")}}}]}}
    term = run_live(doc)
    term.wait_for(lambda s: "wait | waiting" in s, "the step running")
    term.type(b"\x03")
    code, screen = term.finish()
    assert code == 130, screen
    lines = screen.splitlines()
    stopping = [i for i, line in enumerate(lines) if line == "interrupted: stopping… (Ctrl-C again to kill)"]
    assert len(stopping) == 1, screen
    title = [i for i, line in enumerate(lines) if line.startswith("long: ")]
    assert len(title) == 1 and stopping[0] < title[0], f"stale header lines or no stopping line:\n{screen}"
    assert re.match(r"long: STOPPED · 1/1 done · \d+\.\ds$", lines[title[0]]), screen
    assert re.search(r"^wait\s+bash\s+STOPPED\s+1\s", screen, re.MULTILINE), screen
    assert _count(screen, r"^step\s+type\s+state") == 1, screen


def test_what_steps_print_is_shown_as_written_not_as_markup(run_live, tmp_path):
    """Output and messages with brackets (`[/red]`, `[bold]`) are the user's text: the table shows
    them as printed, and the failed run ends with its summary, exit 1."""
    doc = {"workflow": {"id": "marks", "steps": [{"step": {"id": "boom", "type": "bash",
        "retry_policy": {"error_retry_limit": 0},
        "params": {"script": "echo '[bold]loading[/bold] [/red]'; echo '[/red] disk [bold]full' >&2; exit 3"}}}]}}
    code, screen = run_live(doc).finish()
    assert code == 1, screen
    assert re.search(r"^boom\s+bash\s+FATALLY_FAILED\s+1\s+\S+\s+exit code 3: \[/red\] disk \[bold\]full \(USER_FAILED, no",
                     screen, re.MULTILINE), screen
    assert "    | [/red] disk [bold]full" in screen.splitlines(), screen
    assert re.search(r"^marks: FAILED · 1/1 done · ", screen, re.MULTILINE), screen


def test_a_loop_is_one_row_counting_its_iterations(run_live, tmp_path):
    """A foreach shows as one row whose message counts its iterations: ended, failed, running."""
    doc = {"workflow": {"id": "looping", "steps": [{"foreach": {
        "id": "days", "concurrency": 2,
        "params": {"loop_params": {"type": "MAP", "value": {"d": {"type": "LONG_ARRAY", "value": [1, 2, 3, 4]}}}},
        "steps": [{"step": {"id": "load", "type": "bash", "params": {"script": _gated(tmp_path, "gate", "echo $d")}}}],
    }}]}}
    term = run_live(doc)
    screen = term.wait_for(lambda s: re.search(r"^days\s+foreach\s+RUNNING\s+1\b.*0 iterations ended · 2 running",
                                               s, re.MULTILINE), "the loop's row with 2 iterations running")
    (tmp_path / "gate").touch()
    code, screen = term.finish()
    assert code == 0, screen
    assert re.search(r"^days\s+foreach\s+SUCCEEDED\s+1\b.*4 iterations ended$", screen, re.MULTILINE), screen
    assert re.search(r"^looping \[[0-9a-f]+\] SUCCEEDED in \d+\.\d\ds \(1 succeeded\)$", screen, re.MULTILINE), screen
