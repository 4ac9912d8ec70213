"""The ``bash`` step type, driven directly through a hand-built StepContext."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pydantic
import pytest
import trio

import legato.processes
from legato import Outcome, StepContext

from legato.plugins import bash as bash_plugin

Bash = bash_plugin.Bash
BashParams = bash_plugin.BashParams
parse_outputs = bash_plugin.parse_outputs


# -- harness ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True, params=["pidfd", "trio"])
def watcher(request, monkeypatch):
    """Every test runs with both ways a process is followed: one task over an epoll set of the
    pipes and the pidfd (Linux), and the portable one over trio's process streams."""
    if request.param == "trio":
        monkeypatch.setattr(legato.processes, "_fast", [False])
    elif not legato.processes._fast_watch():
        pytest.skip("no epoll and pidfd here: only the portable watcher runs")
    return request.param


class Harness:
    """A StepContext whose log and handles land in lists the test can inspect."""

    def __init__(self, tmp_path: Path, params: dict, workflow_params: dict | None = None,
                 definition_dir: Path | None = None) -> None:
        self.logs: list[tuple[str, str]] = []
        self.handles: list[dict] = []

        async def record_handle(handle):
            self.handles.append(handle)

        self.ctx = StepContext(
            instance_id="inst1",
            workflow_id="wf",
            step_id="step1",
            attempt=1,
            params=params,
            config=BashParams.model_validate(params),
            workflow_params=workflow_params or {},
            workspace=tmp_path / "ws",
            definition_dir=definition_dir,
            log=lambda stream, text: self.logs.append((stream, text)),
            record_handle=record_handle,
        )

    def text(self, stream: str) -> str:
        return "".join(t for s, t in self.logs if s == stream)

    async def run(self, settings: dict | None = None):
        return await Bash(settings).run(self.ctx)


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie nobody has reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def all_gone(pids, timeout: float = 15.0) -> bool:
    """Whether every pid is gone within ``timeout``: a SIGKILLed process takes a moment to die."""
    with trio.move_on_after(timeout):
        while not all(gone(p) for p in pids):
            await trio.sleep(0.01)
    return all(gone(p) for p in pids)


async def wait_for_file(path: Path, timeout: float = 30.0) -> str:
    with trio.fail_after(timeout):
        while not path.exists():
            await trio.sleep(0.01)
    return path.read_text()


