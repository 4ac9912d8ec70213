"""Crash recovery on the SQLite store (DESIGN §5, §10): the kernel runs as a subprocess, is killed
with SIGKILL at random moments and at named crash points, and is resumed until its instance ends.

Every step is a bash step that appends its idempotency key (unique per attempt) to a ledger file,
so the ledger says what really ran; the database, read directly with sqlite3, says what Legato
recorded. The invariants: every instance ends as it should, a SUCCEEDED step never runs again,
each attempt runs at most once, every step's succeeded key is in the ledger, and no step ran more
often than the attempts recorded for it.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path


import pydantic
import trio

from legato import StepResult, StepType
from legato.hookspecs import hookimpl
from legato.plugins.sqlstore.store import event_statuses

from .conftest import LEGATO

LEASE_TTL = "0.4"
WORK = 'echo "$LEGATO_IDEMPOTENCY_KEY" >> "$ledger"; sleep 0.08; echo "done=$LEGATO_STEP_ID" >> "$LEGATO_OUTPUT"'
RETRIES = {"error_retry_limit": 5, "platform_retry_limit": 99, "backoff": {"type": "fixed", "base": 0.15}}  # 99: MAX_RETRY_LIMIT


def bash(sid, to=(), script=WORK, **extra):
    body = {"id": sid, "type": "bash", "params": {"script": script}, "retry_policy": RETRIES, **extra}
    if to:
        body["transition"] = {"successors": list(to)}
    return {"step": body}


def workflows(ledger: str) -> dict[str, dict]:
    params = {"ledger": ledger}
    flaky = 'echo "$LEGATO_IDEMPOTENCY_KEY" >> "$ledger"; sleep 0.05; [ "$LEGATO_ATTEMPT" -ge 3 ]'
    return {
        "chain": {"workflow": {"id": "chain", "params": params, "steps": [
            bash(f"c{i}", [f"c{i + 1}"] if i < 5 else []) for i in range(6)]}},
        "fan": {"workflow": {"id": "fan", "params": params, "steps": [
            bash("root", [f"f{i}" for i in range(4)]), *[bash(f"f{i}", ["join"]) for i in range(4)], bash("join")]}},
        "retry": {"workflow": {"id": "retry", "params": params, "steps": [
            bash("flaky", ["after"], script=flaky), bash("after")]}},
    }


class Driver:
    """Starts, kills and resumes `legato run --request-id` until the instance has ended."""

    def __init__(self, tmp: Path, rng: random.Random) -> None:
        self.tmp = tmp
        self.rng = rng
        self.db = tmp / "legato.db"
        self.env = {**os.environ, "LEGATO_STORE": f"sqlite:///{self.db}", "LEGATO_LEASE_TTL": LEASE_TTL}
        self.cycles = 0

    def launch(self, path: Path, request_id: str, crash_at: str | None = None) -> subprocess.Popen:
        env = dict(self.env)
        if crash_at:
            env["LEGATO_CRASH_AT"] = crash_at
        return subprocess.Popen([LEGATO, "run", str(path), "--request-id", request_id, "--workspace",
                                 str(self.tmp / "runs")], env=env, cwd=self.tmp, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def drive(self, path: Path, request_id: str, *, crash_at: str | None = None, kills: int = 3) -> str:
        """Run with ``kills`` random SIGKILLs (plus the named crash point), then to the end."""
        proc = self.launch(path, request_id, crash_at)
        for _ in range(200):
            if kills > 0:
                try:
                    proc.wait(timeout=self.rng.uniform(0.1, 0.6))  # an undisturbed run takes ~0.5 s
                except subprocess.TimeoutExpired:
                    proc.kill()
                    kills -= 1
            out, err = proc.communicate(timeout=120)
            if proc.returncode == 0:
                return out
            if proc.returncode == -signal.SIGKILL:
                self.cycles += 1
            elif "owned by another live worker" not in err:  # the previous owner's lease is still live
                raise AssertionError(f"legato exited {proc.returncode}: {out}\n{err}")
            time.sleep(0.05)
            proc = self.launch(path, request_id)
        raise AssertionError("the instance never ended")


class _QmarkConnection:
    """A psycopg connection whose ``execute`` takes sqlite3's ``?`` parameters (what these checks write)."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)

    def execute(self, sql: str, args=()):
        return self.conn.execute(sql.replace("%", "%%").replace("?", "%s"), args)  # LIKE '%…' stays literal

    def close(self) -> None:
        self.conn.close()


