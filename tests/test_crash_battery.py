"""The crash battery of issue 8 (DESIGN §10): hundreds of SIGKILLs at random moments across a
workflow of bash, noop, sleep and docker steps (a fan-out under ``step_concurrency``, a join, a
branch with an UNSATISFIED arm), each instance driven with ``legato run --request-id`` on SQLite
until it ends.

What must hold: every instance ends SUCCEEDED (its UNSATISFIED arm UNSATISFIED); no step
succeeded twice; no attempt ran twice (bash steps append their idempotency key to a ledger); no
container ran twice (the docker step appends its key to a ledger in a bind mount the operator
allows through ``--settings``: exactly one entry per instance, the succeeded attempt's); nothing
leaked (no container labelled with one of the battery's instances, no process carrying one's
``LEGATO_INSTANCE_ID``). Each kernel dies with SIGKILL while the next is started at once: its
lease, held by a dead process on this machine, is free at once (no waiting out its 30 s).

Kernels are forked from a server that imported Legato once (tests/forkserver.py), so the
battery's time goes to crashing and resuming, not to imports. ``LEGATO_BATTERY_SCALE`` (default
1: 200 kills, about 2-3 minutes here) multiplies the number of kills; ``LEGATO_CRASH_SEED`` picks
the random moments. Run with ``-s`` to see the figures.

Two smaller batteries (no Docker) kill kernels the same way across loops (foreach, nested
foreach, while) and subworkflows (sync children running inside the parent's process, one per
foreach iteration, and an async one), each about half a minute at scale 1.
"""

from __future__ import annotations

import collections
import json
import os
import random
import select
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from .conftest import IMAGE, ROOT, alive, docker_problem, require_component
from .test_recovery import RETRIES, WORK, bash, check_instance, connect_store

KILLS = 200
#: Kills each instance takes before it is let run to its end: a few, so that every instance
#: crashes in several places, and many instances cover many moments.
KILLS_PER_INSTANCE = (2, 6)
#: A kill comes this long (uniformly, seconds) after its kernel was forked; an undisturbed
#: instance takes about 1-2 s, so kills land everywhere from start-up to the last commit.
KILL_AFTER = (0.02, 0.8)
HANG = 300  # seconds an undisturbed run may take before the battery calls it hung
BOX = 'echo "$LEGATO_IDEMPOTENCY_KEY" >> /ledger/docker; sleep 0.2; echo "k=$LEGATO_STEP_ID" >> "$LEGATO_OUTPUT"'


def storm(ledger: Path, dock: Path) -> dict:
    docker = {"step": {"id": "box", "type": "docker", "retry_policy": RETRIES, "params": {
        "image": IMAGE, "pull": "never", "command": ["sh", "-c", BOX],
        "mounts": [{"source": str(dock), "target": "/ledger", "read_only": False}]},
        "transition": {"successors": {"join": "steps.box.outputs.k == 'box'"}}}}
    return {"properties": {"step_concurrency": 2}, "workflow": {"id": "storm", "params": {"ledger": str(ledger)},
        "steps": [
            bash("root", ["f_bash", "f_noop", "f_sleep", "box"]),
            bash("f_bash", ["join"]),
            {"step": {"id": "f_noop", "type": "noop", "params": {"outputs": {"n": 1}},
                      "transition": {"successors": ["join"]}}},
            {"step": {"id": "f_sleep", "type": "sleep", "params": {"seconds": 0.15}, "retry_policy": RETRIES,
                      "transition": {"successors": ["join"]}}},
            docker,
            {"step": {"id": "join", "type": "bash", "params": {"script": WORK}, "retry_policy": RETRIES,
                      "transition": {"successors": {"yes": "steps.join.outputs.done == 'join'",
                                                    "no": "steps.join.outputs.done != 'join'"}}}},
            {"step": {"id": "yes", "type": "noop", "transition": {"successors": ["end"]}}},
            {"step": {"id": "no", "type": "noop", "transition": {"successors": ["end"]}}},
            bash("end"),
        ]}}


LEDGERED = {"root", "f_bash", "join", "end"}


