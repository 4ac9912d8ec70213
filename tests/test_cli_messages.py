"""No silence (issue 10): what the CLI says, as transcripts, when a command names something that is
not there. Unknown instances, steps and attempts, ended instances handed to resume, ambiguous id
prefixes and missing stores all say so on stderr with exit code 2 ("invalid input"), never a
traceback; read-only commands never create a store to say it is empty."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import trio

from legato.model import InstanceRecord
from legato.states import InstanceStatus
from legato.storage import open_storage

from .conftest import LEGATO

FAILING = {"workflow": {"id": "flaky", "steps": [{"step": {
    "id": "load", "type": "bash", "params": {"script": 'echo "try $LEGATO_ATTEMPT"; exit 3'},
    "retry_policy": {"error_retry_limit": 1, "backoff": {"type": "fixed", "base": 0}}}}]}}
PASSING = {"workflow": {"id": "daily", "steps": [{"step": {
    "id": "extract", "type": "bash", "params": {"script": "echo extracted"}}}]}}


def legato(tmp_path, *args, store: str | None = None):
    """Run ``legato ARGS`` in ``tmp_path`` as a user would, with no LEGATO_STORE set unless ``store``."""
    env = {k: v for k, v in os.environ.items() if k != "LEGATO_STORE"}
    if store is not None:
        env["LEGATO_STORE"] = store
    proc = subprocess.run([LEGATO, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store holding a failed instance (two attempts of `load`), a succeeded one, and three
    instances with chosen ids: two share the prefix 3fa2, one of them FAILED."""
    where = tmp_path_factory.mktemp("store")
    url = f"sqlite:///{where / 'legato.db'}"
    for name, doc in (("failing.json", FAILING), ("passing.json", PASSING)):
        (where / name).write_text(json.dumps(doc))
        legato(where, "run", name, "--workspace", str(where / "runs"), store=url)

    async def seed():
        async with open_storage(url) as storage:
            for iid, wf, status, at in (("3fa2c1aa00000000", "daily", InstanceStatus.FAILED, 1.0),
                                        ("3fa2d7bb00000000", "daily", InstanceStatus.SUCCEEDED, 2.0),
                                        ("9e1f000000000000", "other", InstanceStatus.FAILED, 3.0)):
                await storage.create_instance(InstanceRecord(iid, wf, 1, status, created_at=at))

    trio.run(seed)
    rows = json.loads(legato(where, "list", "--json", store=url).stdout)
    failed = next(r["instance_id"] for r in rows if r["workflow_id"] == "flaky")
    return {"dir": where, "url": url, "failed": failed}


def run_in(store, *args):
    return legato(store["dir"], *args, store=store["url"])


def test_unknown_instance_is_refused_alike_by_status_logs_and_resume(store):
    url = store["url"]
    for command in (("status", "nosuch"), ("logs", "nosuch"), ("resume", "nosuch")):
        proc = run_in(store, *command)
        assert proc.returncode == 2, (command, proc.stderr)
        assert proc.stderr == f"legato: no instance 'nosuch' in {url}: `legato list` shows the instances there\n"


def test_logs_of_an_unknown_step_or_attempt_name_what_exists(store):
    iid = store["failed"]
    proc = run_in(store, "logs", iid, "lod")
    assert proc.returncode == 2
    assert proc.stderr == (f"legato: instance {iid} (flaky) has no step 'lod' with an attempt; "
                           "steps that have started: load\n")
    proc = run_in(store, "logs", iid, "load", "--attempt", "5")
    assert proc.returncode == 2
    assert proc.stderr == f"legato: step 'load' of instance {iid} has no attempt 5; it has attempts 1, 2\n"
    proc = run_in(store, "logs", iid, "--attempt", "3")
    assert proc.returncode == 2
    assert proc.stderr == f"legato: no step of instance {iid} has an attempt 3; the most any step has is 2\n"
    # what does exist still prints
    proc = run_in(store, "logs", iid, "load", "--attempt", "2")
    assert proc.returncode == 0 and proc.stdout == "try 2\n", proc.stdout + proc.stderr


def test_logs_of_a_step_that_logged_nothing_say_so(store):
    proc = run_in(store, "logs", "3fa2c1")
    assert proc.returncode == 0 and proc.stdout == ""
    assert proc.stderr == "legato: instance 3fa2c1aa00000000: its steps logged nothing\n"


def test_resume_of_an_ended_instance_points_at_restart(store):
    iid = store["failed"]
    proc = run_in(store, "resume", iid)
    assert proc.returncode == 2
    assert proc.stderr == (f"legato: instance {iid} (flaky) already ended FAILED; resume continues only "
                           f"unfinished instances: `legato restart {iid}` runs it again from its incomplete "
                           "steps\n")
    proc = run_in(store, "resume", "3fa2d7")
    assert proc.returncode == 2
    assert proc.stderr == "legato: instance 3fa2d7bb00000000 (daily) already ended SUCCEEDED: nothing to resume\n"


