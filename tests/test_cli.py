"""The ``legato`` command line, run as a user runs it: a subprocess of the installed script."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .conftest import LEGATO, ROOT, alive, docker_problem, kernel_problem, legato_cli, require_component

EXAMPLES = sorted(p for p in (ROOT / "examples").iterdir() if p.suffix in (".json", ".yaml", ".yml"))


def _require_engines_of(example: Path) -> None:
    text = example.read_text()
    if '"docker"' in text or "type: docker" in text:
        require_component("Docker", docker_problem())
    if '"notebook"' in text or "type: notebook" in text:
        require_component("Jupyter kernel", kernel_problem())


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_runs_to_success(example, tmp_path):
    _require_engines_of(example)
    proc = legato_cli("run", str(example), "--workspace", str(tmp_path), "--json", timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["status"] == "SUCCEEDED"
    assert report["steps"], "an example with no steps run proves nothing"


def test_etl_example_branches_on_outputs(tmp_path):
    proc = legato_cli("run", "examples/etl.json", "--workspace", str(tmp_path), "--json")
    steps = json.loads(proc.stdout)["steps"]
    assert steps["extract"]["outputs"]["rows"] == "3"
    assert steps["load"]["status"] == "SUCCEEDED" and steps["alert"]["status"] == "UNSATISFIED"
    # raise the threshold above the row count: the other branch runs
    proc = legato_cli("run", "examples/etl.json", "-p", "threshold=10", "--workspace", str(tmp_path), "--json")
    steps = json.loads(proc.stdout)["steps"]
    assert steps["alert"]["status"] == "SUCCEEDED" and steps["load"]["status"] == "UNSATISFIED"
    assert steps["report"]["status"] == "SUCCEEDED"


def test_retry_example_shows_attempts_in_plain_lines(tmp_path):
    proc = legato_cli("run", "examples/retries.json", "--workspace", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(" flaky #" in line and "USER_FAILED" in line for line in lines) == 2
    assert any(" flaky #3 SUCCEEDED" in line for line in lines)
    assert any(" slow #1 TIMEOUT_FAILED" in line for line in lines)
    assert any(" optional #1 COMPLETED_WITH_ERROR" in line for line in lines)
    assert "SUCCEEDED in" in lines[-1]


def test_failed_run_exits_1_and_shows_the_log_tail(tmp_path):
    doc = {"workflow": {"id": "f", "steps": [{"step": {"id": "boom", "type": "bash", "retry_policy": {"error_retry_limit": 0},
                                                       "params": {"script": "echo 'disk is full' >&2; exit 7"}}}]}}
    path = tmp_path / "f.json"
    path.write_text(json.dumps(doc))
    proc = legato_cli("run", str(path), "--workspace", str(tmp_path))
    assert proc.returncode == 1
    assert "FAILED" in proc.stdout
    assert "boom (attempt 1) FATALLY_FAILED: exit code 7: disk is full" in proc.stdout
    assert "| disk is full" in proc.stdout


def test_param_override_reaches_bash_byte_for_byte(tmp_path):
    payload = "$(touch /tmp/legato-cli-pwned); \"'`id` ;|"
    marker = Path("/tmp/legato-cli-pwned")
    marker.unlink(missing_ok=True)
    doc = {"workflow": {"id": "inj", "params": {"payload": "x"}, "steps": [
        {"step": {"id": "s", "type": "bash", "params": {"script": 'printf "%s" "$payload" >> "$LEGATO_OUTPUT.raw"; printf "got=%s\\n" "$(cat "$LEGATO_OUTPUT.raw" | base64 -w0)" >> "$LEGATO_OUTPUT"'}}}]}}
    path = tmp_path / "inj.json"
    path.write_text(json.dumps(doc))
    proc = legato_cli("run", str(path), "-p", f"payload={payload}", "--workspace", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    import base64

    got = json.loads(proc.stdout)["steps"]["s"]["outputs"]["got"]
    assert base64.b64decode(got).decode() == payload
    assert not marker.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["-p", "threshhold=1"], "did you mean 'threshold'"),
        (["-p", "threshold=abc"], "not a LONG"),
        (["-p", "threshold"], "-p expects name=value"),
        (["-p", "threshold=-1"], "fails its validator"),
        (["--store", "bogus://x"], "no storage backend for 'bogus://x'"),
    ],
)
def test_bad_start_input_exits_2_without_traceback(args, message, tmp_path):
    proc = legato_cli("run", "examples/etl.json", *args, "--workspace", str(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_missing_file_exits_2():
    proc = legato_cli("run", "no/such/file.json")
    assert proc.returncode == 2
    assert "file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_interrupt_stops_the_instance_and_kills_its_processes(tmp_path):
    pids = tmp_path / "pids"
    doc = {"workflow": {"id": "long", "steps": [{"step": {"id": "wait", "type": "bash", "params": {
        "script": f"sleep 300 & echo $! >> {pids}; echo $$ >> {pids}; sleep 300"}}}]}}
    path = tmp_path / "long.json"
    path.write_text(json.dumps(doc))
    proc = subprocess.Popen([LEGATO, "run", str(path), "--workspace", str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60  # a hang guard
    while not (pids.exists() and len(pids.read_text().split()) == 2):
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "wait #1 STOPPED" in out
    assert "STOPPED" in out.splitlines()[-2] or "STOPPED" in out.splitlines()[-1]
    for pid in map(int, pids.read_text().split()):
        deadline = time.monotonic() + 15  # a hang guard: the sleeps would run 300 s
        while alive(pid):
            assert time.monotonic() < deadline, f"process {pid} survived the interrupt"
            time.sleep(0.05)


def test_plugins_lists_first_party_plugins():
    proc = legato_cli("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {(r["name"], r["kind"]): r for r in json.loads(proc.stdout)}
    for name in ("bash", "noop", "sleep"):
        row = rows[(name, "step type")]
        assert row["distribution"] == "legato" and row["unavailable"] is None
    assert rows[("memory", "storage")]["plugin"] == "memory"
    text = legato_cli("plugins").stdout
    assert "bash" in text and "available" in text


def test_only_named_plugins_load_with_LEGATO_PLUGINS():
    proc = subprocess.run([LEGATO, "plugins", "--json"], capture_output=True, text=True,
                          env={**os.environ, "LEGATO_PLUGINS": "noop,memory"})
    names = {r["name"] for r in json.loads(proc.stdout)}
    assert "noop" in names and "bash" not in names


def test_help_and_version():
    proc = legato_cli("--help")
    assert proc.returncode == 0 and "run" in proc.stdout and "validate" in proc.stdout
    assert legato_cli("--version").stdout.startswith("legato, version")


def test_the_pipeline_example_chains_four_step_types(tmp_path):
    """bash -> sql (DuckDB) -> notebook (papermill) -> docker, values flowing as outputs."""
    example = ROOT / "examples" / "pipeline.json"
    _require_engines_of(example)
    proc = legato_cli("run", str(example), "--workspace", str(tmp_path), "--json", timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = json.loads(proc.stdout)["steps"]
    assert steps["extract"]["outputs"]["rows"] == "4"
    assert steps["load"]["outputs"]["rows"] == [["north", 150, 275], ["south", 80, 275], ["east", 45, 275]]
    assert steps["report"]["outputs"]["top_region"] == "north"
    assert steps["publish"]["outputs"]["published"] == "north"


def test_operator_settings_reach_step_types(tmp_path):
    """--settings (or LEGATO_SETTINGS) is how an operator allows what workflows cannot: a mount."""
    require_component("Docker", docker_problem())
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from the host\n")
    doc = {"workflow": {"id": "m", "steps": [{"step": {
        "id": "read", "type": "docker", "retry_policy": {"error_retry_limit": 0, "platform_retry_limit": 0},
        "params": {"image": "legato-test/busybox:1", "mounts": [{"source": str(data), "target": "/data"}],
                   "command": ["sh", "-c", 'echo "line=$(cat /data/in.txt)" >> "$LEGATO_OUTPUT"']}}}]}}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    refused = legato_cli("run", str(path), "--workspace", str(tmp_path / "ws"), "--json", timeout=120)
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["steps"]["read"]["status"] == "FATALLY_FAILED"
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"docker:\n  allowed_mounts: [{tmp_path}]\n")
    allowed = legato_cli("run", str(path), "--workspace", str(tmp_path / "ws"), "--json", "--settings",
                         str(settings), timeout=120)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert json.loads(allowed.stdout)["steps"]["read"]["outputs"] == {"line": "from the host"}
    settings.write_text("dockr: {}\n")
    typo = legato_cli("run", str(path), "--settings", str(settings))
    assert typo.returncode == 2 and "no installed step type is named 'dockr'" in typo.stderr


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--store", "sqlite:///{tmp}/s.db?busy_timeout=abc"], {}, "busy_timeout must be a number of seconds"),
        (["--store", "sqlite:///{tmp}/s.db?busy_timeout=nan"], {}, "busy_timeout must be a number of seconds"),
        (["--store", "sqlite:///{tmp}/s.db?busy_timout=5"], {}, "unknown option 'busy_timout'"),
        ([], {"LEGATO_LEASE_TTL": "-1"}, "LEGATO_LEASE_TTL must be a number of seconds from 0.1 to 86400"),
        ([], {"LEGATO_LEASE_TTL": "nan"}, "LEGATO_LEASE_TTL must be a number of seconds"),
        ([], {"LEGATO_LEASE_TTL": "inf"}, "LEGATO_LEASE_TTL must be a number of seconds"),
        ([], {"LEGATO_LEASE_TTL": "abc"}, "LEGATO_LEASE_TTL must be a number of seconds"),
        (["-p", "threshold=" + "[" * 5000 + "]" * 5000], {}, "nests arrays and maps deeper than 64 levels"),
        (["-p", "threshold=" + "9" * 5000], {}, "is not a LONG"),
        (["--workspace", "examples/etl.json"], {}, "is a file"),
        (["--workspace", "examples/etl.json/runs"], {}, "cannot make the directory (Not a directory)"),
    ],
)
def test_bad_options_and_environment_exit_2_naming_them(args, env, message, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    workspace = [] if "--workspace" in args else ["--workspace", str(tmp_path)]
    proc = legato_cli("run", "examples/etl.json", *args, *workspace, env_extra=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout and "internal error" not in proc.stderr


def test_plain_lines_prefix_each_output_line_with_its_step(tmp_path):
    """Piped (CI, a log file): each line a step prints is written as it comes, prefixed with the
    step, between that step's start and end lines."""
    proc = legato_cli("run", "examples/etl.json", "--workspace", str(tmp_path), "--store",
                      f"sqlite:///{tmp_path / 'legato.db'}")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for step, printed in (("extract", "extract | extracted 3 rows for "),
                          ("load", "load | loading into sales_"), ("report", "report | report for ")):
        start = next(i for i, line in enumerate(lines) if line.endswith(f" {step} #1 RUNNING"))
        end = next(i for i, line in enumerate(lines) if f" {step} #1 SUCCEEDED after " in line)
        output = [i for i, line in enumerate(lines) if line.startswith(printed)]
        assert len(output) == 1 and start < output[0] < end, proc.stdout
    assert not any(line.startswith("alert | ") for line in lines)