def connect_store(db):
    """A connection to the store the checks read directly: a SQLite file (sqlite3), or a
    ``postgresql://`` URL (psycopg, taking the same ``?`` parameters)."""
    if isinstance(db, str) and db.startswith("postgresql"):
        return _QmarkConnection(db)
    return sqlite3.connect(db)


def check_instance(db, request_id: str, ledger_lines: list[str], expect: str = "SUCCEEDED", *,
                   final: dict[str, str] | None = None, ledgered=None) -> dict:
    """Check the invariants for one instance (see the module docstring). ``final`` maps steps that
    must not end SUCCEEDED to what they end as (e.g. UNSATISFIED); only steps in ``ledgered``
    (default: all) write their key to the ledger."""
    final = final or {}
    conn = connect_store(db)
    (instance_id, status), = conn.execute(
        "SELECT instance_id, status FROM legato_instances WHERE request_id = ?", (request_id,)).fetchall()
    assert status == expect, f"{request_id}: {status}"
    attempts = collections.defaultdict(list)
    for step_id, attempt, st in conn.execute(
            "SELECT step_id, attempt, status FROM legato_attempts WHERE instance_id = ? ORDER BY attempt",
            (instance_id,)):
        attempts[step_id].append((attempt, st))
    ran = collections.Counter(ledger_lines)
    for step_id, rows in attempts.items():
        statuses = [st for _, st in rows]
        assert [a for a, _ in rows] == list(range(1, len(rows) + 1)), f"{step_id}: attempts {rows}"
        if step_id in final:
            assert statuses == [final[step_id]], f"{step_id}: {statuses}"
            continue
        assert statuses.count("SUCCEEDED") == 1 and statuses[-1] == "SUCCEEDED", f"{step_id}: {statuses}"
        if ledgered is not None and step_id not in ledgered:
            continue
        keys = {f"{instance_id}:{step_id}:{a}" for a, _ in rows}
        mine = [k for k in ran if k.startswith(f"{instance_id}:{step_id}:")]
        assert set(mine) <= keys, f"{step_id}: the ledger shows attempts the store never recorded: {set(mine) - keys}"
        assert all(ran[k] == 1 for k in mine), f"{step_id}: an attempt ran twice: {ran}"
        assert f"{instance_id}:{step_id}:{len(rows)}" in ran, f"{step_id}: the succeeded attempt never ran"
        assert len(mine) <= len(rows)
    # terminal states never change: no event follows an attempt's first terminal event
    terminal = {"DISABLED", "SUCCEEDED", "COMPLETED_WITH_ERROR", "SKIPPED", "UNSATISFIED", "USER_FAILED",
                "PLATFORM_FAILED", "TIMEOUT_FAILED", "FATALLY_FAILED", "INTERNALLY_FAILED", "STOPPED", "TIMED_OUT"}
    ended = set()
    for step_id, attempt, row in conn.execute(
            "SELECT step_id, attempt, status FROM legato_events WHERE instance_id = ? AND step_id IS NOT NULL "
            "ORDER BY id", (instance_id,)):
        for st, _ in event_statuses(row):  # a row holds the transitions of one commit
            assert (step_id, attempt) not in ended, f"{step_id}#{attempt} changed after ending: {st}"
            if st in terminal:
                ended.add((step_id, attempt))
    return {"instance_id": instance_id, "steps": len(attempts), "attempts": sum(len(r) for r in attempts.values())}


CRASH_POINTS = ["committed:2", "committed:5", "before_launch:1", "before_launch:3", "step_done:1", "step_done:2",
                "backoff:1"]


