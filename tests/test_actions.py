"""Actions from any shell (DESIGN §3 actions): `legato stop|kill|restart`, `legato step
stop|kill|skip|restart`, asked from another process and applied by the one that runs the instance
(a real `legato worker`, or a `legato run` in another shell), each recorded with who and when.

Followed from Maestro: ``Actions.WorkflowInstanceAction`` (stop → STOPPED, kill → FAILED, restart
of an ended instance), ``Actions.StepInstanceAction`` and ``StepInstanceActionHandler`` (step stop →
STOPPED, kill → FATALLY_FAILED with the failure mode applied, skip → SKIPPED and the DAG goes on,
restart of a step of a running instance → a new attempt, of an ended one → a new run from it),
``RunPolicy`` / ``DagTranslator`` (RESTART_FROM_INCOMPLETE, RESTART_FROM_BEGINNING,
RESTART_FROM_SPECIFIC: the step and what follows it, and the other incomplete steps).

Processes synchronise on what the store says (states, marker files the steps write) and on the
worker's output lines; deadlines only bound a hang. Bash steps append their name to a ledger, so
which steps ran (and how often) shows.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import trio

from .conftest import LEGATO
from .test_worker import HANG, Site

ALICE = {"LEGATO_USER": "alice"}


def _step(sid: str, script: str, successors=(), **more) -> dict:
    body = {"id": sid, "type": "bash", "params": {"script": script}, **more}
    if successors:
        body["transition"] = {"successors": list(successors)}
    return {"step": body}


def _ledger(name: str) -> str:
    return f'echo {name} >> "$LEDGER"'


def _blocking(name: str) -> str:
    """Writes the ledger, says it started (a marker file per instance), then waits for RELEASE."""
    return (f'{_ledger(name)}; touch "$STARTED/$LEGATO_INSTANCE_ID.{name}"; '
            'while [ ! -e "$RELEASE" ]; do sleep 0.02; done')


def _doc(site: Site, wid: str, steps: list[dict]) -> dict:
    # PARALLEL: the instances of one workflow here run at once (SEQUENTIAL, the default, would queue them).
    return {"properties": {"run_strategy": "parallel"}, "workflow": {"id": wid, "params": {**site.params, "FLAG": str(site.dir / "flag")}, "steps": steps}}


@pytest.fixture
def site(tmp_path):
    site = Site(tmp_path)
    yield site
    # A step a killed worker left running (killed before its pgid was durable, nobody can reap
    # it) would wait forever: let it end.
    site.release.touch()


@pytest.fixture
def workers():
    started = []
    yield started
    for w in started:
        w.kill()


def _start(site: Site, workflow: str) -> str:
    proc = site.cli("start", workflow, "--no-wait")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()[0]


def _wait_marker(site: Site, iid: str, name: str) -> None:
    deadline = time.monotonic() + HANG
    while not (site.started / f"{iid}.{name}").exists():
        assert time.monotonic() < deadline, f"step {name} of {iid} never started"
        time.sleep(0.02)


def _wait_step(site: Site, iid: str, step: str, status: str) -> None:
    deadline = time.monotonic() + HANG
    while True:
        _, attempts, _ = site.read()
        last = [a for a in attempts.get(iid, []) if a.step_id == step]
        if last and last[-1].status.value == status:
            return
        assert time.monotonic() < deadline, f"step {step} of {iid} never reached {status}: {last[-1:]}"
        time.sleep(0.02)


def _status(site: Site, iid: str) -> dict:
    proc = site.cli("status", iid, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _cli(site: Site, *args, env=None):
    """``legato ARGS`` on the site's store, with ``env`` added (``LEGATO_USER``)."""
    from .conftest import legato_cli

    return legato_cli(*args, cwd=site.dir, env_extra={**site.env, **(env or {})})


def _ledger_lines(site: Site) -> list[str]:
    return site.ledger.read_text().split() if site.ledger.exists() else []