def test_a_retry_in_plain_lines_says_when_and_which_attempt(tmp_path):
    """A failed attempt that will be retried says so (Maestro's RetryPolicy: the backoff, then
    the next attempt), and only the last attempt's failure reads as final."""
    doc = {"workflow": {"id": "flaky", "steps": [{"step": {
        "id": "fetch", "type": "bash", "params": {"script": 'echo "try $LEGATO_ATTEMPT"; exit 1'},
        "retry_policy": {"error_retry_limit": 2, "backoff": {"type": "fixed", "base": 0.5}}}}]}}
    path = tmp_path / "flaky.json"
    path.write_text(json.dumps(doc))
    proc = legato_cli("run", str(path), "--workspace", str(tmp_path), "--store", f"sqlite:///{tmp_path / 'l.db'}")
    assert proc.returncode == 1, proc.stderr
    ends = [line.split(" ", 1)[1] for line in proc.stdout.splitlines() if " fetch #" in line and "RUNNING" not in line]
    assert [re.sub(r"after \d+\.\d\ds", "after Ts", line) for line in ends] == [
        "fetch #1 USER_FAILED after Ts, RETRYING in 0.5s (attempt 2/3): exit code 1",
        "fetch #2 USER_FAILED after Ts, RETRYING in 0.5s (attempt 3/3): exit code 1",
        "fetch #3 FATALLY_FAILED after Ts: exit code 1 (USER_FAILED, no error retry left: FATALLY_FAILED)",
    ], proc.stdout
    assert [line for line in proc.stdout.splitlines() if line.startswith("fetch | ")] == [
        "fetch | try 1", "fetch | try 2", "fetch | try 3"]