class ForkServer:
    """Drives tests/forkserver.py: one forked ``legato`` process at a time."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "forkserver.py")], cwd=tmp, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def _answer(self, timeout: float | None) -> dict | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        assert line, "the fork server died"
        return json.loads(line)

    def run(self, argv: list[str], log: Path, kill_after: float | None) -> int:
        """Run ``legato argv``; SIGKILL it after ``kill_after`` seconds if it still runs. Its exit
        code. Without ``kill_after`` it must end by itself (HANG seconds is a hang, not slowness)."""
        limit = HANG if kill_after is None else kill_after
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log), "kill_after": limit}) + "\n")
        self.proc.stdin.flush()
        pid = self._answer(60)["pid"]
        answer = self._answer(limit + 60)
        assert answer is not None and answer["pid"] == pid, answer
        assert kill_after is not None or not answer["killed"], f"legato {' '.join(argv)} hung:\n{log.read_text()}"
        return answer["exit"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _containers_of(instances: set[str]) -> list:
    import docker

    client = docker.from_env(timeout=30)
    found = client.containers.list(all=True, filters={"label": "legato=1"}, ignore_removed=True)
    return [c for c in found if c.labels.get("legato.instance") in instances]


def _processes_left(db) -> list[str]:
    """The process groups the battery's bash steps recorded (their handles) that still have a
    live member carrying one of its attempts' idempotency keys."""
    conn = connect_store(db)
    rows = conn.execute("SELECT instance_id, step_id, attempt, handle FROM legato_attempts "
                        "WHERE handle LIKE '%pgid%'").fetchall()
    conn.close()
    left = []
    for iid, sid, attempt, handle in rows:
        pgid = json.loads(handle)["pgid"]
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            continue  # the group is empty
        key = f"LEGATO_IDEMPOTENCY_KEY={iid}:{sid}:{attempt}".encode()
        for entry in os.listdir("/proc"):  # only members of that group are read
            try:
                if not entry.isdigit() or os.getpgid(int(entry)) != pgid or not alive(int(entry)):
                    continue
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if key in f.read().split(b"\0"):
                        left.append(f"{iid}:{sid}:{attempt} pid {entry}")
            except OSError:
                continue
    return left


def test_crash_battery_kill_9_storm(tmp_path):
    db = tmp_path / "legato.db"
    storm_battery(tmp_path, f"sqlite:///{db}", db)


def storm_battery(tmp_path: Path, url: str, db, kills_scale: float = 1.0) -> None:
    """test_crash_battery_kill_9_storm on the store ``url``, read back directly through ``db`` (a
    SQLite file or a postgresql:// URL: tests/test_recovery.connect_store)."""
    require_component("Docker", docker_problem())
    scale = float(os.environ.get("LEGATO_BATTERY_SCALE", "1")) * kills_scale
    seed = int(os.environ.get("LEGATO_CRASH_SEED", "20261201"))
    rng = random.Random(seed)
    target = max(1, round(KILLS * scale))
    ledger, dock = tmp_path / "ledger", tmp_path / "dock"
    dock.mkdir()
    ledger.touch()
    (dock / "docker").touch()
    definition = tmp_path / "storm.json"
    definition.write_text(json.dumps(storm(ledger, dock)))
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"docker": {"allowed_mounts": [str(dock)]}}))
    env = {**os.environ, "LEGATO_STORE": url, "LEGATO_SETTINGS": str(settings)}
    env.pop("LEGATO_LEASE_TTL", None)  # the default 30 s: a dead kernel's lease must be free at once anyway
    env.pop("LEGATO_CRASH_AT", None)
    server = ForkServer(tmp_path, env)
    logs = tmp_path / "logs"
    logs.mkdir()
    kills = cycles = 0
    request_ids: list[str] = []
    started = time.monotonic()
    try:
        while kills < target:
            request_id = f"storm-{len(request_ids)}"
            request_ids.append(request_id)
            quota = rng.randint(*KILLS_PER_INSTANCE)
            argv = ["run", str(definition), "--request-id", request_id, "--workspace", str(tmp_path / "runs")]
            for n in range(100):
                cycles += 1
                log = logs / f"{request_id}.{n}.log"
                kill_after = rng.uniform(*KILL_AFTER) if quota > 0 else None
                code = server.run(argv, log, kill_after)
                if code == -9:
                    kills += 1
                    quota -= 1
                    continue
                assert code == 0, f"{request_id}: legato exited {code}:\n{log.read_text()}"
                break
            else:
                raise AssertionError(f"{request_id} never ended")
    finally:
        server.close()
    elapsed = time.monotonic() - started

    lines = ledger.read_text().split()
    boxes = collections.Counter((dock / "docker").read_text().split())
    totals: collections.Counter = collections.Counter()
    instances = set()
    for request_id in request_ids:
        figures = check_instance(db, request_id, lines, final={"no": "UNSATISFIED"}, ledgered=LEDGERED)
        iid = figures.pop("instance_id")
        instances.add(iid)
        totals.update(figures)
        ran = {key: n for key, n in boxes.items() if key.startswith(f"{iid}:box:")}
        conn = connect_store(db)
        (last,), = conn.execute("SELECT max(attempt) FROM legato_attempts WHERE instance_id = ? AND step_id = 'box'",
                                (iid,)).fetchall()
        conn.close()
        assert ran == {f"{iid}:box:{last}": 1}, f"{request_id}: the docker step's containers ran {ran}"
    conn = connect_store(db)
    statuses = collections.Counter(dict(conn.execute("SELECT status, count(*) FROM legato_attempts GROUP BY status")))
    (reattached,), = conn.execute("SELECT count(*) FROM legato_logs WHERE text LIKE '[legato] reattached to container%'")
    conn.close()
    assert not _containers_of(instances), "containers were left behind"
    assert not (left := _processes_left(db)), f"processes were left behind: {left}"
    print(f"\ncrash battery kill -9 storm (seed {seed}, scale {scale:g}): {kills} kills, {cycles} cycles, "
          f"{len(request_ids)} instances, {totals['steps']} steps, {totals['attempts']} attempts, "
          f"{len(lines)} bash and {sum(boxes.values())} container runs, {reattached} reattaches to a container, "
          f"{statuses['PLATFORM_FAILED']} attempts ended PLATFORM_FAILED by a crash, {elapsed:.0f}s")
    assert kills >= target