def kill_quietly(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- success, failure, outputs ----------------------------------------------------------------


async def test_script_success_with_outputs(tmp_path):
    h = Harness(tmp_path, {"script": 'echo hello\necho "answer=4=2" >> "$LEGATO_OUTPUT"\n'
                                     'echo \'{"n": 3, "l": [1, 2]}\' >> "$LEGATO_OUTPUT"\n'})
    result = await h.run()
    assert result.outcome is Outcome.DONE, result.message
    assert result.outputs == {"answer": "4=2", "n": 3, "l": [1, 2]}
    assert h.text("stdout") == "hello\n"
    assert h.handles and h.handles[0]["pid"] == h.handles[0]["pgid"] > 0
    # The outputs file lives in the attempt's private directory.
    assert h.ctx.outputs_path.exists()


async def test_default_working_dir_is_instance_workdir(tmp_path):
    h = Harness(tmp_path, {"script": "pwd"})
    result = await h.run()
    assert result.outcome is Outcome.DONE
    assert h.text("stdout").strip() == str(h.ctx.workdir)


async def test_nonzero_exit_is_user_error_with_stderr(tmp_path):
    h = Harness(tmp_path, {"script": "echo partial=yes >> $LEGATO_OUTPUT; echo first >&2; "
                                     "echo 'boom: it broke' >&2; exit 3"})
    result = await h.run()
    assert result.outcome is Outcome.USER_ERROR
    assert "exit code 3" in result.message
    assert "boom: it broke" in result.message
    assert h.text("stderr") == "first\nboom: it broke\n"
    assert result.outputs == {"partial": "yes"}


async def test_killed_by_signal_names_it(tmp_path):
    h = Harness(tmp_path, {"script": "kill -KILL $$"})
    result = await h.run()
    assert result.outcome is Outcome.USER_ERROR
    assert "SIGKILL" in result.message


async def test_bad_outputs_line_is_user_error(tmp_path):
    h = Harness(tmp_path, {"script": 'printf "ok=1\\nnot a pair\\n" > "$LEGATO_OUTPUT"'})
    result = await h.run()
    assert result.outcome is Outcome.USER_ERROR
    assert "bad line 2 in $LEGATO_OUTPUT" in result.message


async def test_oversized_outputs_file_is_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(legato.processes, "MAX_OUTPUTS_BYTES", 100)
    h = Harness(tmp_path, {"script": 'for i in $(seq 50); do echo "k$i=v" >> "$LEGATO_OUTPUT"; done'})
    result = await h.run()
    assert result.outcome is Outcome.USER_ERROR
    assert "larger than 100 bytes" in result.message


async def test_invalid_utf8_output_is_replaced(tmp_path):
    h = Harness(tmp_path, {"script": r"printf 'a\xffb'"})
    result = await h.run()
    assert result.outcome is Outcome.DONE
    assert h.text("stdout") == "a\ufffdb"


# -- params are data --------------------------------------------------------------------------


async def test_params_reach_script_only_as_env(tmp_path):
    target = tmp_path / "pwned"
    payload = f"$(touch {target}); \"' `touch {target}` ${{IFS}} \\ \n; rm -rf nothing"
    out = tmp_path / "out.bin"
    h = Harness(
        tmp_path,
        {
            "script": f'printf \'%s\' "$payload" > {out}; printf \'%s\' "$items" > {out}.items; '
                      f'printf \'%s|%s|%s|%s\' "$flag" "$n" "$shared" "${{bad_name-unset}}" > {out}.misc',
            "payload": payload,
            "items": ["a", {"b": 1}, None],
            "flag": True,
            "n": 7,
            "shared": "from-step",
            "bad-name": "x",
        },
        workflow_params={"shared": "from-workflow", "env": "prod"},
    )
    result = await h.run()
    assert result.outcome is Outcome.DONE, result.message
    assert out.read_bytes() == payload.encode()
    assert not target.exists()
    assert json.loads(Path(f"{out}.items").read_text()) == ["a", {"b": 1}, None]
    assert Path(f"{out}.misc").read_text() == "true|7|from-step|unset"


async def test_workflow_param_named_like_config_key_is_still_exported(tmp_path):
    h = Harness(tmp_path, {"script": 'printf %s "$env"'}, workflow_params={"env": "prod"})
    result = await h.run()
    assert result.outcome is Outcome.DONE
    assert h.text("stdout") == "prod"


async def test_legato_variables_and_extra_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LEGATO_TEST_PARENT", "inherited")
    h = Harness(
        tmp_path,
        {
            "script": 'printf "%s\\n" "$LEGATO_INSTANCE_ID" "$LEGATO_STEP_ID" "$LEGATO_ATTEMPT" '
                      '"$LEGATO_IDEMPOTENCY_KEY" "$LEGATO_OUTPUT" "$EXTRA" "$LEGATO_TEST_PARENT"',
            "env": {"EXTRA": "yes", "LEGATO_STEP_ID": "spoofed"},
        },
    )
    result = await h.run()
    assert result.outcome is Outcome.DONE
    assert h.text("stdout").splitlines() == [
        "inst1", "step1", "1", "inst1:step1:1", str(h.ctx.outputs_path), "yes", "",  # not the worker's env
    ]


async def test_inherit_env_false(tmp_path, monkeypatch):
    monkeypatch.setenv("LEGATO_TEST_PARENT", "inherited")
    h = Harness(tmp_path, {"script": 'printf "[%s]" "${LEGATO_TEST_PARENT-unset}"', "inherit_env": False})
    result = await h.run()
    assert result.outcome is Outcome.DONE, result.message
    assert h.text("stdout") == "[unset]"


async def test_inherit_env_takes_only_what_the_operator_allows(tmp_path, monkeypatch):
    monkeypatch.setenv("LEGATO_TEST_PARENT", "inherited")
    monkeypatch.setenv("LEGATO_TEST_OTHER", "other")
    script = 'printf "[%s][%s]" "${LEGATO_TEST_PARENT-unset}" "${LEGATO_TEST_OTHER-unset}"'
    settings = {"inherit_env": ["LEGATO_TEST_PAR*"]}
    h = Harness(tmp_path, {"script": script})
    assert (await h.run(settings)).outcome is Outcome.DONE
    assert h.text("stdout") == "[inherited][unset]"
    h = Harness(tmp_path, {"script": script, "inherit_env": ["LEGATO_TEST_PARENT"]})
    assert (await h.run(settings)).outcome is Outcome.DONE
    assert h.text("stdout") == "[inherited][unset]"
    h = Harness(tmp_path, {"script": script, "inherit_env": ["LEGATO_TEST_OTHER"]})
    result = await h.run(settings)
    assert result.outcome is Outcome.FATAL_ERROR and h.text("stdout") == ""
    assert "LEGATO_TEST_OTHER, which the operator does not allow" in result.message
    # The operator's own setting is checked by BashSettings when the step type is built.
    from legato.steptype import SettingsError

    with pytest.raises(SettingsError, match=r"^bash\.inherit_env: must be a list of environment variable names"):
        Bash({"inherit_env": "LEGATO_TEST_OTHER"})


async def test_argv_runs_without_shell(tmp_path):
    h = Harness(tmp_path, {"argv": ["printf", "%s", "$(echo hi)"]})
    result = await h.run()
    assert result.outcome is Outcome.DONE
    assert h.text("stdout") == "$(echo hi)"


async def test_argv_command_not_found_is_user_error(tmp_path):
    h = Harness(tmp_path, {"argv": ["legato-no-such-command-xyz"]})
    result = await h.run()
    assert result.outcome is Outcome.USER_ERROR
    assert "legato-no-such-command-xyz" in result.message


# -- working_dir ------------------------------------------------------------------------------


async def test_missing_working_dir_is_user_error(tmp_path):
    missing = tmp_path / "does" / "not" / "exist"
    h = Harness(tmp_path, {"script": "true", "working_dir": str(missing)})
    result = await h.run()
    assert result.outcome is Outcome.USER_ERROR
    assert result.message == f"working_dir {str(missing)!r} does not exist"


async def test_working_dir_that_is_a_file_is_user_error(tmp_path):
    (tmp_path / "afile").write_text("")
    h = Harness(tmp_path, {"argv": ["true"], "working_dir": str(tmp_path / "afile")})
    result = await h.run()
    assert result.outcome is Outcome.USER_ERROR
    assert result.message == f"working_dir {str(tmp_path / 'afile')!r} is not a directory"


async def test_relative_working_dir_resolves_against_definition_dir(tmp_path):
    (tmp_path / "defs" / "sub").mkdir(parents=True)
    h = Harness(tmp_path, {"script": "pwd", "working_dir": "sub"}, definition_dir=tmp_path / "defs")
    result = await h.run()
    assert result.outcome is Outcome.DONE
    assert h.text("stdout").strip() == str(tmp_path / "defs" / "sub")


# -- streaming, cancellation, leftovers -------------------------------------------------------


async def test_logs_stream_while_running(tmp_path):
    # the script waits for a file the test never writes: "second" can only come after a cancel
    h = Harness(tmp_path, {"script": "echo first; while [ ! -e never ]; do sleep 0.05; done; echo second"})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.run)
        with trio.fail_after(30):  # a hang guard
            while "first" not in h.text("stdout"):
                await trio.sleep(0.01)
        assert "second" not in h.text("stdout")
        assert not gone(h.handles[0]["pid"])  # still running: the line came before the end
        nursery.cancel_scope.cancel()
    assert await all_gone([h.handles[0]["pid"]])