def test_stop_and_kill_from_another_shell_are_applied_by_the_worker(site, workers):
    """`legato stop` and `legato kill` in another shell reach the worker that runs the instances
    (woken by the store: it polls only hourly here): the running step is cancelled, nothing after
    it starts, the instance ends STOPPED / FAILED; the command waits for that and exits 0. The
    timeline and `status` say who acted and when."""
    site.push(_doc(site, "held", [_step("a", _blocking("a"), ["b"]), _step("b", _ledger("b"))]))
    w = site.worker("--poll", "3600")
    workers.append(w)
    first, second = _start(site, "held"), _start(site, "held")
    _wait_marker(site, first, "a")
    _wait_marker(site, second, "a")

    proc = _cli(site, "stop", first[:8], env=ALICE)
    assert proc.returncode == 0, proc.stderr
    assert "applied: instance STOPPED" in proc.stdout, proc.stdout
    proc = _cli(site, "kill", second, "--json", env=ALICE)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert (answer["outcome"], answer["instance_status"], answer["requested_by"]) == \
        ("applied: instance FAILED", "FAILED", "alice via cli")

    instances, attempts, _ = site.read()
    assert (instances[first].status.value, instances[second].status.value) == ("STOPPED", "FAILED")
    assert [(a.step_id, a.status.value) for a in attempts[first]] == [("a", "STOPPED")]
    assert [(a.step_id, a.status.value) for a in attempts[second]] == [("a", "STOPPED")]
    assert _ledger_lines(site) == ["a", "a"], "b ran after its instance was stopped"
    events = [e for e in site.timeline(first) if e.status == "ACTION"]
    assert len(events) == 1 and "stop requested by alice via cli at 20" in events[0].message, events
    assert "applied: instance STOPPED" in events[0].message
    status = _status(site, first)
    (action,) = status["actions"]
    assert (action["verb"], action["requested_by"], action["outcome"]) == ("stop", "alice via cli",
                                                                           "applied: instance STOPPED")
    assert action["requested_at"] <= action["applied_at"]

    proc = site.cli("stop", first)  # ended: refused, exit 1, saying how it ended and what to do
    assert proc.returncode == 1 and "already ended STOPPED" in proc.stderr and f"legato restart {first}" in proc.stderr
    assert w.terminate() == 0, "".join(w.lines)
    assert any(f"instance {second} (held v1): FAILED" in line for line in w.lines), w.lines


