"""The ``legato`` command line, run as a user runs it: a subprocess of the installed script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
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
    assert "boom (attempt 1) USER_FAILED: exit code 7: disk is full" in proc.stdout
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
