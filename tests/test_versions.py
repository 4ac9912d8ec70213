"""Stored versions (issue 11): `legato push`, `versions`, `activate`, `start`, as a user types
them. Every push stores an immutable version (an identical document stores nothing), one is
active, and an instance is pinned to the version it started with (DESIGN §2)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from .conftest import legato_cli


def doc(script: str, workflow_id: str = "greet", **params) -> dict:
    body: dict = {"id": workflow_id, "steps": [{"step": {"id": "say", "type": "bash", "params": {"script": script}}}]}
    if params:
        body["params"] = params
    return {"workflow": body}


@pytest.fixture
def cli(tmp_path):
    store = f"sqlite:///{tmp_path / 'store.db'}"

    def run(*args, **kwargs):
        return legato_cli(*args, cwd=tmp_path, env_extra={"LEGATO_STORE": store}, **kwargs)

    run.tmp = tmp_path
    run.db = tmp_path / "store.db"
    return run


def write(cli, name: str, document: dict) -> str:
    (cli.tmp / name).write_text(json.dumps(document))
    return name


def logs_of(cli, instance_id: str) -> str:
    proc = cli("logs", instance_id)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_push_stores_versions_and_an_identical_push_stores_nothing(cli):
    write(cli, "greet.json", doc("echo one"))
    proc = cli("push", "greet.json")
    assert (proc.returncode, proc.stdout.strip()) == (0, "greet v1 stored (active)"), proc.stderr
    proc = cli("push", "greet.json")
    assert proc.returncode == 0
    assert "greet.json is identical to v1" in proc.stdout and "nothing new stored (active)" in proc.stdout
    write(cli, "greet.json", doc("echo two"))
    proc = cli("push", "--no-activate", "greet.json")
    assert proc.stdout.startswith("greet v2 stored (not active: `legato activate greet 2` makes it so)"), proc.stdout
    proc = cli("versions", "greet")
    lines = proc.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["*", "v1"], ["v2", lines[1].split()[1]]]
    assert lines[0].endswith("active") and not lines[1].endswith("active")
    listed = json.loads(cli("versions", "greet", "--json").stdout)
    assert [(v["version"], v["active"], v["steps"]) for v in listed] == [(1, True, 1), (2, False, 1)]
    proc = cli("activate", "greet", "2")
    assert (proc.returncode, proc.stdout.strip()) == (0, "greet v2 is active")
    assert json.loads(cli("versions", "greet", "--json").stdout)[1]["active"] is True
    pushed = json.loads(cli("push", "greet.json", "--json").stdout)
    assert (pushed["version"], pushed["new"], pushed["active"]) == (2, False, True)
    # A rollback: pushing the first document again is version 1 again, made active.
    write(cli, "greet.json", doc("echo one"))
    pushed = json.loads(cli("push", "greet.json", "--json").stdout)
    assert (pushed["version"], pushed["new"], pushed["active"]) == (1, False, True)


def test_push_refuses_an_invalid_definition_and_stores_nothing(cli):
    proc = cli("push", write(cli, "greet.json", doc("echo one")))
    assert proc.returncode == 0, proc.stderr
    write(cli, "bad.json", {"workflow": {"id": "bad", "steps": [{"step": {"id": "a", "type": "nosuch"}}]}})
    proc = cli("push", "bad.json")
    assert proc.returncode == 2 and "/workflow/steps/0/step/type" in proc.stderr, proc.stderr
    proc = cli("versions", "bad")
    assert proc.returncode == 2 and "no workflow 'bad'" in proc.stderr and "legato push FILE" in proc.stderr


def test_unknown_workflows_and_versions_say_what_exists(cli):
    write(cli, "greet.json", doc("echo one"))
    cli("push", "greet.json")
    write(cli, "greet.json", doc("echo two"))
    cli("push", "greet.json")
    for args in (("start", "greet", "--version", "7"), ("activate", "greet", "7")):
        proc = cli(*args)
        assert proc.returncode == 2, proc
        assert "workflow 'greet' has versions 1–2; version 7 does not exist" in proc.stderr, proc.stderr
    proc = cli("start", "nosuch")
    assert proc.returncode == 2 and "no workflow 'nosuch'" in proc.stderr
    proc = cli("start", "greet", "--version", "newest")
    assert proc.returncode == 2 and "--version: a version must be active, latest or a number" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_start_runs_a_stored_version_like_run(cli):
    write(cli, "greet.json", doc('echo "v1 says $who"', who="world"))
    cli("push", "greet.json")
    write(cli, "greet.json", doc('echo "v2 says $who"', who="world"))
    cli("push", "--no-activate", "greet.json")
    proc = cli("start", "greet", "-p", "who=you")
    assert proc.returncode == 0, proc.stderr
    assert "say | v1 says you" in proc.stdout and "SUCCEEDED" in proc.stdout
    for spec, expected in (("latest", 2), ("1", 1), ("2", 2), ("active", 1)):
        final = json.loads(cli("start", "greet", "--version", spec, "--json").stdout)
        assert (final["status"], final["version"]) == ("SUCCEEDED", expected), spec
        assert logs_of(cli, final["instance_id"]).splitlines()[-1] == f"v{expected} says world"
    write(cli, "fails.json", doc("echo broken >&2; exit 3", workflow_id="fails"))
    cli("push", "fails.json")
    proc = cli("start", "fails")
    assert proc.returncode == 1 and "FAILED" in proc.stdout


def test_run_pushes_then_starts(cli):
    write(cli, "greet.json", doc("echo one"))
    first = json.loads(cli("run", "greet.json", "--json").stdout)
    second = json.loads(cli("run", "greet.json", "--json").stdout)
    assert first["version"] == second["version"] == 1
    write(cli, "greet.json", doc("echo two"))
    third = json.loads(cli("run", "greet.json", "--json").stdout)
    assert third["version"] == 2
    listed = json.loads(cli("versions", "greet", "--json").stdout)
    assert [(v["version"], v["active"]) for v in listed] == [(1, False), (2, True)]


def test_no_wait_queues_the_instance_and_resume_runs_its_pinned_version(cli):
    """--no-wait creates the instance CREATED with no worker; a push of a new version before it
    runs changes nothing for it: `legato resume ID` runs the version it was started with."""
    write(cli, "greet.json", doc("echo pinned one"))
    cli("push", "greet.json")
    proc = cli("start", "greet", "--no-wait")
    assert proc.returncode == 0, proc.stderr
    instance_id = proc.stdout.splitlines()[0]
    assert f"a `legato worker` on this store runs it, or `legato resume {instance_id}`" in proc.stdout
    status = json.loads(cli("status", instance_id, "--json").stdout)
    assert (status["status"], status["version"]) == ("CREATED", 1)
    write(cli, "greet.json", doc("echo newer two"))
    assert cli("push", "greet.json").stdout.startswith("greet v2 stored (active)")
    proc = cli("resume", instance_id)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert logs_of(cli, instance_id).splitlines()[-1] == "pinned one"
    status = json.loads(cli("status", instance_id, "--json").stdout)
    assert (status["status"], status["version"]) == ("SUCCEEDED", 1)


def test_a_repeated_request_id_answers_with_the_existing_instance(cli):
    write(cli, "greet.json", doc("echo once"))
    cli("push", "greet.json")
    queued = cli("start", "greet", "--no-wait", "--request-id", "nightly-1").stdout.splitlines()[0]
    again = cli("start", "greet", "--no-wait", "--request-id", "nightly-1")
    assert again.returncode == 0
    assert f"request id 'nightly-1' already started instance {queued} (greet v1): CREATED" in again.stdout
    ran = cli("start", "greet", "--request-id", "nightly-1", "--json")  # runs the queued one, not a new one
    assert ran.returncode == 0 and json.loads(ran.stdout)["instance_id"] == queued
    done = cli("start", "greet", "--request-id", "nightly-1")
    assert done.returncode == 0 and f"already started instance {queued} (greet v1): SUCCEEDED" in done.stdout
    instances = json.loads(cli("list", "--json").stdout)
    assert [i["instance_id"] for i in instances] == [queued]
    assert logs_of(cli, queued).count("once") == 1


# -- a store written by the previous Legato ---------------------------------------------------------

def test_a_store_at_the_previous_revision_opens_and_keeps_its_history(cli):
    """A store at migration 0002 (before ancestors were kept) is migrated when opened: its
    versions and instances are all there, and new ones work beside them."""
    from alembic import command
    from alembic.config import Config

    from legato.plugins.sqlstore import store as module
    from legato.plugins.sqlstore.store import SqlStorage

    old = SqlStorage(f"sqlite:///{cli.db}")
    old._prepare_sqlite_file()
    config = Config()
    config.set_main_option("script_location", str(Path(module.__file__).parent / "migrations"))
    with old._engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0002")
    old._engine.dispose()
    conn = sqlite3.connect(cli.db)
    with conn:
        conn.execute("INSERT INTO legato_definition_versions VALUES ('greet', 1, ?, 1.0, 1)",
                     (json.dumps(doc("echo from the old store")),))
        conn.execute("INSERT INTO legato_instances (instance_id, workflow_id, version, status, run_id, params, "
                     "initiator, created_at, message, generation) VALUES ('0ld1nstance', 'greet', 1, 'SUCCEEDED', "
                     "1, '{}', 'manual', 2.0, '', 1)")
    conn.close()
    status = json.loads(cli("status", "0ld1nstance", "--json").stdout)
    assert (status["status"], status["parent"]) == ("SUCCEEDED", None)
    listed = json.loads(cli("versions", "greet", "--json").stdout)
    assert [(v["version"], v["active"]) for v in listed] == [(1, True)]
    final = json.loads(cli("start", "greet", "--json").stdout)
    assert (final["status"], final["version"]) == ("SUCCEEDED", 1)
    conn = sqlite3.connect(cli.db)
    try:
        assert conn.execute("SELECT version_num FROM legato_alembic_version").fetchall() == [(module.HEAD,)]
        assert conn.execute("SELECT count(*) FROM legato_instances").fetchone() == (2,)
    finally:
        conn.close()