LOOP_KILLS = 60
#: The bash steps inside the loops' bodies: each appends its key to the ledger.
LOOP_LEDGERED = {"b", "w", "end"}


def loops_storm(ledger: Path) -> dict:
    """A 3×2 foreach (concurrency 2) whose body is a bash step then a noop, a nested foreach, then
    a while that counts to 3 through its body's outputs, then a bash step."""
    def arr(kind, values):
        return {"type": kind, "value": values}

    feed = WORK + '; echo "{\\"n\\": $((n + 1))}" >> "$LEGATO_OUTPUT"'
    return {"properties": {"step_concurrency": 3}, "workflow": {"id": "loops", "params": {"ledger": str(ledger)},
        "steps": [
            {"foreach": {"id": "fe", "concurrency": 2, "transition": {"successors": ["outer"]},
                         "params": {"loop_params": {"type": "MAP", "value": {
                             "i": arr("LONG_ARRAY", [1, 2, 3]), "j": arr("STRING_ARRAY", ["x", "y"])}}},
                         "steps": [bash("b", ["c"]), {"step": {"id": "c", "type": "noop"}}]}},
            {"foreach": {"id": "outer", "concurrency": 2, "transition": {"successors": ["wh"]},
                         "params": {"loop_params": {"type": "MAP", "value": {"k": arr("LONG_ARRAY", [1, 2])}}},
                         "steps": [{"foreach": {"id": "inner", "concurrency": 2, "params": {"loop_params": {
                             "type": "MAP", "value": {"m": arr("LONG_ARRAY", [1, 2])}}},
                             "steps": [{"step": {"id": "leaf", "type": "sleep", "params": {"seconds": 0.05}}}]}}]}},
            {"while": {"id": "wh", "condition": "n < 3", "transition": {"successors": ["end"]},
                       "params": {"loop_params": {"type": "MAP", "value": {"n": {"type": "LONG", "value": 0}}}},
                       "steps": [bash("w", script=feed)]}},
            bash("end"),
        ]}}


def test_crash_battery_loops(tmp_path):
    """SIGKILLs at random moments across foreach, nested foreach and while steps: every instance
    ends SUCCEEDED with every iteration SUCCEEDED once; no attempt in a loop's body ran twice; a
    resumed loop never ran a finished iteration again (each iteration's bash step has exactly one
    succeeded attempt, and the ledger one run per attempt recorded)."""
    db = tmp_path / "legato.db"
    loops_battery(tmp_path, f"sqlite:///{db}", db)