def test_json_carries_iso_8601_timestamps(tmp_path):
    store = ["--store", f"sqlite:///{tmp_path / 'legato.db'}"]
    proc = legato_cli("run", "examples/etl.json", "--workspace", str(tmp_path), "--json", *store)
    run = json.loads(proc.stdout)
    status = json.loads(legato_cli("status", run["instance_id"], "--json", *store).stdout)
    listed = json.loads(legato_cli("list", "--json", *store).stdout)[0]
    for report in (run, status, listed):
        stamps = [datetime.datetime.fromisoformat(report[k]) for k in ("created_at", "started_at", "ended_at")]
        assert all(s.utcoffset() == datetime.timedelta(0) for s in stamps), report
        assert stamps == sorted(stamps), report
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", report["ended_at"]), report
    extract = status["steps"]["extract"]
    assert datetime.datetime.fromisoformat(extract["started_at"]) <= \
        datetime.datetime.fromisoformat(extract["ended_at"])
    assert status["steps"]["alert"]["started_at"] is None  # it never ran (UNSATISFIED)


@contextlib.contextmanager
def _hang_guard(procs: list, seconds: float = 120.0, fifo: Path | None = None):
    """Kill ``procs`` (a list that may grow) if the block runs longer than ``seconds`` (and open
    ``fifo`` for reading, which lets a writer blocked on it go on): a blocked read then ends and
    the test fails saying what it waited for, instead of hanging."""
    def kill() -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        if fifo is not None:
            os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)

    timer = threading.Timer(seconds, kill)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def test_logs_follow_prints_a_running_instances_output_and_ends_with_it(tmp_path):
    """`legato logs -f` in one process follows an instance `legato run` runs in another: each
    line the step prints shows while the step still runs, and -f ends by itself with the
    instance (and `logs -f INSTANCE STEP` with the step)."""
    fifo = tmp_path / "feed"
    os.mkfifo(fifo)
    doc = {"workflow": {"id": "gated", "steps": [
        {"step": {"id": "extract", "type": "bash", "params": {"script": (
            f"echo ready; exec 3<{fifo}; while read -r line <&3; do [ \"$line\" = open ] && break; "
            "echo \"got $line\"; done; echo closing")}, "transition": {"successors": ["load"]}}},
        {"step": {"id": "load", "type": "bash", "params": {"script": "echo loaded"}}}]}}
    (tmp_path / "gated.json").write_text(json.dumps(doc))
    store = ["--store", f"sqlite:///{tmp_path / 'legato.db'}"]

    procs: list = []

    def start(*args):
        procs.append(subprocess.Popen([LEGATO, *args, *store], cwd=tmp_path, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, bufsize=1))
        return procs[-1]

    def read_until(proc, wanted: str) -> list[str]:
        lines = []
        while not lines or lines[-1] != wanted:
            line = proc.stdout.readline()
            assert line, f"{proc.args} ended before printing {wanted!r}: {lines} {proc.stderr.read()}"
            lines.append(line.rstrip("\n"))
        return lines

    with _hang_guard(procs, fifo=fifo):
        run = start("run", "gated.json", "--workspace", str(tmp_path / "runs"))
        read_until(run, "extract | ready")
        iid = json.loads(legato_cli("list", "--json", *store).stdout)[0]["instance_id"]
        follow = start("logs", "-f", iid[:8])
        step = start("logs", "--follow", iid, "load")
        assert read_until(follow, "ready") == ["== extract #1", "ready"]
        with open(fifo, "w") as feed:  # opens once the step reads from it
            feed.write("alpha\n")
            feed.flush()
            assert read_until(follow, "got alpha") == ["got alpha"]  # while the step still runs
            feed.write("beta\nopen\n")
        rest, err = follow.communicate(timeout=120)
        assert (follow.returncode, err) == (0, "")
        assert rest.splitlines() == ["got beta", "closing", "== load #1", "loaded"]
        out, err = step.communicate(timeout=120)
        assert (step.returncode, out, err) == (0, "loaded\n", "")
        assert run.wait(timeout=120) == 0
    proc = legato_cli("logs", "-f", iid, "nosuch", *store)  # ended: refused like without -f
    assert proc.returncode == 2 and "has no step 'nosuch' with an attempt" in proc.stderr