async def test_cancellation_kills_the_process_group(tmp_path):
    script = (
        "sleep 300 & echo $! > bg\n"
        "bash -c 'echo $$ > fg.tmp && mv fg.tmp fg && exec sleep 300'\n"
        "echo unreachable\n"  # not the last command, so bash forks it rather than exec'ing it
    )
    h = Harness(tmp_path, {"script": script})
    cwd = h.ctx.workdir
    pids: list[int] = []
    try:
        with trio.fail_after(60):  # a hang guard: the sleeps would run 300 s
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(h.run)
                    pids.append(int(await wait_for_file(cwd / "bg")))
                    pids.append(int(await wait_for_file(cwd / "fg")))
                    pids.append(h.handles[0]["pid"])
                    assert len(set(pids)) == 3
                    assert not any(gone(p) for p in pids)
                    started = trio.current_time()
                    scope.cancel()
            assert scope.cancelled_caught
            # a hang guard: without the group kill the sleeps would run 300 s
            assert trio.current_time() - started < 30
        assert await all_gone(pids), [p for p in pids if not gone(p)]
    finally:
        kill_quietly(pids)


async def test_cancellation_terminates_gracefully_first(tmp_path):
    # SIGTERM goes to the whole group: the foreground sleep dies at once, so the script's trap
    # runs (bash defers traps while a foreground child runs) well before the SIGKILL deadline.
    h = Harness(tmp_path, {"script": "trap 'echo bye > termed; exit 0' TERM; echo ready > ready; sleep 300"})
    with trio.fail_after(60):  # a hang guard
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(h.run)
                await wait_for_file(h.ctx.workdir / "ready")
                scope.cancel()
    # the trap wrote its file: SIGTERM reached the script before any SIGKILL could
    assert (h.ctx.workdir / "termed").read_text() == "bye\n"