def loops_battery(tmp_path: Path, url: str, db, kills_scale: float = 1.0) -> None:
    """test_crash_battery_loops on the store ``url``, read back directly through ``db`` (a SQLite
    file or a postgresql:// URL: tests/test_recovery.connect_store)."""
    scale = float(os.environ.get("LEGATO_BATTERY_SCALE", "1")) * kills_scale
    rng = random.Random(int(os.environ.get("LEGATO_CRASH_SEED", "20261202")))
    target = max(1, round(LOOP_KILLS * scale))
    ledger = tmp_path / "ledger"
    ledger.touch()
    definition = tmp_path / "loops.json"
    definition.write_text(json.dumps(loops_storm(ledger)))
    env = {**os.environ, "LEGATO_STORE": url}
    env.pop("LEGATO_LEASE_TTL", None)
    env.pop("LEGATO_CRASH_AT", None)
    server = ForkServer(tmp_path, env)
    logs = tmp_path / "logs"
    logs.mkdir()
    kills = 0
    request_ids: list[str] = []
    try:
        while kills < target:
            request_id = f"loops-{len(request_ids)}"
            request_ids.append(request_id)
            quota = rng.randint(*KILLS_PER_INSTANCE)
            argv = ["run", str(definition), "--request-id", request_id, "--workspace", str(tmp_path / "runs")]
            for n in range(100):
                log = logs / f"{request_id}.{n}.log"
                code = server.run(argv, log, rng.uniform(0.02, 1.0) if quota > 0 else None)
                if code == -9:
                    kills += 1
                    quota -= 1
                    continue
                assert code == 0, f"{request_id}: legato exited {code}:\n{log.read_text()}"
                break
            else:
                raise AssertionError(f"{request_id} never ended")
    finally:
        server.close()
    lines = ledger.read_text().split()
    conn = connect_store(db)
    for request_id in request_ids:
        (iid,), = conn.execute("SELECT instance_id FROM legato_instances WHERE request_id = ?", (request_id,)).fetchall()
        steps = [sid for (sid,) in conn.execute("SELECT DISTINCT step_id FROM legato_attempts WHERE instance_id = ?",
                                                (iid,))]
        iterations = sorted(s for s in steps if s.rpartition("/")[2].isdigit())
        assert iterations == sorted(["fe/1", "fe/2", "fe/3", "fe/4", "fe/5", "fe/6", "outer/1", "outer/2",
                                     "outer/1/inner/1", "outer/1/inner/2", "outer/2/inner/1", "outer/2/inner/2",
                                     "wh/1", "wh/2", "wh/3"]), f"{request_id}: iterations {iterations}"
        ledgered = {s for s in steps if s.rpartition("/")[2] in LOOP_LEDGERED}
        check_instance(db, request_id, lines, ledgered=ledgered)
        (outputs,), = conn.execute("SELECT outputs FROM legato_attempts WHERE instance_id = ? AND step_id = 'wh'",
                                   (iid,)).fetchall()
        assert json.loads(outputs)["loop_params"] == {"n": 3}, f"{request_id}: {outputs}"
    conn.close()
    print(f"\ncrash battery, loops (scale {scale:g}, {url.split(':')[0]}): {kills} kills, {len(request_ids)} instances, "
          f"{len(lines)} bash runs in loop bodies and after them")
    assert kills >= target



SUB_KILLS = 40
#: The parent's subworkflow steps (each foreach iteration's its own) -> whether each is sync.
SUBWORKFLOW_STEPS = {"s": True, "fe/1/fs": True, "fe/2/fs": True, "fe/3/fs": True, "as": False}


def _instance_of(db: Path, request_id: str) -> bool:
    conn = sqlite3.connect(db)
    try:
        return bool(conn.execute("SELECT 1 FROM legato_instances WHERE request_id = ?", (request_id,)).fetchall())
    finally:
        conn.close()