def test_crash_battery(tmp_path):
    seed = int(os.environ.get("LEGATO_CRASH_SEED", "20261121"))
    rng = random.Random(seed)
    ledger = tmp_path / "ledger"
    ledger.touch()
    driver = Driver(tmp_path, rng)
    paths = {}
    for name, doc in workflows(str(ledger)).items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(doc))
    runs = []
    # named crash points first, each on every workflow it can hit, then random kills
    for point in CRASH_POINTS:
        for name in ("retry",) if point.startswith("backoff") else ("chain", "fan", "retry"):
            runs.append((name, f"{name}-{point}", point, 1))
    for i in range(6):
        for name in paths:
            runs.append((name, f"{name}-random-{i}", None, 2))
    totals = collections.Counter()
    for name, request_id, point, kills in runs:
        driver.drive(paths[name], request_id, crash_at=point, kills=kills)
    lines = ledger.read_text().split()
    for name, request_id, point, kills in runs:
        figures = check_instance(driver.db, request_id, lines)
        figures.pop("instance_id")
        totals.update(figures)
    totals["instances"] = len(runs)
    totals["crash_resume_cycles"] = driver.cycles
    totals["ledger_entries"] = len(lines)
    print(f"\ncrash battery (seed {seed}): {dict(totals)}", file=sys.stderr)
    assert driver.cycles >= 50, f"only {driver.cycles} crash-resume cycles"


def _wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_live_owner_keeps_its_instance_and_a_paused_one_is_fenced(tmp_path):
    ledger = tmp_path / "ledger"
    ledger.touch()
    doc = {"workflow": {"id": "slow", "params": {"ledger": str(ledger)}, "steps": [
        # attempt 1 outlasts everything below (the owner is paused meanwhile); attempt 2 is quick
        bash("a", ["b"], script='echo "$LEGATO_IDEMPOTENCY_KEY" >> "$ledger"; '
                                'case "$LEGATO_IDEMPOTENCY_KEY" in *:a:1) sleep 20;; esac'), bash("b")]}}
    path = tmp_path / "slow.json"
    path.write_text(json.dumps(doc))
    driver = Driver(tmp_path, random.Random(1))
    driver.env["LEGATO_LEASE_TTL"] = "4.0"  # heartbeats every 1.3 s keep it live even on a loaded machine
    owner = driver.launch(path, "req")
    try:
        _wait_for(lambda: ":a:1" in ledger.read_text(), what="step a to start")
        # a second worker is refused while the owner is alive, and runs nothing
        second = driver.launch(path, "req")
        out, err = second.communicate(timeout=60)
        assert second.returncode == 1 and "owned by another live worker" in err
        assert ledger.read_text().count(":a:") == 1
        # pause the owner past its lease: the second worker takes over and finishes the instance
        owner.send_signal(signal.SIGSTOP)
        _wait_for(lambda: _read(driver.db, "SELECT lease_expires < (julianday('now') - 2440587.5) * 86400.0 "
                                           "FROM legato_instances") == [(1,)], what="the paused owner's lease to expire")
        taker = driver.launch(path, "req")
        out, err = taker.communicate(timeout=60)
        assert taker.returncode == 0, err
    finally:
        owner.send_signal(signal.SIGCONT)
    out, err = owner.communicate(timeout=30)
    assert owner.returncode == 1
    assert "lost the lease" in err or "now owned by" in err
    conn = sqlite3.connect(driver.db)
    (instance_id, status, taker), = conn.execute("SELECT instance_id, status, owner FROM legato_instances").fetchall()
    assert taker in err, f"the message does not say who took the lease ({taker}): {err}"
    assert status == "SUCCEEDED"
    tries = conn.execute("SELECT attempt, status FROM legato_attempts WHERE step_id = 'a' ORDER BY attempt").fetchall()
    assert tries == [(1, "PLATFORM_FAILED"), (2, "SUCCEEDED")]
    # the woken owner's late result for attempt 1 was rejected, not written
    events = [s for (row,) in conn.execute(
        "SELECT status FROM legato_events WHERE step_id = 'a' AND attempt = 1 ORDER BY id")
        for s, _ in event_statuses(row)]
    assert events[-1] == "PLATFORM_FAILED" and "USER_FAILED" not in events and "SUCCEEDED" not in events
    check_instance(driver.db, "req", ledger.read_text().split())