async def test_cancellation_escalates_to_sigkill(tmp_path):
    # TERM is ignored by the script and (inherited) by its child: only SIGKILL ends them.
    script = "trap '' TERM\nbash -c 'echo $$ > fg.tmp && mv fg.tmp fg && exec sleep 300'\necho unreachable"
    h = Harness(tmp_path, {"script": script})
    pids: list[int] = []
    try:
        with trio.fail_after(60):  # a hang guard
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(h.run)
                    pids.append(int(await wait_for_file(h.ctx.workdir / "fg")))
                    pids.append(h.handles[0]["pid"])
                    assert len(set(pids)) == 2
                    started = trio.current_time()
                    scope.cancel()
            elapsed = trio.current_time() - started
            # it waited out the grace, then killed: both processes are gone below (the sleep would run 300 s)
            assert Bash.term_grace <= elapsed
        assert await all_gone(pids), [p for p in pids if not gone(p)]
    finally:
        kill_quietly(pids)


async def test_leftover_background_children_are_killed_after_normal_exit(tmp_path, monkeypatch):
    # The background sleep keeps stdout open: without the group kill the run would never end.
    # With a drain timeout longer than the hang guard, only the kill at exit lets the run end in time.
    monkeypatch.setattr(Bash, "drain_timeout", 120.0)
    h = Harness(tmp_path, {"script": "sleep 300 & echo $! > bg; echo done"})
    pid = None
    try:
        with trio.fail_after(60):
            result = await h.run()
        pid = int((h.ctx.workdir / "bg").read_text())
        assert result.outcome is Outcome.DONE, result.message
        assert h.text("stdout") == "done\n"
        # Killed at exit, not merely cut off after the drain timeout.
        assert "stopped reading output" not in h.text("stderr")
        assert await all_gone([pid])
    finally:
        if pid:
            kill_quietly([pid])


async def test_escaped_process_holding_pipes_does_not_hang(tmp_path, monkeypatch):
    monkeypatch.setattr(Bash, "drain_timeout", 0.2)
    # The escapee writes its pid only once it has left the group, and the script waits for that.
    script = "setsid bash -c 'echo $$ > esc.tmp; mv esc.tmp esc; exec sleep 300' &\n" \
             "while [ ! -e esc ]; do sleep 0.01; done; echo done"
    h = Harness(tmp_path, {"script": script})
    pid = None
    try:
        with trio.fail_after(30):  # a hang guard: the escapee holds the pipes for 300 s
            result = await h.run()
        pid = int((h.ctx.workdir / "esc").read_text())
        assert result.outcome is Outcome.DONE
        assert "stopped reading output" in h.text("stderr")
    finally:
        if pid:
            kill_quietly([pid])


async def test_large_output_on_both_streams_arrives_whole(tmp_path):
    # Several reads per stream, both at once, and a two-byte character split across reads (the
    # odd prefix puts every read boundary inside one): the log holds exactly what was written.
    script = ("python3 -c 'import sys\n"
              "sys.stdout.write(\"x\" + \"\u00e9\" * 150000)\n"
              "sys.stderr.write(\"y\" + \"\u00fc\" * 150000)'")
    h = Harness(tmp_path, {"script": script})
    result = await h.run()
    assert result.outcome is Outcome.DONE, result.message
    assert h.text("stdout") == "x" + "\u00e9" * 150000
    assert h.text("stderr") == "y" + "\u00fc" * 150000