def test_status_of_a_step_waiting_on_its_backoff_says_retrying(tmp_path):
    """`legato status` from another process: a failed attempt the engine will retry reads
    RETRYING with the time left and the attempt to come (counted per failure class, as Maestro's
    RetryPolicy counts), not as a final failure."""
    doc = {"workflow": {"id": "flaky", "steps": [{"step": {
        "id": "fetch", "type": "bash", "params": {"script": "exit 1"},
        "retry_policy": {"error_retry_limit": 2, "backoff": {"type": "fixed", "base": 600}}}}]}}
    (tmp_path / "flaky.json").write_text(json.dumps(doc))
    store = ["--store", f"sqlite:///{tmp_path / 'legato.db'}"]
    run = subprocess.Popen([LEGATO, "run", "flaky.json", "--workspace", str(tmp_path / "runs"), *store],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with _hang_guard([run]):
        for line in run.stdout:  # synchronise on the run's own line for the retry
            if "RETRYING" in line:
                assert line.split(" ", 1)[1].startswith("fetch #1 USER_FAILED after "), line
                assert ", RETRYING in 600s (attempt 2/3): exit code 1" in line, line
                break
        else:
            pytest.fail(f"the run ended without retrying: {run.stderr.read()}")
        proc = legato_cli("status", *store, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        head, row = proc.stdout.splitlines()
        assert head.startswith("flaky v1 [") and head.endswith("] IN_PROGRESS")
        assert re.fullmatch(r"  fetch\s+RETRYING in (600|59\d)s \(attempt 2/3\) attempt 1\s+\d+\.\d\ds  exit code 1",
                            row), row
        run.send_signal(signal.SIGINT)
        run.communicate(timeout=120)
    assert run.returncode == 130
    row = legato_cli("status", *store, cwd=tmp_path).stdout.splitlines()[1]
    assert row.split()[:2] == ["fetch", "USER_FAILED"], row  # it ended: the failure is final


def test_logs_follow_of_an_instance_whose_worker_died_says_so_and_ends(tmp_path):
    """`logs -f` does not wait forever on an instance nobody runs: its worker was killed (kill -9),
    so -f prints what is there, names `legato resume`, and exits 1."""
    doc = {"workflow": {"id": "orphan", "steps": [{"step": {"id": "wait", "type": "bash", "params": {
        "script": f"echo waiting; while [ ! -e {tmp_path / 'gate'} ]; do sleep 0.05; done"}}}]}}
    (tmp_path / "orphan.json").write_text(json.dumps(doc))
    store = ["--store", f"sqlite:///{tmp_path / 'legato.db'}"]
    run = subprocess.Popen([LEGATO, "run", "orphan.json", "--workspace", str(tmp_path / "runs"), *store],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with _hang_guard([run]):
            for line in run.stdout:
                if line == "wait | waiting\n":
                    break
            run.kill()
            run.communicate(timeout=60)
        iid = json.loads(legato_cli("list", "--json", *store).stdout)[0]["instance_id"]
        proc = legato_cli("logs", "-f", iid, *store, timeout=120)
        assert (proc.returncode, proc.stdout) == (1, "== wait #1\nwaiting\n"), proc.stderr
        assert proc.stderr == (f"legato: instance {iid} (orphan) is IN_PROGRESS but no live worker runs it (its "
                               f"worker died or its lease expired): `legato resume {iid}` continues it. Stopped "
                               "following\n")
    finally:
        (tmp_path / "gate").touch()  # the step's shell outlives its killed worker: let it end


def test_plain_lines_keep_a_line_split_across_writes_whole(tmp_path):
    """Output written in pieces (printf without a newline, then the rest) is one prefixed line;
    a last line with no newline still shows, before the step's end line."""
    doc = {"workflow": {"id": "pieces", "steps": [{"step": {"id": "emit", "type": "bash", "params": {
        "script": "printf 'half'; sleep 0.1; printf ' and half\\n'; printf 'no newline at the end'"}}}]}}
    (tmp_path / "pieces.json").write_text(json.dumps(doc))
    proc = legato_cli("run", "pieces.json", "--workspace", str(tmp_path / "runs"), "--store",
                      f"sqlite:///{tmp_path / 'legato.db'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [line.split(" ", 1)[1] if line[:2].isdigit() else line for line in proc.stdout.splitlines()]
    assert lines[:4] == ["emit #1 RUNNING", "emit | half and half", "emit | no newline at the end",
                         lines[3]] and lines[3].startswith("emit #1 SUCCEEDED after "), proc.stdout


def test_a_command_leaves_garbage_collection_as_it_found_it():
    """`legato` pauses the garbage collector during a command's imports (issue 16: ~6 % of a short
    run) and resumes it for the command's work and on return; a caller that had it off keeps it off,
    and a caller that passes arguments (a library use) gets no frozen objects."""
    import gc

    from click.testing import CliRunner

    from legato.cli import main

    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen  # called with arguments, as a library: nothing frozen
    gc.disable()
    try:
        assert CliRunner().invoke(main, ["plugins"]).exit_code == 0
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_legato_program_freezes_its_objects_before_the_interpreter_exits():
    """The program itself (arguments from sys.argv) freezes the collector's objects as it returns,
    so the interpreter's exit does not walk them all (issue 16: ~50 ms of a one-step `legato run`)."""
    import subprocess
    import sys

    code = ("import atexit, gc, sys\n"
            "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0, gc.isenabled()))\n"
            "from legato.cli import main\n"
            "sys.argv = ['legato', 'plugins']\n"
            "main()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "frozen True True"