def test_crash_battery_subworkflows(tmp_path):
    """SIGKILLs at random moments while a parent runs sync subworkflows (one alone, one in each
    of a foreach's three iterations, two at once) and starts an async one
    (tests/test_subworkflow.crash_workflows); the sync children run inside the parent's process
    and die with it. Each parent is run again with ``legato run --request-id`` until it ends,
    then ``legato resume`` (killed at random too) runs the queued async children.

    What must hold (Maestro's SubworkflowStepRuntime: one child per step, its request id
    deduplicating the start): every parent ends SUCCEEDED; each of its subworkflow steps (each
    iteration's) has exactly one child, started by the step's succeeded attempt and named by its
    outputs; every child ends SUCCEEDED; no attempt in a parent or a child ran twice; no process
    of theirs was left running (tests/test_subworkflow.check_parent)."""
    from .test_subworkflow import check_parent, crash_workflows

    scale = float(os.environ.get("LEGATO_BATTERY_SCALE", "1"))
    rng = random.Random(int(os.environ.get("LEGATO_CRASH_SEED", "20261203")))
    target = max(1, round(SUB_KILLS * scale))
    ledger = tmp_path / "ledger"
    ledger.touch()
    child, parent = crash_workflows(ledger)
    (tmp_path / "kid.json").write_text(json.dumps(child))
    definition = tmp_path / "subs.json"
    definition.write_text(json.dumps(parent))
    db = tmp_path / "legato.db"
    env = {**os.environ, "LEGATO_STORE": f"sqlite:///{db}"}
    env.pop("LEGATO_LEASE_TTL", None)  # the default 30 s: a dead kernel's lease (and its children's) is free at once
    env.pop("LEGATO_CRASH_AT", None)
    server = ForkServer(tmp_path, env)
    logs = tmp_path / "logs"
    logs.mkdir()
    workspace = ["--workspace", str(tmp_path / "runs")]
    kills = 0
    request_ids: list[str] = []
    by_resume: list[str] = []  # parents `legato resume` took on
    started = time.monotonic()

    def drive(name: str, argv: list[str], quota: int, then: list[str] | None = None) -> None:
        """``legato argv`` killed ``quota`` times (an undisturbed parent takes about 0.7 s), then
        run to its end; once the instance ``name`` exists, ``legato then`` instead, if given."""
        nonlocal kills
        for n in range(100):
            log = logs / f"{name}.{n}.log"
            code = server.run(argv, log, rng.uniform(0.02, 0.9) if quota > 0 else None)
            if code == -9:
                kills += 1
                quota -= 1
                if then and argv is not then and _instance_of(db, name):
                    argv = then
                    by_resume.append(name)
                continue
            assert code == 0, f"{name}: legato exited {code}:\n{log.read_text()}"
            return
        raise AssertionError(f"{name} never ended")

    try:
        assert server.run(["push", str(tmp_path / "kid.json")], logs / "push.log", None) == 0, (
            logs / "push.log").read_text()
        while kills < target:
            request_id = f"subs-{len(request_ids)}"
            request_ids.append(request_id)
            # A third of the parents are taken on by `legato resume` (every unfinished instance,
            # the parent's children listed beside it) once a kill has left them in the store.
            drive(request_id, ["run", str(definition), "--request-id", request_id, *workspace],
                  rng.randint(*KILLS_PER_INSTANCE), ["resume", *workspace] if rng.random() < 1 / 3 else None)
        drive("resume", ["resume", *workspace], rng.randint(*KILLS_PER_INSTANCE))
    finally:
        server.close()
    elapsed = time.monotonic() - started

    lines = ledger.read_text().split()
    totals: collections.Counter = collections.Counter()
    for request_id in request_ids:
        totals.update(check_parent(db, request_id, lines, SUBWORKFLOW_STEPS))
    conn = sqlite3.connect(db)
    (instances,), = conn.execute("SELECT count(*) FROM legato_instances").fetchall()
    conn.close()
    assert instances == len(request_ids) * (1 + len(SUBWORKFLOW_STEPS)), f"{instances} instances in the store"
    assert not (left := _processes_left(db)), f"processes were left behind: {left}"
    print(f"\ncrash battery, subworkflows (scale {scale:g}): {kills} kills, {len(request_ids)} parents "
          f"({len(by_resume)} taken on by legato resume), "
          f"{totals['children']} children, {totals['child_attempts']} attempts in children, "
          f"{len(lines)} bash runs, {elapsed:.0f}s")
    assert kills >= target