async def test_concurrent_steps_each_get_their_own_output(tmp_path):
    # Spawns overlap in worker threads (a child briefly holds copies of the others' pipes):
    # each step still sees exactly its own lines and its own end.
    harnesses = [Harness(tmp_path, {"script": 'echo "out $n"; echo "err $n" >&2; exit $((n % 3))', "n": n})
                 for n in range(150)]
    results: dict[int, object] = {}
    limiter = trio.CapacityLimiter(8)  # so steps end while others are being spawned

    async def one(n: int) -> None:
        async with limiter:
            results[n] = await harnesses[n].run()

    with trio.fail_after(120):  # a hang guard
        async with trio.open_nursery() as nursery:
            for n in range(len(harnesses)):
                nursery.start_soon(one, n)
    for n, h in enumerate(harnesses):
        assert h.text("stdout") == f"out {n}\n" and h.text("stderr") == f"err {n}\n"
        assert results[n].outcome is (Outcome.DONE if n % 3 == 0 else Outcome.USER_ERROR)


async def test_a_sandbox_refusing_pidfds_gets_the_portable_watcher(tmp_path, monkeypatch):
    def refused(pid, flags=0):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "pidfd_open", refused, raising=False)
    monkeypatch.setattr(legato.processes, "_fast", [])
    assert legato.processes._fast_watch() is False
    h = Harness(tmp_path, {"script": "echo fine"})
    result = await h.run()
    assert result.outcome is Outcome.DONE, result.message
    assert h.text("stdout") == "fine\n"


def open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
async def test_no_descriptor_outlives_a_step(tmp_path):
    async def cancelled():
        h = Harness(tmp_path, {"script": "echo ready > ready; exec sleep 300"})
        with trio.fail_after(60):  # a hang guard
            async with trio.open_nursery() as nursery:
                nursery.start_soon(h.run)
                await wait_for_file(h.ctx.workdir / "ready")
                nursery.cancel_scope.cancel()
        assert await all_gone([h.handles[0]["pid"]])

    await Harness(tmp_path, {"script": "true"}).run()  # one-off descriptors (the workspace, trio's)
    before = open_descriptors()
    assert (await Harness(tmp_path, {"script": "echo out; echo err >&2"}).run()).outcome is Outcome.DONE
    assert (await Harness(tmp_path, {"script": "exit 4"}).run()).outcome is Outcome.USER_ERROR
    assert (await Harness(tmp_path, {"argv": ["legato-no-such-command-xyz"]}).run()).outcome is Outcome.USER_ERROR
    await cancelled()
    assert open_descriptors() == before


# -- pure pieces ------------------------------------------------------------------------------


def test_parse_outputs_key_value_and_json():
    text = 'url=http://x/?a=b&c=d\n\n  \n{"n": 1, "nested": {"k": [true]}}\nempty=\nn=2\r\n'
    assert parse_outputs(text) == {"url": "http://x/?a=b&c=d", "n": "2", "nested": {"k": [True]}, "empty": ""}


@pytest.mark.parametrize("bad", ["no equals sign", "=value", "bad key=v", '{"unclosed": 1', "[1, 2]"])
def test_parse_outputs_bad_line_raises(bad):
    with pytest.raises(ValueError, match=r"bad line 2 in \$LEGATO_OUTPUT"):
        parse_outputs(f"ok=1\n{bad}\n")


@pytest.mark.parametrize("params", [{}, {"script": "true", "argv": ["true"]}, {"env": {"A": "b"}}])
def test_params_require_exactly_one_of_script_or_argv(params):
    with pytest.raises(pydantic.ValidationError, match="exactly one of `script` or `argv`"):
        BashParams.model_validate(params)


def test_params_validation_details():
    cfg = BashParams.model_validate({"script": "true", "user_value": 3})
    assert cfg.inherit_env is True and cfg.model_extra == {"user_value": 3}
    with pytest.raises(pydantic.ValidationError):
        BashParams.model_validate({"argv": []})
    with pytest.raises(pydantic.ValidationError, match="not a valid environment variable name"):
        BashParams.model_validate({"script": "true", "env": {"A=B": "x"}})


def test_unavailable_and_registration(monkeypatch):
    assert Bash.unavailable() is None
    monkeypatch.setattr(bash_plugin.shutil, "which", lambda name: None)
    assert "bash" in Bash.unavailable()

    class Registry:
        added = []

        def add(self, cls):
            self.added.append(cls)

    bash_plugin.legato_register_step_types(Registry())
    assert Registry.added == [Bash] and Bash.name == "bash"