def _read(db: Path, sql: str, *args) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _killed_after_the_first_commit(tmp_path: Path, doc: dict) -> tuple["Driver", Path]:
    """Write ``doc``, run it with `--request-id req` and SIGKILL the kernel right after its first
    commit (the crash point `committed:1`): the instance is IN_PROGRESS and owned by a dead worker."""
    path = tmp_path / f"{doc['workflow']['id']}.json"
    path.write_text(json.dumps(doc))
    driver = Driver(tmp_path, random.Random(1))
    first = driver.launch(path, "req", crash_at="committed:1")
    first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL
    return driver, path


def test_queued_steps_resume_with_their_config(tmp_path):
    """Steps queued behind the instance's own cap (instance_step_concurrency, counted in memory:
    no subworkflow shares it) when the worker died (WAITING_FOR_PERMITS) are prepared again on
    resume: their step type sees its validated config, as a fresh attempt does."""
    doc = {"workflow": {"id": "queued", "instance_step_concurrency": 1, "steps": [
        {"step": {"id": f"q{i}", "type": "sleep", "params": {"seconds": 0.05, "outputs": {"i": i}}}}
        for i in range(4)]}}
    # The first commit holds IN_PROGRESS, q0 STARTING and the other three WAITING_FOR_PERMITS.
    driver, path = _killed_after_the_first_commit(tmp_path, doc)
    queued = _read(driver.db, "SELECT step_id FROM legato_attempts WHERE status = 'WAITING_FOR_PERMITS'")
    assert len(queued) == 3, queued
    driver.drive(path, "req", kills=0)
    rows = _read(driver.db, "SELECT step_id, attempt, status, outputs, message FROM legato_attempts ORDER BY step_id, attempt")
    last = {sid: (status, json.loads(outputs), message) for sid, _, status, outputs, message in rows}
    assert last == {f"q{i}": ("SUCCEEDED", {"i": i}, "") for i in range(4)}, rows


def _lease_expired(db: Path) -> bool:
    """Whether the instance's lease has expired by the database's clock (what other workers see)."""
    (expired,), = _read(db, "SELECT lease_expires < (julianday('now') - 2440587.5) * 86400.0 FROM legato_instances")
    return bool(expired)


def test_a_paused_owner_that_nobody_replaced_renews_its_lease_and_carries_on(tmp_path):
    ledger = tmp_path / "ledger"
    ledger.touch()
    doc = {"workflow": {"id": "paused", "params": {"ledger": str(ledger)}, "steps": [
        bash("a", ["b"], script='echo "$LEGATO_IDEMPOTENCY_KEY" >> "$ledger"; sleep 1'), bash("b")]}}
    path = tmp_path / "paused.json"
    path.write_text(json.dumps(doc))
    driver = Driver(tmp_path, random.Random(1))
    driver.env["LEGATO_LEASE_TTL"] = "0.5"
    owner = driver.launch(path, "req")
    try:
        _wait_for(lambda: ":a:1" in ledger.read_text(), what="step a to start")
        owner.send_signal(signal.SIGSTOP)  # a long GC, a SIGSTOP: past the lease, nobody else around
        _wait_for(lambda: _lease_expired(driver.db), what="the lease to expire")
    finally:
        owner.send_signal(signal.SIGCONT)
    out, err = owner.communicate(timeout=60)
    assert owner.returncode == 0, err
    tries = _read(driver.db, "SELECT step_id, attempt, status FROM legato_attempts ORDER BY step_id, attempt")
    assert tries == [("a", 1, "SUCCEEDED"), ("b", 1, "SUCCEEDED")]
    check_instance(driver.db, "req", ledger.read_text().split())


