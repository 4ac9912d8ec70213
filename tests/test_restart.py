"""`legato restart INSTANCE`: an ended instance runs again, as its next run, from its incomplete
steps (Maestro's RestartPolicy RESTART_FROM_INCOMPLETE, as in RunRequest / WorkflowInstanceRestartHandler):
complete steps are carried over and never run again; failed, stopped or timed-out ones run again
as new attempts with fresh retry budgets, then what follows them."""

from __future__ import annotations

import json
import sqlite3

import trio

from .conftest import legato_cli


def _doc(flag, ledger, retries=0):
    def step(sid, script, to=()):
        body = {"id": sid, "type": "bash", "params": {"script": f'echo "{sid}" >> "{ledger}"; {script}'},
                "retry_policy": {"error_retry_limit": retries, "backoff": {"type": "fixed", "base": 0}}}
        if to:
            body["transition"] = {"successors": list(to)}
        return {"step": body}

    return {"workflow": {"id": "restartable", "steps": [
        step("a", "true", ["b", "c"]),
        step("b", f'test -f "{flag}"', ["d"]),
        step("c", "true"),
        step("d", "true"),
    ]}}


def _run_json(*args, store):
    proc = legato_cli(*args, "--store", store, "--json")
    return proc, json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else None


def test_restart_runs_only_what_did_not_complete(tmp_path):
    flag, ledger = tmp_path / "flag", tmp_path / "ledger"
    definition = tmp_path / "wf.json"
    definition.write_text(json.dumps(_doc(flag, ledger)))
    store = f"sqlite:///{tmp_path / 'legato.db'}"
    proc, first = _run_json("run", str(definition), "--workspace", str(tmp_path / "runs"), store=store)
    assert proc.returncode == 1, proc.stderr
    assert first["status"] == "FAILED"
    assert {k: v["status"] for k, v in first["steps"].items()} == {
        "a": "SUCCEEDED", "b": "FATALLY_FAILED", "c": "SUCCEEDED", "d": "NOT_CREATED"}
    iid = first["instance_id"]

    # resume refuses an ended instance and points at restart
    proc = legato_cli("resume", iid, "--store", store)
    assert proc.returncode == 2 and f"legato restart {iid}" in proc.stderr, proc.stderr

    flag.touch()
    proc, second = _run_json("restart", iid[:8], "--workspace", str(tmp_path / "runs"), store=store)
    assert proc.returncode == 0, proc.stderr
    assert second["instance_id"] == iid and second["status"] == "SUCCEEDED"
    steps = second["steps"]
    assert {k: (v["status"], v["attempt"]) for k, v in steps.items()} == {
        "a": ("SUCCEEDED", 1), "b": ("SUCCEEDED", 2), "c": ("SUCCEEDED", 1), "d": ("SUCCEEDED", 1)}
    # a and c ran once (carried over), b twice, d once (only in the second run)
    assert sorted(ledger.read_text().split()) == ["a", "b", "b", "c", "d"]
    conn = sqlite3.connect(tmp_path / "legato.db")
    runs = dict(conn.execute("SELECT step_id || ':' || attempt, run_id FROM legato_attempts WHERE instance_id = ?",
                             (iid,)).fetchall())
    (run_id,), = conn.execute("SELECT run_id FROM legato_instances WHERE instance_id = ?", (iid,)).fetchall()
    conn.close()
    assert run_id == 2
    assert runs == {"a:1": 1, "c:1": 1, "b:1": 1, "b:2": 2, "d:1": 2}

    # nothing left to run: refused, exit 2, saying why
    proc = legato_cli("restart", iid, "--store", store)
    assert proc.returncode == 2 and "ended SUCCEEDED" in proc.stderr and "no incomplete step" in proc.stderr


def test_restart_gives_fresh_retry_budgets(tmp_path, engine):
    """A restarted step gets its retry limits anew (a new run), its attempts numbered on."""
    flag, ledger = tmp_path / "flag", tmp_path / "ledger"
    definition = engine.load(_doc(flag, ledger, retries=1))

    async def main():
        first = await engine.execute(definition)
        assert first.status.value == "FAILED"
        before = [(a.step_id, a.attempt, a.status.value) for a in await engine.storage.get_attempts(first.instance_id)
                  if a.step_id == "b"]
        assert before == [("b", 1, "USER_FAILED"), ("b", 2, "FATALLY_FAILED")]
        again = await engine.restart(first.instance_id)
        assert again.status.value == "FAILED" and again.run_id == 2
        after = [(a.step_id, a.attempt, a.status.value, a.run_id)
                 for a in await engine.storage.get_attempts(first.instance_id) if a.step_id == "b"]
        assert after[2:] == [("b", 3, "USER_FAILED", 2), ("b", 4, "FATALLY_FAILED", 2)]

    trio.run(main)


def test_restart_refuses_unknown_and_unfinished(tmp_path, engine):
    proc = legato_cli("run", "examples/etl.json", "--store", f"sqlite:///{tmp_path / 'legato.db'}",
                      "--workspace", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr
    proc = legato_cli("restart", "nosuchinstance", "--store", f"sqlite:///{tmp_path / 'legato.db'}")
    assert proc.returncode == 2 and "no instance 'nosuchinstance'" in proc.stderr, proc.stderr

    from legato.engine import RestartRefused

    async def main():
        instance, _ = await engine.start(engine.load(_doc(tmp_path / "flag", tmp_path / "ledger")))
        try:
            await engine.restart(instance.instance_id)
        except RestartRefused as exc:
            assert "has not ended (CREATED)" in str(exc) and "legato resume" in str(exc)
        else:
            raise AssertionError("an unfinished instance was restarted")

    trio.run(main)