def test_stop_reaches_a_legato_run_in_another_shell(site):
    """A `legato run` in the foreground applies a stop asked from another shell: it exits 1 with
    the instance STOPPED, its live output naming who stopped it."""
    path = site.dir / "fg.json"
    path.write_text(json.dumps(_doc(site, "fg", [_step("a", _blocking("a"), ["b"]), _step("b", _ledger("b"))])))
    run = subprocess.Popen([LEGATO, "run", str(path), "--workspace", str(site.dir / "runs")], cwd=site.dir,
                           env={**os.environ, **site.env}, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + HANG
        while not list(site.started.iterdir()):
            assert run.poll() is None and time.monotonic() < deadline, "the run never started its step"
            time.sleep(0.02)
        iid = next(site.started.iterdir()).name.split(".")[0]
        proc = _cli(site, "stop", iid, env=ALICE)
        assert proc.returncode == 0 and "applied: instance STOPPED" in proc.stdout, proc.stderr
        out, err = run.communicate(timeout=HANG)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 1, (out, err)
    assert "stopped by alice via cli" in out + err
    assert _status(site, iid)["status"] == "STOPPED"
    assert _ledger_lines(site) == ["a"]


def test_step_skip_lets_the_dag_go_on_and_step_kill_fails_the_instance(site, workers):
    """`legato step skip` ends a running step SKIPPED and its successor runs, as if it had
    completed; `legato step kill` ends it FATALLY_FAILED: nothing after it runs, the instance
    fails; with IGNORE_FAILURE the killed step is COMPLETED_WITH_ERROR and the DAG goes on."""
    site.push(_doc(site, "skippy", [_step("a", _blocking("a"), ["b"]), _step("b", _ledger("b"))]))
    site.push(_doc(site, "ignored", [_step("a", _blocking("a"), ["b"], failure_mode="IGNORE_FAILURE"),
                                     _step("b", _ledger("b"))]))
    w = site.worker("--poll", "3600")
    workers.append(w)
    skipped, killed, ignored = _start(site, "skippy"), _start(site, "skippy"), _start(site, "ignored")
    for iid in (skipped, killed, ignored):
        _wait_marker(site, iid, "a")
    proc = site.cli("step", "skip", skipped, "a")
    assert proc.returncode == 0 and "applied: step a SKIPPED" in proc.stdout, proc.stdout + proc.stderr
    proc = site.cli("step", "kill", killed, "a")
    assert proc.returncode == 0 and "applied: step a FATALLY_FAILED" in proc.stdout, proc.stdout + proc.stderr
    proc = site.cli("step", "kill", ignored, "a")
    assert proc.returncode == 0 and "COMPLETED_WITH_ERROR" in proc.stdout, proc.stdout + proc.stderr
    now = site.wait_statuses([skipped, killed, ignored], {"SUCCEEDED", "FAILED"})
    assert now == {skipped: "SUCCEEDED", killed: "FAILED", ignored: "SUCCEEDED"}
    _, attempts, _ = site.read()
    assert {a.step_id: a.status.value for a in attempts[skipped]} == {"a": "SKIPPED", "b": "SUCCEEDED"}
    assert {a.step_id: a.status.value for a in attempts[killed]} == {"a": "FATALLY_FAILED"}
    assert {a.step_id: a.status.value for a in attempts[ignored]} == {"a": "COMPLETED_WITH_ERROR", "b": "SUCCEEDED"}
    assert sorted(_ledger_lines(site)) == ["a", "a", "a", "b", "b"]
    proc = site.cli("step", "skip", skipped, "a")  # ended instance: refused, pointing at a restart
    assert proc.returncode == 1 and f"legato restart {skipped} --from-step a" in proc.stderr, proc.stderr
    assert w.terminate() == 0, "".join(w.lines)


def test_step_restart_runs_a_failed_step_again_in_the_running_instance(site, workers):
    """A step that failed for good while another branch still runs is restarted as a new attempt
    of the same run (Maestro's restart of a step of a running instance); once it succeeds its
    successor runs and the instance, no longer failed, succeeds."""
    site.push(_doc(site, "branches", [
        _step("flaky", f'{_ledger("flaky")}; test -e "$FLAG"', ["after"], retry_policy={"error_retry_limit": 0}),
        _step("after", _ledger("after")),
        _step("long", _blocking("long")),
    ]))
    w = site.worker("--poll", "3600")
    workers.append(w)
    iid = _start(site, "branches")
    _wait_step(site, iid, "flaky", "FATALLY_FAILED")
    _wait_marker(site, iid, "long")
    (site.dir / "flag").touch()
    proc = site.cli("step", "restart", iid, "flaky")
    assert proc.returncode == 0 and "applied: step flaky restarted as attempt 2" in proc.stdout, \
        proc.stdout + proc.stderr
    _wait_step(site, iid, "after", "SUCCEEDED")
    site.release.touch()
    assert site.wait_statuses([iid], {"SUCCEEDED"}) == {iid: "SUCCEEDED"}
    _, attempts, _ = site.read()
    assert [(a.step_id, a.attempt, a.run_id, a.status.value) for a in attempts[iid] if a.step_id == "flaky"] == \
        [("flaky", 1, 1, "FATALLY_FAILED"), ("flaky", 2, 1, "SUCCEEDED")]
    assert sorted(_ledger_lines(site)) == ["after", "flaky", "flaky", "long"]
    assert w.terminate() == 0, "".join(w.lines)


def test_restarts_from_incomplete_from_a_step_and_from_the_beginning(site, workers):
    """An instance failed at b of a → b → c. `legato restart --no-wait` queues its next run and a
    worker runs it from the incomplete steps: only b and c run (a is carried over). Then, in the
    foreground, `--from-step b` runs b and c again, `--from-beginning` every step. Every run is
    kept: the attempts of runs 1–4 are all in the store."""
    site.push(_doc(site, "abc", [_step("a", _ledger("a"), ["b"]),
                                 _step("b", f'{_ledger("b")}; test -e "$FLAG"', ["c"],
                                       retry_policy={"error_retry_limit": 0}),
                                 _step("c", _ledger("c"))]))
    proc = site.cli("start", "abc", "--workspace", str(site.dir / "runs"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    iid = site.read()[0].popitem()[0]
    assert _ledger_lines(site) == ["a", "b"]
    (site.dir / "flag").touch()

    w = site.worker("--poll", "3600")
    workers.append(w)
    proc = _cli(site, "restart", iid[:6], "--no-wait", env=ALICE)
    assert proc.returncode == 0 and "run 2 queued" in proc.stdout, proc.stdout + proc.stderr
    assert site.wait_statuses([iid], {"SUCCEEDED"}) == {iid: "SUCCEEDED"}
    assert _ledger_lines(site) == ["a", "b", "b", "c"], "restart from incomplete ran a completed step again"
    assert w.terminate() == 0, "".join(w.lines)

    proc = site.cli("restart", iid, "--from-step", "b", "--workspace", str(site.dir / "runs"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _ledger_lines(site)[4:] == ["b", "c"]
    proc = site.cli("restart", iid, "--from-beginning", "--json", "--workspace", str(site.dir / "runs"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["status"] == "SUCCEEDED"
    assert _ledger_lines(site)[6:] == ["a", "b", "c"]

    _, attempts, _ = site.read()
    runs = [(a.step_id, a.attempt, a.run_id, a.status.value) for a in attempts[iid]]
    assert sorted(runs) == sorted([
        ("a", 1, 1, "SUCCEEDED"), ("b", 1, 1, "FATALLY_FAILED"),
        ("b", 2, 2, "SUCCEEDED"), ("c", 1, 2, "SUCCEEDED"),
        ("b", 3, 3, "SUCCEEDED"), ("c", 2, 3, "SUCCEEDED"),
        ("a", 2, 4, "SUCCEEDED"), ("b", 4, 4, "SUCCEEDED"), ("c", 3, 4, "SUCCEEDED")])
    status = _status(site, iid)
    assert [(a["verb"], a["params"].get("mode"), a["outcome"].split(":")[0]) for a in status["actions"]] == [
        ("restart", "RESTART_FROM_INCOMPLETE", "applied"), ("restart", "RESTART_FROM_SPECIFIC", "applied"),
        ("restart", "RESTART_FROM_BEGINNING", "applied")]
    assert status["actions"][0]["requested_by"] == "alice via cli"
    created = [e.message for e in site.timeline(iid) if e.step_id is None and e.status == "CREATED"]
    assert created == ["run 2: restart from the incomplete steps, requested by alice via cli",
                       f"run 3: restart from step b, requested by {status['actions'][1]['requested_by']}",
                       f"run 4: restart from the beginning, requested by {status['actions'][2]['requested_by']}"]


def test_bad_requests_say_what_to_do(site):
    """Unknown instance, ambiguous prefix, unknown step, unknown combination: exit 2; an action
    that does not apply to the instance's state (stop an ended one, restart a running one, step
    actions on a queued one): exit 1. Each names what to do. A queued instance nobody runs is
    stopped at once."""
    site.push(_doc(site, "q", [_step("a", _ledger("a"))]))
    from legato.engine import Engine
    from legato.storage import open_storage

    async def queue():
        async with open_storage(site.url) as store:
            engine = Engine(store, workspace=site.dir / "runs")
            version = await store.get_definition("q")
            definition = engine.load(version.document)
            definition.version = version.version
            for iid in ("abc1", "abc2"):
                await engine.start(definition, queued=True, instance_id=iid)

    trio.run(queue)
    proc = site.cli("stop", "nosuch")
    assert proc.returncode == 2 and "no instance 'nosuch'" in proc.stderr and "legato list" in proc.stderr
    proc = site.cli("kill", "abc")
    assert proc.returncode == 2 and "ambiguous" in proc.stderr and "abc1" in proc.stderr and "abc2" in proc.stderr
    proc = site.cli("step", "skip", "abc1", "zz")
    assert proc.returncode == 2 and "has no step 'zz'" in proc.stderr and "its steps: a" in proc.stderr
    proc = site.cli("step", "skip", "abc1", "a")
    assert proc.returncode == 1 and "has not started yet" in proc.stderr and "legato stop abc1" in proc.stderr
    proc = site.cli("restart", "abc1")
    assert proc.returncode == 1 and "has not ended (CREATED)" in proc.stderr and "legato stop abc1" in proc.stderr
    proc = site.cli("restart", "abc1", "--from-beginning", "--from-step", "a")
    assert proc.returncode == 2 and "exclude each other" in proc.stderr
    proc = site.cli("stop", "abc1")  # queued, nobody runs it: applied here and now
    assert proc.returncode == 0 and "applied: instance STOPPED before it started" in proc.stdout, proc.stderr
    proc = site.cli("kill", "abc2", "--no-wait")
    assert proc.returncode == 0, proc.stderr
    assert {i: r.status.value for i, r in site.read()[0].items()} == {"abc1": "STOPPED", "abc2": "FAILED"}
    proc = site.cli("restart", "abc1", "--from-step", "zz")
    assert proc.returncode == 2 and "no step 'zz' to restart from" in proc.stderr
    assert _ledger_lines(site) == []


def test_a_store_from_before_actions_opens_and_keeps_its_history(site):
    """A store at migration 0003 (before actions) is migrated when opened: its instance is there,
    acting on it works, and a restart makes its next run beside the old one."""
    from alembic import command
    from alembic.config import Config

    from legato.plugins.sqlstore import store as module
    from legato.plugins.sqlstore.store import SqlStorage

    old = SqlStorage(site.url)
    old._prepare_sqlite_file()
    config = Config()
    config.set_main_option("script_location", str(Path(module.__file__).parent / "migrations"))
    with old._engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0003")
    old._engine.dispose()
    document = _doc(site, "old", [_step("a", _ledger("a"))])
    conn = sqlite3.connect(site.db)
    with conn:
        conn.execute("INSERT INTO legato_definition_versions VALUES ('old', 1, ?, 1.0, 1)", (json.dumps(document),))
        conn.execute("INSERT INTO legato_instances (instance_id, workflow_id, version, status, run_id, params, "
                     "initiator, created_at, message, generation) VALUES ('0ld1nstance', 'old', 1, 'FAILED', "
                     "1, ?, 'manual', 2.0, 'it failed back then', 1)", (json.dumps(document["workflow"]["params"]),))
        conn.execute("INSERT INTO legato_attempts (instance_id, step_id, attempt, status, run_id, outputs, "
                     "message, created_at) VALUES ('0ld1nstance', 'a', 1, 'FATALLY_FAILED', 1, '{}', '', 2.0)")
    conn.close()
    proc = site.cli("stop", "0ld1")
    assert proc.returncode == 1 and "already ended FAILED" in proc.stderr, proc.stderr
    proc = site.cli("restart", "0ld1", "--workspace", str(site.dir / "runs"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status = _status(site, "0ld1nstance")
    assert status["status"] == "SUCCEEDED" and status["actions"][0]["verb"] == "restart"
    _, attempts, _ = site.read()
    assert [(a.attempt, a.run_id, a.status.value) for a in attempts["0ld1nstance"]] == [
        (1, 1, "FATALLY_FAILED"), (2, 2, "SUCCEEDED")]
    conn = sqlite3.connect(site.db)
    try:
        assert conn.execute("SELECT version_num FROM legato_alembic_version").fetchall() == [(module.HEAD,)]
    finally:
        conn.close()


def test_a_stopped_step_ends_the_instance_stopped_once_the_other_branches_finish(engine):
    """Maestro's step STOP stops that step only: its successors are never created, the other
    branches go on to their end, and the instance ends STOPPED. A step not started yet (waiting
    for a permit) is skipped at once. In one process on the memory store, woken without polling."""
    from legato.actions import ActionApplier, request_action, wait_applied

    doc = {"properties": {"step_concurrency": 1}, "workflow": {"id": "par", "steps": [
        {"step": {"id": "a", "type": "sleep", "params": {"seconds": 3600}, "transition": {"successors": ["c"]}}},
        {"step": {"id": "b", "type": "sleep", "params": {"seconds": 0}}},
        {"step": {"id": "c", "type": "noop"}}]}}
    definition = engine.load(doc)
    storage = engine.storage

    async def main():
        running = trio.Event()

        def observe(event):
            if event.step_id == "a" and event.status == "RUNNING":
                running.set()

        instance, _ = await engine.start(definition)
        iid = instance.instance_id
        async with trio.open_nursery() as nursery:
            await nursery.start(ActionApplier(engine).run)
            finished = trio.Event()

            async def drive():
                await engine.run(definition, instance, observer=observe)
                finished.set()

            nursery.start_soon(drive)
            with trio.fail_after(HANG):
                await running.wait()
                skip = await request_action(storage, iid, "skip", step_id="b", by="tester via test")
                assert (await wait_applied(storage, skip.id, iid)).outcome == "applied: step b SKIPPED"
                stop = await request_action(storage, iid, "stop", step_id="a", by="tester via test")
                assert (await wait_applied(storage, stop.id, iid)).outcome == "applied: step a STOPPED"
                await finished.wait()
            nursery.cancel_scope.cancel()
        final = await storage.get_instance(iid)
        assert final.status.value == "STOPPED"
        assert {a.step_id: a.status.value for a in await storage.get_attempts(iid)} == {"a": "STOPPED",
                                                                                      "b": "SKIPPED"}
        actions = [e for e in await storage.get_timeline(iid) if e.status == "ACTION"]
        assert [(e.step_id, "tester via test" in e.message) for e in actions] == [("b", True), ("a", True)]

    trio.run(main)


def test_an_action_asked_while_nobody_runs_the_instance_waits_for_whoever_resumes_it(site, workers):
    """The worker running an instance dies (SIGKILL); a stop asked meanwhile is kept, pending, and
    the worker that resumes the instance applies it first thing: the instance ends STOPPED and
    the step after the interrupted one never runs."""
    site.push(_doc(site, "orphan", [_step("a", _blocking("a"), ["b"]), _step("b", _ledger("b"))]))
    w = site.worker("--poll", "3600")
    workers.append(w)
    iid = _start(site, "orphan")
    _wait_marker(site, iid, "a")
    w.kill()
    proc = site.cli("stop", iid, "--no-wait")
    assert proc.returncode == 0 and "recorded" in proc.stdout, proc.stdout + proc.stderr
    assert _status(site, iid)["actions"][0]["outcome"] == ""  # pending: nobody has applied it
    again = site.worker("--poll", "0.05")
    workers.append(again)
    assert site.wait_statuses([iid], {"STOPPED"}) == {iid: "STOPPED"}
    (action,) = _status(site, iid)["actions"]
    assert action["outcome"] == "applied: instance STOPPED", action
    assert _ledger_lines(site).count("b") == 0
    assert again.terminate() == 0, "".join(again.lines)


def test_a_restart_may_give_new_values_to_params_whose_mode_allows_it(site):
    """`legato restart -p name=value`: the new run sees the new value (Maestro's restart run
    params, merged as ParamsMergeHelper merges them: MUTABLE and MUTABLE_ON_START_RESTART params
    only); an IMMUTABLE one is refused, exit 2, at its pointer, and nothing is restarted."""
    doc = _doc(site, "greet", [_step("a", f'{_ledger("$who")}; test "$who" = alice',
                                     retry_policy={"error_retry_limit": 0})])
    doc["workflow"]["params"].update(who="world", fixed={"type": "STRING", "value": "x", "mode": "IMMUTABLE"})
    path = site.dir / "greet.json"
    path.write_text(json.dumps(doc))
    proc = site.cli("run", str(path), "--workspace", str(site.dir / "runs"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    iid = site.read()[0].popitem()[0]
    proc = site.cli("restart", iid, "-p", "fixed=y")
    assert proc.returncode == 2 and "/workflow/params/fixed/mode" in proc.stderr and "IMMUTABLE" in proc.stderr
    assert _status(site, iid)["status"] == "FAILED"
    proc = site.cli("restart", iid, "-p", "who=alice", "--json", "--workspace", str(site.dir / "runs"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    final = json.loads(proc.stdout)
    assert (final["status"], final["params"]["who"]) == ("SUCCEEDED", "alice")
    assert _ledger_lines(site) == ["world", "alice"]
    assert _status(site, iid)["actions"][-1]["params"] == {"mode": "RESTART_FROM_INCOMPLETE",
                                                           "workflow_params": {"who": "alice"}}


def test_a_restart_from_the_beginning_keeps_the_earlier_runs_steps_even_unsatisfied_ones(site):
    """From the beginning with a new param value, an edge condition that was true is false: the
    step behind it is UNSATISFIED in the new run, as a new attempt; its earlier run's attempt stays."""
    doc = {"workflow": {"id": "cond", "params": {"go": "yes"}, "steps": [
        {"step": {"id": "a", "type": "noop", "transition": {"successors": {"b": "go == 'yes'"}}}},
        {"step": {"id": "b", "type": "noop"}}]}}
    path = site.dir / "cond.json"
    path.write_text(json.dumps(doc))
    proc = site.cli("run", str(path), "--workspace", str(site.dir / "runs"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    iid = site.read()[0].popitem()[0]
    proc = site.cli("restart", iid, "--from-beginning", "-p", "go=no", "--workspace", str(site.dir / "runs"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, attempts, _ = site.read()
    assert sorted((a.step_id, a.attempt, a.run_id, a.status.value) for a in attempts[iid]) == [
        ("a", 1, 1, "SUCCEEDED"), ("a", 2, 2, "SUCCEEDED"), ("b", 1, 1, "SUCCEEDED"), ("b", 2, 2, "UNSATISFIED")]


def test_a_queued_instance_its_run_strategy_holds_back_is_stopped_at_once(tmp_path):
    """A stop of an instance SEQUENTIAL keeps waiting (no lease is given to anyone while an
    earlier one runs) ends it STOPPED at once through Storage.end_queued, the action applied
    (Maestro's WorkflowInstanceActionHandler.stop of a queued instance)."""
    import trio

    from legato.actions import request_action
    from legato.engine import Engine
    from legato.storage import open_storage

    doc = {"workflow": {"id": "held", "steps": [{"step": {"id": "a", "type": "noop"}}]}}

    async def main():
        async with open_storage(f"sqlite:///{tmp_path}/s.db") as storage:
            engine = Engine(storage, workspace=tmp_path / "runs")
            definition = engine.load(doc)
            first, _ = await engine.start(definition)  # leased to this engine: it runs
            second, _ = await engine.start(definition, queued=True)
            assert (await storage.acquire_lease(second.instance_id, "someone", 30.0)) is None
            action = await request_action(storage, second.instance_id, "stop", by="tester")
            assert action.applied_at is not None and action.outcome.startswith("applied:")
            ended = await storage.get_instance(second.instance_id)
            assert ended.status.value == "STOPPED"
            assert (await storage.get_instance(first.instance_id)).status.value != "STOPPED"
            assert [a.outcome for a in await storage.list_actions(second.instance_id)] == [action.outcome]

    trio.run(main)