def _held_by_a_killed_worker(tmp_path: Path):
    """A worker with the default 30 s lease, SIGKILLed while its step runs. PARALLEL: a second
    instance runs beside the dead one's."""
    ledger = tmp_path / "ledger"
    ledger.touch()
    doc = {"properties": {"run_strategy": "parallel"}, "workflow": {"id": "dead", "params": {"ledger": str(ledger)}, "steps": [
        bash("a", ["b"], script='echo "$LEGATO_IDEMPOTENCY_KEY" >> "$ledger"; [ "$LEGATO_ATTEMPT" -gt 1 ] || sleep 30'),
        bash("b")]}}
    path = tmp_path / "dead.json"
    path.write_text(json.dumps(doc))
    driver = Driver(tmp_path, random.Random(1))
    driver.env["LEGATO_LEASE_TTL"] = "30"
    owner = driver.launch(path, "req")
    _wait_for(lambda: ":a:1" in ledger.read_text(), what="step a to start")
    owner.kill()
    owner.wait()
    assert not _lease_expired(driver.db)
    return driver, path, ledger


def test_a_dead_owner_on_this_machine_frees_its_lease_at_once_for_run(tmp_path):
    driver, path, ledger = _held_by_a_killed_worker(tmp_path)
    proc = driver.launch(path, "req")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    tries = _read(driver.db, "SELECT step_id, attempt, status FROM legato_attempts ORDER BY step_id, attempt")
    assert tries[0] == ("a", 1, "PLATFORM_FAILED") and tries[-1] == ("b", 1, "SUCCEEDED"), tries


