"""The ``docker`` step type through a real Docker engine and the real kernel.

Needs a Docker engine that answers and the image ``legato-test/busybox:1`` (``bash scripts/engines
install`` provides both, without any registry); otherwise every test skips saying why (and fails
under CI, where LEGATO_REQUIRE_COMPONENTS=1). After each test no container labelled ``legato=1``
may remain, running or stopped.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import trio

from legato import StepContext
from legato.conformance import StepTypeSuite
from legato.definition import DefinitionError
from legato.engine import Engine
from legato.storage import open_storage

from .conftest import IMAGE, LEGATO, docker_problem, fatal_as, require_component

FAST = {"error_retry_limit": 0, "platform_retry_limit": 0}


def client():
    import docker

    return docker.from_env(timeout=30)


def ours(**labels) -> list:
    """Every container labelled legato=1 (and ``labels``), running or stopped. One removed while
    the list is read (another test's, being released) is gone, not an error."""
    filters = ["legato=1", *(f"{k.replace('_', '.')}={v}" for k, v in labels.items())]
    return client().containers.list(all=True, filters={"label": filters}, ignore_removed=True)


@pytest.fixture(autouse=True)
def _no_container_left():
    """Every test leaves no Legato container behind, running or stopped."""
    if docker_problem() is not None:
        yield
        return
    before = {c.id for c in ours()}
    yield
    deadline = time.monotonic() + 15  # removal may trail the test's end on a busy machine
    left = [c for c in ours() if c.id not in before]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [c for c in ours() if c.id not in before]
    for c in left:  # clean up, so one failure does not cascade into the next tests
        c.remove(force=True)
    assert not left, f"containers left behind: {[(c.short_id, c.status, c.labels) for c in left]}"


#: Tests that need no engine (definitions refused when they load).
NO_ENGINE = {"test_invalid_params_are_refused_at_load", "test_the_operator_chooses_the_docker_engine"}


@pytest.fixture(autouse=True)
def _docker(request):
    if request.function.__name__ not in NO_ENGINE:
        require_component("Docker", docker_problem())


# -- harness -----------------------------------------------------------------------------------


def workflow(params: dict, *, wf_params: dict | None = None, retry: dict | None = None, sid: str = "s",
             **step_fields) -> dict:
    step = {"id": sid, "type": "docker", "params": {"image": IMAGE, **params}, "retry_policy": retry or FAST,
            **step_fields}
    body = {"id": "docker-test", "steps": [{"step": step}]}
    if wf_params:
        body["params"] = wf_params
    return {"workflow": body}


def make_engine(tmp_path: Path, settings: dict | None = None) -> Engine:
    return Engine(open_storage("memory://"), workspace=tmp_path / "runs",
                  step_settings={"docker": settings} if settings else None)


class Ran:
    def __init__(self, engine, instance, attempts, logs) -> None:
        self.engine = engine
        self.instance = instance
        self.attempts = attempts
        self.last = attempts[-1] if attempts else None
        self.logs = logs

    def log(self, stream: str | None = None) -> str:
        return "".join(c.text for c in self.logs if stream is None or c.stream == stream)

    def attempt_dir(self, attempt: int = 1, sid: str = "s") -> Path:
        return self.engine.workspace / self.instance.instance_id / ".legato" / f"{sid}.{attempt}"


async def execute(tmp_path: Path, doc: dict, settings: dict | None = None) -> Ran:
    engine = make_engine(tmp_path, settings)
    instance = await engine.execute(engine.load(doc))
    storage = engine.storage
    attempts = sorted(await storage.get_attempts(instance.instance_id), key=lambda a: (a.step_id, a.attempt))
    return Ran(engine, instance, attempts, await storage.get_logs(instance.instance_id))


# -- running -----------------------------------------------------------------------------------


PAYLOAD = "$(touch /tmp/x); \"'`id` $HOME \\ \n; rm -rf / #"


async def test_success_outputs_env_and_params_as_data(tmp_path):
    # Params reach the container's shell as environment variables ("$payload"), never pasted into
    # the command by Legato (`$${…}` is a literal `${…}` for the shell).
    script = (
        'echo "to stdout"; echo "to stderr" >&2; '
        'echo "kind=csv" >> "$LEGATO_OUTPUT"; echo \'{"rows": 2, "tags": ["a"]}\' >> "$LEGATO_OUTPUT"; '
        'printf "%s" "$payload" > /legato/raw; '
        'printf "%s|%s|%s|%s|%s|%s|%s" "$LEGATO_INSTANCE_ID" "$LEGATO_STEP_ID" "$LEGATO_ATTEMPT" '
        '"$LEGATO_IDEMPOTENCY_KEY" "$flag" "$items" "$image" > /legato/env; '
        'printf "%s" "$${EXTRA}|$wf_only|$shared" > /legato/more; test ! -e /tmp/x'
    )
    ran = await execute(tmp_path, workflow(
        {"command": ["sh", "-c", script], "payload": PAYLOAD, "flag": True, "items": [1, "b"],
         "shared": "from-step", "env": {"EXTRA": "x y"}},
        wf_params={"wf_only": "w", "shared": "from-workflow"}))
    assert ran.last.status.value == "SUCCEEDED", ran.last.message
    assert ran.last.outputs == {"kind": "csv", "rows": 2, "tags": ["a"]}
    directory = ran.attempt_dir()
    assert (directory / "raw").read_bytes() == PAYLOAD.encode()
    iid = ran.instance.instance_id
    # config keys (image, command, env) are not exported: $image is empty
    assert (directory / "env").read_text() == f'{iid}|s|1|{iid}:s:1|true|[1, "b"]|'
    assert (directory / "more").read_text() == "x y|w|from-step"
    assert "to stdout" in ran.log("stdout") and "to stderr" in ran.log("stderr")


async def test_nonzero_exit_is_user_failed_with_code_and_last_stderr_line(tmp_path):
    ran = await execute(tmp_path, workflow({"command": ["sh", "-c", "echo first >&2; echo 'input missing' >&2; "
                                                                     "echo partial=1 >> $LEGATO_OUTPUT; exit 3"]}))
    assert fatal_as(ran.last, "USER_FAILED")
    assert ran.last.message == "exit code 3: input missing (USER_FAILED, no error retry left: FATALLY_FAILED)"
    assert ran.last.outputs == {"partial": "1"}


async def test_command_not_in_image_is_user_failed(tmp_path):
    ran = await execute(tmp_path, workflow({"command": ["no-such-program"]}))
    assert fatal_as(ran.last, "USER_FAILED")
    assert "could not start" in ran.last.message and "no-such-program" in ran.last.message


async def test_missing_image_with_pull_never_is_platform_failed_and_retried(tmp_path):
    retry = {"error_retry_limit": 0, "platform_retry_limit": 2, "backoff": {"type": "fixed", "base": 0.01}}
    ran = await execute(tmp_path, workflow({"image": "legato-test/absent:1", "command": ["true"], "pull": "never"},
                                           retry=retry))
    assert [a.status.value for a in ran.attempts] == ["PLATFORM_FAILED"] * 2 + ["FATALLY_FAILED"]
    assert "legato-test/absent:1" in ran.last.message and "`pull` is never" in ran.last.message


async def test_missing_image_that_cannot_be_pulled_is_platform_failed(tmp_path):
    ran = await execute(tmp_path, workflow({"image": "legato-test/absent:1", "command": ["true"]}))
    assert fatal_as(ran.last, "PLATFORM_FAILED")
    assert "pulling it failed" in ran.last.message


async def test_unreachable_engine_is_platform_failed(tmp_path):
    ran = await execute(tmp_path, workflow({"command": ["true"], "docker_host": "unix:///nonexistent.sock"}),
                        settings={"allowed_docker_hosts": ["unix:///nonexistent.sock"]})
    assert fatal_as(ran.last, "PLATFORM_FAILED")
    assert "cannot reach the Docker engine at unix:///nonexistent.sock" in ran.last.message


@pytest.mark.parametrize("settings", [None, {"docker_host": "unix:///operators.sock"},
                                      {"allowed_docker_hosts": ["unix:///other.sock"]}])
async def test_the_operator_chooses_the_docker_engine(tmp_path, settings):
    """A workflow's `docker_host` (literal, `${…}` or `-p`) never overrides the operator's engine:
    refused unless the operator lists it, before any engine is contacted."""
    doc = workflow({"command": ["true"], "docker_host": "${host}"}, wf_params={"host": "unix:///default.sock"})
    engine = make_engine(tmp_path, settings)
    instance = await engine.execute(engine.load(doc), {"host": "unix:///attacker.sock"})
    last = (await engine.storage.get_attempts(instance.instance_id))[-1]
    assert last.status.value == "FATALLY_FAILED", last.message
    assert "docker_host 'unix:///attacker.sock' is refused" in last.message
    assert "allowed_docker_hosts" in last.message and "Remove `docker_host`" in last.message


async def test_engine_from_settings(tmp_path):
    ran = await execute(tmp_path, workflow({"command": ["true"]}), settings={"docker_host": "unix:///nonexistent.sock"})
    assert fatal_as(ran.last, "PLATFORM_FAILED") and "unix:///nonexistent.sock" in ran.last.message


@pytest.mark.parametrize("params, pointer, words", [
    ({"privileged": True}, "/privileged", "privileged containers are refused"),
    ({"memory": "lots"}, "/memory", "is not a size"),
    ({"memory": "1m"}, "/memory", "minimum"),
    ({"cpus": 0}, "/cpus", "greater than 0"),
    ({"pull": "always"}, "/pull", "never"),
    ({"mounts": [{"source": "data", "target": "/data"}]}, "/mounts/0/source", "absolute"),
    ({"mounts": [{"source": "/srv", "target": "/legato/x"}]}, "/mounts/0/target", "reserved"),
    ({"command": "echo hi"}, "/command", "list"),
    ({"env": {"A-B": "x"}}, "/env", "not a valid environment variable name"),
])
def test_invalid_params_are_refused_at_load(tmp_path, params, pointer, words):
    engine = make_engine(tmp_path)
    with pytest.raises(DefinitionError) as info:
        engine.load(workflow(params))
    problems = {p.pointer: str(p) for p in info.value.problems}
    where = f"/workflow/steps/0/step/params{pointer}"
    assert where in problems, problems
    assert words in problems[where]


async def test_mounts_only_under_the_operators_allow_list(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "data.txt").write_text("hello")
    outside = tmp_path / "secret"
    outside.mkdir()
    (allowed / "escape").symlink_to(outside)
    settings = {"allowed_mounts": [str(allowed)]}
    read = {"command": ["sh", "-c", 'echo "got=$(cat /in/data.txt)" >> $LEGATO_OUTPUT; touch /in/new 2>/dev/null '
                                    '|| echo ro=yes >> $LEGATO_OUTPUT']}

    ran = await execute(tmp_path, workflow({**read, "mounts": [{"source": str(allowed), "target": "/in"}]}), settings)
    assert ran.last.status.value == "SUCCEEDED", ran.last.message
    assert ran.last.outputs == {"got": "hello", "ro": "yes"}

    for source, settings_used in ((str(outside), settings), (str(allowed / "escape"), settings),
                                  (str(allowed), None)):
        ran = await execute(tmp_path, workflow({**read, "mounts": [{"source": source, "target": "/in"}]}),
                            settings_used)
        assert ran.last.status.value == "FATALLY_FAILED", (source, ran.last.message)
        assert "is refused" in ran.last.message and "allowed_mounts" in ran.last.message


async def test_host_network_refused_unless_allowed(tmp_path):
    ran = await execute(tmp_path, workflow({"command": ["true"], "network": "host"}))
    assert ran.last.status.value == "FATALLY_FAILED" and "network 'host' is refused" in ran.last.message


async def test_out_of_memory_is_user_failed(tmp_path):
    # A shell variable grown past the limit: the kernel's OOM killer ends the container.
    grow = 'x=$(head -c 100000000 /dev/zero | tr "\\0" x); echo $${#x}'
    ran = await execute(tmp_path, workflow({"command": ["sh", "-c", grow], "memory": "8m"}))
    assert fatal_as(ran.last, "USER_FAILED")
    assert ran.last.message.startswith("killed: out of memory (limit 8m)"), ran.last.message


async def test_limits_and_user_reach_the_container(tmp_path):
    script = ('echo "user=$(id -u)" >> $LEGATO_OUTPUT; echo "dir=$(pwd)" >> $LEGATO_OUTPUT; '
              'sleep 0.3')
    doc = workflow({"command": ["sh", "-c", script], "user": "65534", "working_dir": "/tmp", "cpus": 0.5,
                    "memory": 64 * 1024 * 1024})
    engine = make_engine(tmp_path)
    seen = {}

    async def inspect():
        with trio.fail_after(10):
            while not (found := ours()):
                await trio.sleep(0.02)
        seen["host"] = found[0].attrs["HostConfig"]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(inspect)
        instance = await engine.execute(engine.load(doc))
    (attempt,) = await engine.storage.get_attempts(instance.instance_id)
    assert attempt.status.value == "SUCCEEDED", attempt.message
    assert attempt.outputs == {"user": "65534", "dir": "/tmp"}
    host = seen["host"]
    assert host["Memory"] == 64 * 1024 * 1024 and host["NanoCpus"] == 500_000_000
    assert host["NetworkMode"] == "none" and not host["Privileged"]


async def test_labels_logs_while_running_and_cancellation(tmp_path):
    engine = make_engine(tmp_path)
    definition = engine.load(workflow({"command": ["sh", "-c", "echo started; sleep 60"]}))
    instance, _ = await engine.start(definition)
    iid = instance.instance_id
    facts = {}
    async with trio.open_nursery() as nursery:
        run = await nursery.start(lambda task_status: engine.run(definition, instance, task_status=task_status))
        with trio.fail_after(15):
            while not (found := ours(legato_key=f"{iid}:s:1")):
                await trio.sleep(0.02)
            while found[0].status != "running":
                await trio.sleep(0.02)
                found[0].reload()
            facts["labels"] = found[0].labels
            # the log reaches storage while the container runs
            while "started" not in "".join(c.text for c in await engine.storage.get_logs(iid)):
                await trio.sleep(0.02)
        run.stop("stopped by the test")
    assert facts["labels"] == {"legato": "1", "legato.instance": iid, "legato.step": "s", "legato.attempt": "1",
                               "legato.key": f"{iid}:s:1"}
    (attempt,) = await engine.storage.get_attempts(iid)
    # the container would run 60 s and succeed if the stop were ignored
    assert attempt.status.value == "STOPPED"
    assert ours(legato_instance=iid) == [], "the cancelled container is still there"


async def test_timeout_kills_the_container(tmp_path):
    ran = await execute(tmp_path, workflow({"command": ["sleep", "60"]}, timeout="1s"))
    assert ran.last.status.value == "TIMED_OUT"  # the 60 s container would have succeeded


# -- reattaching, driven directly ------------------------------------------------------------


def context(tmp_path: Path, iid: str, logs: list) -> StepContext:
    from legato.plugins.docker import DockerParams

    params = {"image": IMAGE}

    async def record_handle(handle):  # pragma: no cover - reattach records nothing
        raise AssertionError("reattach must not record a new handle")

    return StepContext(instance_id=iid, workflow_id="wf", step_id="s", attempt=1, params=params,
                       config=DockerParams.model_validate(params), workflow_params={}, workspace=tmp_path / "runs",
                       definition_dir=None, log=lambda stream, text: logs.append((stream, text)),
                       record_handle=record_handle)


def create_like_the_step(ctx: StepContext, command: list[str]) -> str:
    from docker.types import Mount

    api = client().api
    host_config = api.create_host_config(network_mode="none", mounts=[
        Mount("/legato", str(ctx.attempt_dir), type="bind", read_only=False)])
    return api.create_container(IMAGE, command, environment=["LEGATO_OUTPUT=/legato/outputs"], labels={
        "legato": "1", "legato.instance": ctx.instance_id, "legato.step": "s", "legato.attempt": "1",
        "legato.key": ctx.idempotency_key}, host_config=host_config)["Id"]


async def test_reattach_starts_a_container_that_never_started(tmp_path):
    from legato.plugins.docker import Docker

    logs: list = []
    ctx = context(tmp_path, uuid.uuid4().hex[:16], logs)
    cid = create_like_the_step(ctx, ["sh", "-c", "echo ran; echo k=v >> $LEGATO_OUTPUT"])
    docker = Docker()
    result = await docker.reattach(ctx, {"container": cid, "docker_host": None})
    assert result.outcome.value == "DONE" and result.outputs == {"k": "v"}, result
    assert "ran" in "".join(t for s, t in logs if s == "stdout")
    # Kept, exited, until the kernel says the attempt's end is durable.
    assert [c.status for c in ours(legato_instance=ctx.instance_id)] == ["exited"]
    await docker.release(ctx, {"container": cid, "docker_host": None})
    assert ours(legato_instance=ctx.instance_id) == []


async def test_reattach_finds_the_container_by_its_key_and_reports_a_gone_one(tmp_path):
    from legato.plugins.docker import Docker

    logs: list = []
    ctx = context(tmp_path, uuid.uuid4().hex[:16], logs)
    cid = create_like_the_step(ctx, ["sh", "-c", "echo bad >&2; exit 4"])
    client().api.start(cid)
    client().api.wait(cid)
    result = await Docker().reattach(ctx, {"docker_host": None})  # no id: found by the attempt's key
    assert result.outcome.value == "USER_ERROR" and result.message == "exit code 4: bad"
    again = await Docker().reattach(ctx, {"docker_host": None})  # not released yet: the same result again
    assert (again.outcome, again.message) == (result.outcome, result.message)
    await Docker().release(ctx, {"container": cid, "docker_host": None})
    result = await Docker().reattach(ctx, {"container": cid, "docker_host": None})
    assert result.outcome.value == "PLATFORM_ERROR" and "is gone" in result.message


async def test_reap_removes_only_this_attempts_container(tmp_path):
    from legato.plugins.docker import Docker

    ctx = context(tmp_path, uuid.uuid4().hex[:16], [])
    mine = create_like_the_step(ctx, ["sleep", "60"])
    other_ctx = context(tmp_path, uuid.uuid4().hex[:16], [])
    other = create_like_the_step(other_ctx, ["sleep", "60"])
    try:
        Docker().reap(ctx, {"container": other, "docker_host": None})  # a handle naming another's container
        Docker().reap(ctx, {"container": mine, "docker_host": None})
        assert ours(legato_instance=ctx.instance_id) == []
        assert len(ours(legato_instance=other_ctx.instance_id)) == 1
    finally:
        client().api.remove_container(other, force=True)
        client().api.remove_container(mine, force=True) if ours(legato_instance=ctx.instance_id) else None


# -- crash and reattach through the CLI ----------------------------------------------------------


def _wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


class Crash:
    """`legato run --request-id` on SQLite as a subprocess, SIGKILLed and resumed."""

    def __init__(self, tmp: Path, sid: str, script: str) -> None:
        self.tmp, self.sid = tmp, sid
        self.db = tmp / "legato.db"
        self.path = tmp / "wf.json"
        self.path.write_text(json.dumps(workflow({"command": ["sh", "-c", script]}, sid=sid)))
        self.env = {**os.environ, "LEGATO_STORE": f"sqlite:///{self.db}", "LEGATO_LEASE_TTL": "0.5"}
        self.since = time.time() - 1

    def launch(self, crash_at: str | None = None) -> subprocess.Popen:
        env = {**self.env, "LEGATO_CRASH_AT": crash_at} if crash_at else self.env
        return subprocess.Popen([LEGATO, "run", str(self.path), "--request-id", "crash", "--workspace",
                                 str(self.tmp / "runs")], env=env, cwd=self.tmp, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def container(self, status: str):
        found = ours(legato_step=self.sid)
        return found[0] if found and found[0].status == status else None

    def resume(self) -> str:
        for _ in range(50):
            proc = self.launch()
            out, err = proc.communicate(timeout=60)
            if proc.returncode == 0:
                return out
            assert "owned by another live worker" in err, f"legato exited {proc.returncode}: {out}\n{err}"
            time.sleep(0.2)  # the killed owner's lease has not expired yet
        raise AssertionError("never resumed")

    def logs(self) -> str:
        """Everything logged so far ("" while the store does not exist yet)."""
        try:
            conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
            try:
                return "".join(t for (t,) in conn.execute("SELECT text FROM legato_logs ORDER BY id"))
            finally:
                conn.close()
        except sqlite3.Error:
            return ""

    def creations(self) -> int:
        events = client().events(since=self.since, until=time.time() + 0.5, decode=True, filters={
            "type": "container", "event": "create", "label": f"legato.step={self.sid}"})
        return sum(1 for _ in events)

    def attempts(self):
        conn = sqlite3.connect(self.db)
        try:
            (iid, status), = conn.execute("SELECT instance_id, status FROM legato_instances WHERE request_id = "
                                          "'crash'").fetchall()
            rows = conn.execute("SELECT attempt, status, outputs FROM legato_attempts WHERE instance_id = ? AND "
                                "step_id = ?", (iid, self.sid)).fetchall()
            logs = "".join(t for (t,) in conn.execute("SELECT text FROM legato_logs WHERE instance_id = ? "
                                                      "ORDER BY id", (iid,)))
        finally:
            conn.close()
        return status, [(a, s, json.loads(o)) for a, s, o in rows], logs


@pytest.mark.parametrize("wait_for_exit", [False, True], ids=["still-running", "exited-while-down"])
def test_crash_and_reattach(tmp_path, wait_for_exit):
    sid = f"c{uuid.uuid4().hex[:10]}"
    # The container waits for a gate the test opens (not for a sleep to run out), so that a loaded
    # machine cannot turn "still running at reattach" into "exited meanwhile".
    crash = Crash(tmp_path, sid, "echo before-crash; while [ ! -e /tmp/gate ]; do sleep 0.05; done; "
                                 "echo after-crash; echo k=v >> $LEGATO_OUTPUT")
    proc = crash.launch()
    try:
        container = _wait_for(lambda: crash.container("running"), what="the container to run")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        if wait_for_exit:
            container.exec_run(["touch", "/tmp/gate"])
            _wait_for(lambda: crash.container("exited"), what="the container to exit while no kernel runs")
        else:
            assert container.labels["legato.attempt"] == "1"

            def open_gate_once_reattached():
                try:
                    _wait_for(lambda: "[legato] reattached" in crash.logs(), timeout=120, what="the reattach")
                finally:  # open it regardless, so that a failure reads as an assertion, not a hang
                    container.exec_run(["touch", "/tmp/gate"])

            threading.Thread(target=open_gate_once_reattached, daemon=True).start()
        crash.resume()
    finally:
        if proc.poll() is None:
            proc.kill()
    status, attempts, logs = crash.attempts()
    assert status == "SUCCEEDED"
    assert attempts == [(1, "SUCCEEDED", {"k": "v"})], "the container was not followed to its end on attempt 1"
    assert crash.creations() == 1, "a second container was created"
    assert "after-crash" in logs and "before-crash" in logs
    state = "exited" if wait_for_exit else "running"
    assert f"[legato] reattached to container {container.short_id[:12]} ({state})" in logs, logs
    assert ours(legato_step=sid) == []


@pytest.mark.parametrize("crash_at", ["step_done:1", "before_release:1"], ids=["before-its-end-is-committed",
                                                                           "before-it-is-released"])
def test_a_container_that_ended_before_the_crash_is_not_run_again(tmp_path, crash_at):
    """The kernel dies after the container exited: before its result was committed (resume
    reattaches to the exited container and reads its result), or after (resume removes it)."""
    sid = f"c{uuid.uuid4().hex[:10]}"
    crash = Crash(tmp_path, sid, "echo ran; echo k=v >> $LEGATO_OUTPUT")
    proc = crash.launch(crash_at)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    [container] = ours(legato_step=sid)
    assert container.status == "exited"
    crash.resume()
    status, attempts, logs = crash.attempts()
    assert status == "SUCCEEDED"
    assert attempts == [(1, "SUCCEEDED", {"k": "v"})], attempts
    assert crash.creations() == 1, "the container ran a second time"
    assert ours(legato_step=sid) == [], "the ended container was not removed"


# -- conformance -------------------------------------------------------------------------------

class TestDockerConformance(StepTypeSuite):
    profile = "docker"  # as published in plugins/profiles.py