def test_a_unique_prefix_names_its_instance(store):
    proc = run_in(store, "status", "3fa2c")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "daily v1 [3fa2c1aa00000000] FAILED"
    proc = run_in(store, "status", store["failed"][:6], "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["instance_id"] == store["failed"]


def test_an_ambiguous_prefix_lists_the_candidates(store):
    url = store["url"]
    for command in ("status", "logs", "resume"):
        proc = run_in(store, command, "3fa2")
        assert proc.returncode == 2, (command, proc.stderr)
        assert proc.stderr.splitlines() == [
            f"legato: instance id '3fa2' is ambiguous in {url}: it starts 2 instances; give more of the id:",
            "  3fa2c1aa00000000  daily                    FAILED",
            "  3fa2d7bb00000000  daily                    SUCCEEDED",
        ]


def test_list_filters_by_state_and_workflow(store):
    def ids(*args):
        proc = run_in(store, "list", "--json", *args)
        assert proc.returncode == 0, proc.stderr
        return [r["instance_id"] for r in json.loads(proc.stdout)]

    assert ids("--state", "FAILED", "--workflow", "daily") == ["3fa2c1aa00000000"]
    assert set(ids("--state", "failed")) == {"3fa2c1aa00000000", "9e1f000000000000", store["failed"]}
    assert ids("--state", "SUCCEEDED", "--workflow", "other") == []
    plain = run_in(store, "list", "--state", "FAILED", "--workflow", "other")
    assert plain.stdout.split()[0] == "9e1f000000000000" and len(plain.stdout.splitlines()) == 1
    proc = run_in(store, "list", "--state", "DONE")
    assert proc.returncode == 2 and "Invalid value for '--state'" in proc.stderr


def test_the_cli_offers_every_instance_state():
    from legato.cli import INSTANCE_STATES

    assert set(INSTANCE_STATES) == {s.value for s in InstanceStatus}


@pytest.mark.parametrize("command", [("status",), ("list",), ("logs", "3fa2"), ("status", "3fa2"),
                                     ("resume", "3fa2")])
def test_read_only_commands_never_create_a_store(tmp_path, command):
    proc = legato(tmp_path, *command)
    assert proc.returncode == 2
    assert proc.stderr == ("legato: no Legato store at .legato/legato.db (nothing has run here yet; use --store "
                           "URL or LEGATO_STORE to read another store)\n")
    assert list(tmp_path.iterdir()) == [], "a read-only command created files"
    nested = tmp_path / "not" / "yet" / "legato.db"
    proc = legato(tmp_path, *command, "--store", f"sqlite:///{nested}")
    assert proc.returncode == 2 and f"no Legato store at {nested} (nothing has run here yet" in proc.stderr
    assert not (tmp_path / "not").exists(), "a read-only command created the store's directories"


def test_resume_with_nothing_here_says_so_and_creates_nothing(tmp_path):
    proc = legato(tmp_path, "resume")
    assert (proc.returncode, proc.stdout) == (0, "nothing to resume\n")
    assert list(tmp_path.iterdir()) == []


def test_a_store_url_that_cannot_be_opened_names_it_and_the_fix(tmp_path):
    (tmp_path / "notes.txt").write_text("not a database\n" * 100)
    (tmp_path / "wf.json").write_text(json.dumps(PASSING))
    url = f"sqlite:///{tmp_path / 'notes.txt'}"
    proc = legato(tmp_path, "list", "--store", url)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"legato: cannot open the store {url}: ")
    assert "is not a Legato database or is corrupt" in proc.stderr and "point --store at another file" in proc.stderr
    blocked = tmp_path / "notes.txt" / "sub" / "legato.db"  # a file where a directory should be
    proc = legato(tmp_path, "run", "wf.json", "--store", f"sqlite:///{blocked}")
    assert proc.returncode == 2  # the URL itself cannot work: invalid input
    assert proc.stderr.startswith(f"legato: 'sqlite:///{blocked}': cannot use ")
    assert proc.stderr.endswith(" as a database file: Not a directory; give the path of a database file, "
                                "e.g. sqlite:///.legato/legato.db\n")
    unmakeable = "sqlite:////proc/legato-nowhere/legato.db"  # no directory can be made under /proc
    proc = legato(tmp_path, "run", "wf.json", "--store", unmakeable)
    assert proc.returncode == 1
    assert proc.stderr == (f"legato: cannot open the store {unmakeable}: cannot create the directory "
                           f"/proc/legato-nowhere for {unmakeable}: No such file or directory. Check --store (or "
                           "LEGATO_STORE): it takes sqlite:///path/to/file.db, postgresql://user@host/db or "
                           "memory://\n")
    proc = legato(tmp_path, "list", "--store", "bogus://x")
    assert proc.returncode == 2
    assert proc.stderr.startswith("legato: no storage backend for 'bogus://x': known schemes are ")
    assert "Check the store URL (--store or LEGATO_STORE)" in proc.stderr