def test_resume_takes_a_dead_owners_instance_at_once_and_lists_what_live_owners_hold(tmp_path):
    driver, path, ledger = _held_by_a_killed_worker(tmp_path)
    ledger.write_text("")
    # A live worker holds a second instance.
    live = driver.launch(path, "other")
    try:
        _wait_for(lambda: ledger.read_text().count(":a:1") >= 1, what="the live worker's step to start")
        (live_id, live_owner), = _read(driver.db, "SELECT instance_id, owner FROM legato_instances "
                                       "WHERE request_id = 'other'")
        (dead_id,), = _read(driver.db, "SELECT instance_id FROM legato_instances WHERE request_id = 'req'")
        proc = subprocess.run([LEGATO, "resume", "--workspace", str(tmp_path / "runs")], env=driver.env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        text = proc.stdout + proc.stderr
        assert proc.returncode == 0, text
        assert _read(driver.db, "SELECT status FROM legato_instances WHERE instance_id = ?", dead_id) == [
            ("SUCCEEDED",)], text
        assert "nothing to resume" not in text
        assert live_id in text and live_owner in text and "lease expires in" in text, text
        assert f"pid {live.pid}" in text, text
    finally:
        live.kill()
        live.wait()


# -- values the kernel cannot convert never wedge an instance -------------------------------------

BIG = 99999999999999999999  # above 2**63


async def test_an_output_beyond_64_bits_fails_its_step_naming_the_key(run_doc):
    script = f"""echo '{{"n": {BIG}, "ok": 1}}' >> "$LEGATO_OUTPUT" """
    doc = {"workflow": {"id": "big-output", "steps": [
        {"step": {"id": "a", "type": "bash", "params": {"script": script}, "retry_policy": {"error_retry_limit": 1},
                  "transition": {"successors": {"b": "steps.a.outputs.n > 0"}}}},
        {"step": {"id": "b", "type": "noop"}}]}}
    ran = await run_doc(doc)
    assert ran.status == "FAILED"
    assert ran.tries("a") == ["USER_FAILED", "FATALLY_FAILED"]  # a user error: its retry policy applies
    assert "output 'n'" in ran.last["a"].message and str(BIG) in ran.last["a"].message, ran.last["a"].message
    assert ran.last["a"].outputs == {}
    assert "b" not in ran.last


async def test_a_value_stored_before_the_checks_cannot_wedge_an_instance(engine):
    """An instance whose store holds an output CEL cannot take (written by an older Legato)
    resumes: the condition that reads it fails, located, and the instance ends FAILED saying so.
    The source's SUCCEEDED is durable, so the instance carries the blame (a live run makes the
    source INTERNALLY_FAILED); the target is never created."""
    from legato.model import AttemptRecord, Batch
    from legato.states import InstanceStatus, StepStatus

    doc = {"workflow": {"id": "wedge", "steps": [
        {"step": {"id": "a", "type": "noop", "transition": {"successors": {"b": "steps.a.outputs.n > 0"}}}},
        {"step": {"id": "b", "type": "noop", "transition": {"successors": {"c": "true"}}}},
        {"step": {"id": "c", "type": "noop"}}]}}
    definition = engine.load(doc)
    instance, _ = await engine.start(definition)
    instance.status = InstanceStatus.IN_PROGRESS
    await engine.storage.commit(Batch(instance.instance_id, 1, instance=instance, attempts={("a", 1): AttemptRecord(
        instance.instance_id, "a", 1, StepStatus.SUCCEEDED, params={}, outputs={"n": BIG}, created_at=1.0)}))
    final = await engine.resume(instance.instance_id)
    assert final.status.value == "FAILED"
    attempts = {a.step_id: a for a in await engine.storage.get_attempts(instance.instance_id)}
    assert attempts["a"].status.value == "SUCCEEDED"
    assert final.message.startswith("/workflow/steps/0/step/transition/successors/b: condition failed"), final.message
    assert "b" not in attempts and "c" not in attempts


def test_a_param_beyond_64_bits_is_a_start_error_naming_it(tmp_path):
    doc = {"workflow": {"id": "big-param", "params": {"x": {"type": "LONG", "value": 1}, "m": {}}, "steps": [
        {"step": {"id": "a", "type": "noop"}}]}}
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(doc))
    env = {**os.environ, "LEGATO_STORE": f"sqlite:///{tmp_path / 'legato.db'}"}
    for param, words in ((f"x={BIG}", str(BIG)), ("x=1e20", "100000000000000000000"),
                         (f'm={{"deep": [{BIG}]}}', "/deep/0")):
        proc = subprocess.run([LEGATO, "run", str(path), "-p", param, "--workspace", str(tmp_path / "runs")],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (param, proc.stdout, proc.stderr)
        assert f"param {param[0]}" in proc.stderr and words in proc.stderr and "64-bit" in proc.stderr, proc.stderr
        assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
    assert _read(tmp_path / "legato.db", "SELECT count(*) FROM legato_instances") == [(0,)]


class FollowParams(pydantic.BaseModel):
    seconds: float = 0.0


class Follow(StepType):
    """A step type that can reattach, and reads its config when it does."""

    name = "follow"
    Params = FollowParams
    can_reattach = True
    seen: list = []

    async def run(self, ctx):  # pragma: no cover - only reattached here
        raise AssertionError("a reattachable attempt with a handle must not run again")

    async def reattach(self, ctx, handle):
        type(self).seen.append((handle, ctx.config))
        return StepResult.done({"seconds": ctx.config.seconds})


class _FollowPlugin:
    @staticmethod
    @hookimpl
    def legato_register_step_types(registry):
        registry.add(Follow)


async def test_reattached_steps_resume_with_their_config(tmp_path):
    """An attempt that was RUNNING (its handle recorded) is followed on resume with the same
    validated config as the run that started it."""
    from legato.engine import Engine
    from legato.model import AttemptRecord, Batch
    from legato.plugin_manager import Plugins
    from legato.plugins.memory import MemoryStorage
    from legato.states import InstanceStatus, StepStatus

    engine = Engine(MemoryStorage(), plugins=Plugins(extra=[_FollowPlugin]), workspace=tmp_path / "runs")
    definition = engine.load({"workflow": {"id": "follow", "steps": [
        {"step": {"id": "a", "type": "follow", "params": {"seconds": 2}}}]}})
    instance, _ = await engine.start(definition)
    instance.status = InstanceStatus.IN_PROGRESS
    await engine.storage.commit(Batch(instance.instance_id, 1, instance=instance, attempts={("a", 1): AttemptRecord(
        instance.instance_id, "a", 1, StepStatus.RUNNING, params={"seconds": 2}, created_at=1.0, handle={"id": 7})}))
    await engine.storage.release_lease(instance.instance_id, engine.owner)
    final = await engine.resume(instance.instance_id)
    assert final.status.value == "SUCCEEDED"
    [(handle, config)] = Follow.seen
    assert handle == {"id": 7} and config is not None and config.seconds == 2.0


class Hang(StepType):
    """A step type that reattaches to work that never ends."""

    name = "hang"
    can_reattach = True

    async def run(self, ctx):  # pragma: no cover - only reattached here
        raise AssertionError("a reattachable attempt with a handle must not run again")

    async def reattach(self, ctx, handle):
        await trio.sleep_forever()


class _HangPlugin:
    @staticmethod
    @hookimpl
    def legato_register_step_types(registry):
        registry.add(Hang)


async def test_a_reattached_step_keeps_the_timeout_it_started_with(tmp_path):
    """The step's timeout counts from its STARTING, in the process that started it: a resumed
    attempt whose timeout has already passed times out at once, not a whole timeout later."""
    import time

    from legato.engine import Engine
    from legato.model import AttemptRecord, Batch
    from legato.plugin_manager import Plugins
    from legato.plugins.memory import MemoryStorage
    from legato.states import InstanceStatus, StepStatus

    engine = Engine(MemoryStorage(), plugins=Plugins(extra=[_HangPlugin]), workspace=tmp_path / "runs")
    definition = engine.load({"workflow": {"id": "hang", "steps": [
        {"step": {"id": "a", "type": "hang", "timeout": "1h"}}]}})
    instance, _ = await engine.start(definition)
    instance.status = InstanceStatus.IN_PROGRESS
    started = time.time() - 3601
    await engine.storage.commit(Batch(instance.instance_id, 1, instance=instance, attempts={("a", 1): AttemptRecord(
        instance.instance_id, "a", 1, StepStatus.RUNNING, params={}, created_at=started, started_at=started,
        handle={"id": 1})}))
    await engine.storage.release_lease(instance.instance_id, engine.owner)
    final = await engine.resume(instance.instance_id)
    attempts = await engine.storage.get_attempts(instance.instance_id)
    assert final.status.value == "TIMED_OUT", [(a.status.value, a.message) for a in attempts]
    assert attempts[-1].status.value == "TIMED_OUT" and "timed out after 3600s" in attempts[-1].message


async def test_a_heartbeat_that_cannot_reach_the_store_keeps_the_lease_nobody_took(tmp_path, plugins):
    """Renewals that fail (the database locked, unreachable for a while) are retried; the lease
    is lost only if another worker took it, so the run carries on and ends normally."""
    from legato.engine import Engine
    from legato.plugins.memory import MemoryStorage
    from legato.storage import StorageError

    class Flaky(MemoryStorage):
        failures = 0

        async def acquire_lease(self, instance_id, owner, ttl, generation=None):
            if generation is not None and self.failures < 4:  # the heartbeat's renewals
                self.failures += 1
                raise StorageError("the database is locked")
            return await super().acquire_lease(instance_id, owner, ttl, generation)

    storage = Flaky()
    engine = Engine(storage, plugins=plugins, workspace=tmp_path / "runs", lease_ttl=0.3)
    definition = engine.load({"workflow": {"id": "hb", "steps": [
        {"step": {"id": "a", "type": "sleep", "params": {"seconds": 1.5}}}]}})
    final = await engine.execute(definition)
    assert storage.failures == 4
    assert final.status.value == "SUCCEEDED"


async def test_a_run_paused_past_its_lease_and_taken_over_never_launches_its_next_step(tmp_path, plugins):
    """A worker frozen (SIGSTOP, a suspended machine) longer than its lease, whose instance another
    worker took over meanwhile, wakes with a step about to launch: it checks its lease first
    (Ownership.confirm_lease, as it was last renewed over half a TTL ago), finds it gone and ends
    the run, so the step's work never starts twice (the new owner runs that attempt again)."""
    from legato.engine import Engine
    from legato.plugins.memory import MemoryStorage
    from legato.storage import StaleWrite

    runs = []

    class FreezesAfterStarting(MemoryStorage):
        async def commit(self, batch):
            await super().commit(batch)
            if any(k == "probe" and r.status.value == "STARTING" for (k, _), r in batch.attempts.items()):
                # Frozen right after this commit, past its lease, while another worker took over:
                runs[0].renewed_at -= 2 * engine.lease_ttl
                _, _, generation, who = self._leases[batch.instance_id]
                self._leases[batch.instance_id] = ("other-worker", time.monotonic() + 60, generation + 1, who)

    storage = FreezesAfterStarting()
    engine = Engine(storage, plugins=plugins, workspace=tmp_path / "runs")
    marker = tmp_path / "launched"
    definition = engine.load({"workflow": {"id": "frozen", "params": {"MARK": str(marker)}, "steps": [
        {"step": {"id": "gate", "type": "sleep", "params": {"seconds": 0.2},
                  "transition": {"successors": {"probe": "true"}}}},
        {"step": {"id": "probe", "type": "bash", "params": {"script": 'touch "$MARK"'}}}]}})
    record, _ = await engine.start(definition)
    lost = []
    try:
        async with trio.open_nursery() as nursery:
            runs.append(await nursery.start(engine.run, definition, record))
    except* StaleWrite as group:
        lost = group.exceptions
    assert lost, "the run went on after its instance was taken over"
    assert not marker.exists(), "the step launched after the lease was lost: its attempt runs twice"
    attempts = {a.step_id: a.status.value for a in await storage.get_attempts(record.instance_id)}
    assert attempts.get("gate") == "SUCCEEDED" and attempts.get("probe") != "SUCCEEDED", attempts


def test_resume_skips_an_instance_another_worker_took_after_the_list_was_read(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from legato.cli import main
    from legato.plugins.sqlstore.store import SqlStorage

    driver, path, ledger = _held_by_a_killed_worker(tmp_path)
    ledger.write_text("")
    live = driver.launch(path, "other")  # a live worker, holding its instance
    try:
        _wait_for(lambda: ":a:1" in ledger.read_text(), what="the live worker's step to start")
        (live_id,), = _read(driver.db, "SELECT instance_id FROM legato_instances WHERE request_id = 'other'")

        async def everything_unfinished(self, limit=100):  # as if the live worker took it just after
            return [r for r in await self.list_instances(limit=limit) if not r.status.terminal][::-1]

        monkeypatch.setattr(SqlStorage, "list_resumable", everything_unfinished)
        monkeypatch.setenv("LEGATO_STORE", driver.env["LEGATO_STORE"])
        result = CliRunner().invoke(main, ["resume", "--workspace", str(tmp_path / "runs")])
        assert result.exit_code == 0, result.output
        assert "internal error" not in result.output and live_id in result.output, result.output
        statuses = dict(_read(driver.db, "SELECT request_id, status FROM legato_instances"))
        assert statuses == {"req": "SUCCEEDED", "other": "IN_PROGRESS"}, statuses
    finally:
        live.kill()
        live.wait()


def test_an_instance_whose_stored_definition_no_longer_loads_is_named_not_a_crash(tmp_path):
    """Resume of an instance whose pinned definition fails today's validation (a step type that
    is no longer installed, a rule grown stricter) is exit 2 naming the instance, the place and
    what to do; the instance is left as it was, and resuming everything else goes on."""
    doc = {"workflow": {"id": "stale", "steps": [{"step": {"id": "a", "type": "noop"}}]}}
    driver, path = _killed_after_the_first_commit(tmp_path, doc)
    doc["workflow"]["steps"][0]["step"]["type"] = "uninstalled"
    conn = sqlite3.connect(driver.db)
    with conn:
        conn.execute("UPDATE legato_definition_versions SET document = ?", (json.dumps(doc),))
    conn.close()
    (iid,), = _read(driver.db, "SELECT instance_id FROM legato_instances")
    for args in (["resume", iid], ["resume"]):
        proc = subprocess.run([LEGATO, *args, "--workspace", str(tmp_path / "runs")], env=driver.env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
        assert f"instance {iid} not resumed: its definition (stale v1) no longer loads here: " in proc.stderr
        assert "/workflow/steps/0/step/type" in proc.stderr and "Install the plugins it needs" in proc.stderr
    assert _read(driver.db, "SELECT status FROM legato_instances") == [("IN_PROGRESS",)]
