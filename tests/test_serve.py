"""`legato serve`: a real server process on a loopback port and a temporary SQLite store, driven
with httpx as any client would (DESIGN §8).

Paths and verbs follow Maestro's controllers (maestro-server's ``controllers/*.java``): each test
names the one it follows. Waiting is on states the API answers (polled, bounded by HANG), never
on a sleep that is assumed long enough.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")

from .conftest import LEGATO, legato_cli  # noqa: E402
from .lines import Lines  # noqa: E402

HANG = 120.0  # seconds: bounds a hang, never a speed
W = "/api/v3/workflows"
SECRET = f"s3cret-{uuid.uuid4().hex}"


class Server:
    """A `legato serve --port 0` subprocess; ``lines`` is what it printed."""

    def __init__(self, tmp: Path, *args: str, env: dict | None = None) -> None:
        self.tmp = tmp
        self.store = f"sqlite:///{tmp / 'legato.db'}"
        environ = {k: v for k, v in os.environ.items() if k != "LEGATO_API_TOKEN"}
        environ.update({"LEGATO_STORE": self.store, "LEGATO_TEST_SECRET": SECRET, **(env or {})})
        self.proc = subprocess.Popen([LEGATO, "serve", "--port", "0", "--workspace", str(tmp / "runs"), *args],
                                     cwd=tmp, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []
        self.reader = Lines(self.proc.stdout, self.lines)
        try:
            line = self.expect("listening on ")
        except BaseException:  # a server that never listened is not left running
            self.proc.kill()
            self.proc.wait()
            raise
        self.url = line.split("listening on ")[1].split()[0]
        token_line = next((x for x in self.lines if "API token (generated" in x), None)
        self.token = token_line.rsplit(": ", 1)[1].strip() if token_line else os.environ.get("LEGATO_API_TOKEN")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=HANG)

    def expect(self, text: str) -> str:
        line = self.reader.wait_for(text, HANG)
        assert line is not None, (f"the server {'exited' if self.reader.ended else 'never said'} {text!r}:\n"
                                  + self.reader.text())
        return line

    def push(self, doc: dict) -> dict:
        r = self.http.post(W, json=doc)
        assert r.status_code in (200, 201), r.text
        return r.json()

    def start(self, wid: str, version="active", **body) -> dict:
        r = self.http.post(f"{W}/{wid}/versions/{version}/actions/start", json=body)
        assert r.status_code in (200, 201), r.text
        return r.json()

    def wait_status(self, wid: str, iid: str, statuses: set[str]) -> dict:
        deadline = time.monotonic() + HANG
        while True:
            got = self.http.get(f"{W}/{wid}/instances/{iid}").json()
            if got["status"] in statuses:
                return got
            assert got["status"] not in ("FAILED", "STOPPED", "TIMED_OUT"), got
            assert time.monotonic() < deadline, f"instance {iid} never reached {statuses}: {got}"
            time.sleep(0.02)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.finish()

    def finish(self) -> int:
        self.proc.wait(timeout=HANG)
        self.reader.join(HANG)  # every line it wrote is in self.lines
        self.http.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.http.close()


def bash(sid: str, script: str, then: str | None = None, **params) -> dict:
    step = {"id": sid, "type": "bash", "params": {"script": script, **params}}
    if then:
        step["transition"] = {"successors": {then: "true"}}
    return {"step": step}


def hello(wid: str = "hello") -> dict:
    return {"workflow": {"id": wid, "params": {"who": {"type": "STRING", "value": "world"}}, "steps": [
        bash("greet", 'echo "hello $who"; echo "line 2"; echo "greeted=$who" >> "$LEGATO_OUTPUT"', then="done"),
        bash("done", 'echo "done" >&2'),
    ]}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("serve"))
    yield s
    s.kill()


def test_the_token_is_generated_once_stored_0600_and_guards_every_change(server):
    """Mutating calls without the token are 401, with a wrong one 403; reads need none."""
    path = server.tmp / "api-token"
    assert path.read_text().strip() == server.token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    anonymous = httpx.Client(base_url=server.url, timeout=HANG)
    r = anonymous.post(W, json=hello())
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]["message"]
    r = anonymous.post(W, json=hello(), headers={"Authorization": "Bearer nope"})
    assert r.status_code == 403 and r.json() == {"error": {"status": 403, "message": "wrong API token"}}
    assert anonymous.get(f"{W}/nothing/versions").status_code == 404  # a read: no token asked
    anonymous.close()


def test_push_validates_as_the_cli_does_and_keeps_versions(server, tmp_path):
    """WorkflowController (create, get versions) and WorkflowActionController (validate, activate):
    an invalid definition answers 422 with the very pointers and messages `legato validate --json`
    prints for the same document."""
    bad = {"workflow": {"id": "bad", "steps": [{"step": {"id": "a", "type": "nope"}},
                                               bash("b", "true", then="missing")]}}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    cli = json.loads(legato_cli("validate", "--json", str(tmp_path / "bad.json")).stdout)
    for method, path in (("POST", W), ("PUT", W + "/actions/validate")):
        r = server.http.request(method, path, json=bad)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["problems"] == cli["problems"] and len(cli["problems"]) >= 2
        assert error["pointer"] == cli["problems"][0]["pointer"]
    r = server.http.post(W, content=b'{"workflow": {"id": "x",', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "invalid JSON" in r.json()["error"]["problems"][0]["message"]

    r = server.http.put(W + "/actions/validate", json=hello("versions"))
    assert r.status_code == 200 and r.json()["valid"] and r.json()["steps"] == 2
    r = server.http.post(W, json=hello("versions"))
    assert r.status_code == 201 and r.json()["version"] == 1 and r.json()["new"]
    r = server.http.post(W, json=hello("versions"))
    assert r.status_code == 200 and r.json()["version"] == 1 and not r.json()["new"]
    second = hello("versions")
    second["workflow"]["steps"].append(bash("third", "true"))
    yaml_text = json.dumps(second)  # JSON is YAML: sent as YAML it reads the same
    r = server.http.post(W + "?activate=false", content=yaml_text, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 201 and r.json()["version"] == 2 and not r.json()["active"]

    versions = server.http.get(f"{W}/versions/versions").json()
    assert [(v["version"], v["active"]) for v in versions] == [(1, True), (2, False)]
    assert server.http.get(f"{W}/versions/versions/active").json()["version"] == 1
    latest = server.http.get(f"{W}/versions/versions/latest").json()
    assert latest["version"] == 2 and latest["definition"]["workflow"]["steps"][2]["step"]["id"] == "third"
    r = server.http.put(f"{W}/versions/versions/2/actions/activate")
    assert r.status_code == 200 and r.json()["active"]
    assert server.http.get(f"{W}/versions/versions/active").json()["version"] == 2
    r = server.http.get(f"{W}/versions/versions/7")
    assert r.status_code == 404 and "version 7 does not exist" in r.json()["error"]["message"]


def test_start_runs_to_succeeded_and_a_repeated_request_id_answers_with_it(server):
    """WorkflowActionController.startWorkflowInstance with a request id, then
    WorkflowInstanceController (instance, runs) and StepInstanceController (steps, attempts)."""
    server.push(hello())
    started = server.start("hello", params={"who": "api"}, request_id="req-1")
    assert started["created"] and started["status"] == "CREATED"
    iid = started["instance_id"]
    final = server.wait_status("hello", iid, {"SUCCEEDED"})
    assert final["steps"]["greet"]["outputs"] == {"greeted": "api"}
    again = server.http.post(f"{W}/hello/versions/active/actions/start", json={"request_id": "req-1"})
    assert again.status_code == 200 and again.json()["instance_id"] == iid and again.json()["created"] is False
    assert again.json()["status"] == "SUCCEEDED"
    page = server.http.get(f"{W}/hello/instances").json()
    assert [i["instance_id"] for i in page["items"]].count(iid) == 1

    steps = server.http.get(f"{W}/hello/instances/{iid}/steps").json()
    assert {k: v["status"] for k, v in steps.items()} == {"greet": "SUCCEEDED", "done": "SUCCEEDED"}
    step = server.http.get(f"{W}/hello/instances/{iid}/steps/greet").json()
    assert step["status"] == "SUCCEEDED" and [a["attempt"] for a in step["attempts"]] == [1]
    attempts = server.http.get(f"{W}/hello/instances/{iid}/steps/greet/attempts").json()
    assert attempts[0]["params"]["script"].startswith("echo")
    one = server.http.get(f"{W}/hello/instances/{iid}/runs/1/steps/greet/attempts/1").json()
    assert one["status"] == "SUCCEEDED" and one["run_id"] == 1
    runs = server.http.get(f"{W}/hello/instances/{iid}/runs").json()
    assert [r["run_id"] for r in runs] == [1] and set(runs[0]["steps"]) == {"greet", "done"}
    assert server.http.get(f"{W}/hello/instances/{iid}/runs/1").json()["steps"]["done"]["status"] == "SUCCEEDED"
    assert server.http.get(f"{W}/hello/instances/{iid[:10]}").json()["instance_id"] == iid  # a unique prefix


def test_bad_input_and_unknown_ids_answer_json_errors(server):
    server.push(hello())
    r = server.http.post(f"{W}/hello/versions/active/actions/start", json={"params": {"who": 3}, "oops": 1})
    assert r.status_code == 422 and r.json()["error"]["pointer"] == "/oops"
    r = server.http.post(f"{W}/hello/versions/active/actions/start", content=b"{nope")
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]["message"]
    r = server.http.post(f"{W}/hello/versions/active/actions/start", json={"params": {"nobody": {"x": 1}}})
    assert r.status_code in (201, 422)  # an added param is Maestro's; what is refused is located
    r = server.http.post(f"{W}/nope/versions/active/actions/start", json={})
    assert r.status_code == 404 and "push its definition first" in r.json()["error"]["message"]
    for path in (f"{W}/hello/instances/0000nothing", f"{W}/other/instances/0000nothing/steps",
                 f"{W}/hello/versions/zero", "/api/v3/nothing"):
        r = server.http.get(path)
        assert r.status_code == 404, path
        assert set(r.json()["error"]) >= {"status", "message"} and "Traceback" not in r.text
    assert server.http.get(f"{W}/hello/instances?cursor=zz").status_code == 422
    assert server.http.get(f"{W}/hello/instances?first=0").status_code == 422
    assert server.http.delete(f"{W}/hello/versions").status_code == 405


def test_instances_come_a_page_at_a_time_newest_first(server):
    """WorkflowInstanceController.getWorkflowInstances: cursor pagination over every instance, once each."""
    server.push(hello("paged"))
    ids = [server.start("paged")["instance_id"] for _ in range(7)]
    seen, cursor = [], None
    while True:
        r = server.http.get(f"{W}/paged/instances", params={"first": 3, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 3
        seen += [(i["created_at"], i["instance_id"]) for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(i for _, i in seen) == sorted(ids)
    assert seen == sorted(seen, reverse=True)
    for iid in ids:
        server.wait_status("paged", iid, {"SUCCEEDED"})
    done = server.http.get(f"{W}/paged/instances", params={"status": "SUCCEEDED", "first": 100}).json()
    assert len(done["items"]) == 7


def test_logs_are_read_from_an_offset_to_tail_them(server):
    """The logs of an instance, of a step, from an offset (what a follower asks again with)."""
    server.push(hello())
    iid = server.start("hello")["instance_id"]
    server.wait_status("hello", iid, {"SUCCEEDED"})
    path = f"{W}/hello/instances/{iid}/logs"
    everything = server.http.get(path).json()
    text = "".join(c["text"] for c in everything["chunks"])
    assert "hello world" in text and "line 2" in text and "done" in text
    n = everything["next_offset"]
    assert n == len(everything["chunks"]) >= 2
    assert server.http.get(path, params={"offset": n}).json() == {"chunks": [], "next_offset": n}
    tail = server.http.get(path, params={"offset": 1}).json()
    assert tail["chunks"] == everything["chunks"][1:]
    greet = server.http.get(path, params={"step_id": "greet", "attempt": 1}).json()["chunks"]
    assert greet and {c["step_id"] for c in greet} == {"greet"}
    assert server.http.get(path, params={"step_id": "nope"}).status_code == 404


def test_no_answer_holds_a_secret_value(server):
    """A secret param is stored as its reference; what the step prints or outputs is masked."""
    doc = {"workflow": {"id": "secretive", "params": {
        "token": {"type": "STRING", "secret": True, "value": "env:LEGATO_TEST_SECRET"}}, "steps": [
        bash("use", 'echo "token is $token"; echo "seen=$token" >> "$LEGATO_OUTPUT"')]}}
    server.push(doc)
    iid = server.start("secretive")["instance_id"]
    server.wait_status("secretive", iid, {"SUCCEEDED"})
    base = f"{W}/secretive/instances/{iid}"
    answers = [server.http.get(p).text for p in (
        base, base + "/steps", base + "/steps/use", base + "/steps/use/attempts", base + "/runs", base + "/runs/1",
        base + "/runs/1/steps/use/attempts/1", base + "/logs", f"{W}/secretive/instances",
        f"{W}/secretive/versions/active", f"{W}/secretive/versions")]
    assert "token is ***" in answers[7]
    assert all(SECRET not in a for a in answers)
    assert "env:LEGATO_TEST_SECRET" in answers[0]  # the reference, which is no secret


def test_openapi_document_validates_and_every_path_answers(server):
    """Every operation of /openapi.json is called here with real ids and answers (not 404 nor 500);
    the document validates as OpenAPI 3.1; /docs is a page that reads it (no CDN)."""
    from openapi_spec_validator import validate

    spec = server.http.get("/openapi.json").json()
    validate(spec)
    server.push(hello("every"))
    iid = server.start("every", request_id="every-1")["instance_id"]
    server.wait_status("every", iid, {"SUCCEEDED"})
    values = {"workflowId": "every", "version": "1", "instanceId": iid, "runId": "1", "stepId": "greet",
              "attempt": "1", "tag": "every-tag", "name": "every-signal", "seq": "1"}
    bodies = {("post", W): hello("every"), ("put", W + "/actions/validate"): hello("every"),
              ("post", W + "/{workflowId}/versions/{version}/actions/start"): {"request_id": "every-1"},
              ("post", "/api/v3/tag-permits"): {"tag": "every-tag", "max_allowed": 3},
              ("post", "/api/v3/signals"): {"name": "every-signal", "params": {"n": 1}}}
    called = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            url = path.format(**{name: values[name] for name in values if "{" + name + "}" in path})
            r = server.http.request(method, url, json=bodies.get((method, path)))
            # Answered: stop or kill of the ended instance is a 409 that says so, never a 404 or a 500.
            assert r.status_code not in (404, 405, 500), f"{method.upper()} {url}: {r.status_code} {r.text}"
            assert str(r.status_code) in op["responses"], (method, path, r.status_code, r.text)
            assert r.status_code < 400 or set(r.json()["error"]) >= {"status", "message"}
            called.append((method, path))
    assert len(called) == sum(len(item) for item in spec["paths"].values()) >= 27
    page = server.http.get("/docs")
    assert page.status_code == 200 and 'fetch("/openapi.json")' in page.text and "http" not in page.text.split(
        "<script>")[1].split("fetch(")[0]


def test_docs_api_md_is_the_openapi_document(server):
    """docs/api.md is generated from the document (`python -m legato.server.openapi`): kept in step."""
    from legato.server.openapi import markdown

    from .conftest import ROOT

    spec = server.http.get("/openapi.json").json()
    assert (ROOT / "docs" / "api.md").read_text(encoding="utf-8") == markdown(spec), \
        "docs/api.md is stale: regenerate it with `python -m legato.server.openapi > docs/api.md`"


def test_sigterm_during_a_running_step_loses_nothing(tmp_path):
    """SIGTERM while a step runs: the step finishes within the grace, the server exits 0 handing
    the instance back; the next server runs the rest, every step exactly once (the ledger).
    Also: --no-auth says so loudly and takes changes without a token."""
    ledger, release, started = tmp_path / "ledger", tmp_path / "release", tmp_path / "started"
    doc = {"workflow": {"id": "slow", "steps": [
        bash("a", f'echo "$LEGATO_IDEMPOTENCY_KEY" >> {ledger}; touch {started}; '
                  f'while [ ! -e {release} ]; do sleep 0.02; done', then="b"),
        bash("b", f'echo "$LEGATO_IDEMPOTENCY_KEY" >> {ledger}')]}}
    s = Server(tmp_path, "--no-auth", "--grace", "60")
    try:
        assert any("WARNING: --no-auth" in line for line in s.lines)
        s.push(doc)
        iid = s.start("slow")["instance_id"]
        deadline = time.monotonic() + HANG
        while not started.exists():
            assert time.monotonic() < deadline, "step a never started"
            time.sleep(0.02)
        s.proc.send_signal(signal.SIGTERM)
        s.expect("SIGTERM: stopping")
        release.touch()
        assert s.finish() == 0, "".join(s.lines)
        assert any("handed back unfinished" in line for line in s.lines), "".join(s.lines)
    finally:
        s.kill()
    first = "".join(s.lines)
    s = Server(tmp_path, "--no-auth")
    try:
        final = s.wait_status("slow", iid, {"SUCCEEDED"})
        assert {k: v["status"] for k, v in final["steps"].items()} == {"a": "SUCCEEDED", "b": "SUCCEEDED"}
        assert ledger.read_text().split() == [f"{iid}:a:1", f"{iid}:b:1"], first
        assert s.terminate() == 0
    finally:
        s.kill()


def blocking(wid: str, tmp: Path) -> dict:
    """a waits (its process runs) until the file ``release`` exists, having touched ``started.<instance>``; then b."""
    return {"properties": {"run_strategy": "parallel"}, "workflow": {"id": wid, "steps": [
        bash("a", f'touch {tmp}/started.$LEGATO_INSTANCE_ID; while [ ! -e {tmp}/release ]; do sleep 0.02; done',
             then="b"),
        bash("b", "true")]}}


def wait_file(path: Path) -> None:
    deadline = time.monotonic() + HANG
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_stop_kill_skip_and_restart_from_the_api(server, tmp_path):
    """WorkflowInstanceActionController (stop, kill, restart) and StepInstanceActionController
    (skip): applied by the server's worker while the steps run; the call waits until applied."""
    server.push(blocking("acted", tmp_path))
    ids = [server.start("acted")["instance_id"] for _ in range(3)]
    for iid in ids:
        wait_file(tmp_path / f"started.{iid}")
    base = f"{W}/acted/instances"
    r = server.http.put(f"{base}/{ids[0]}/actions/stop")
    assert r.status_code == 200 and r.json()["outcome"].startswith("applied"), r.text
    assert r.json()["requested_by"].endswith("via api")
    assert server.wait_status("acted", ids[0], {"STOPPED"})["steps"]["a"]["status"] == "STOPPED"
    r = server.http.put(f"{base}/{ids[1]}/actions/kill")
    assert r.status_code == 200, r.text
    server.wait_status("acted", ids[1], {"FAILED"})
    r = server.http.put(f"{base}/{ids[2]}/steps/a/actions/skip")
    assert r.status_code == 200, r.text
    final = server.wait_status("acted", ids[2], {"SUCCEEDED"})
    assert (final["steps"]["a"]["status"], final["steps"]["b"]["status"]) == ("SKIPPED", "SUCCEEDED")

    r = server.http.put(f"{base}/{ids[0]}/actions/stop")
    assert r.status_code == 409 and "already ended STOPPED" in r.json()["error"]["message"]
    r = server.http.put(f"{base}/{ids[2]}/steps/nope/actions/skip")
    assert r.status_code == 404
    (tmp_path / "release").touch()
    r = server.http.post(f"{base}/{ids[0]}/actions/restart", json={"mode": "RESTART_FROM_INCOMPLETE"})
    assert r.status_code in (200, 202), r.text
    again = server.wait_status("acted", ids[0], {"SUCCEEDED"})
    assert again["run_id"] == 2
    runs = server.http.get(f"{base}/{ids[0]}/runs").json()
    assert [r["run_id"] for r in runs] == [1, 2] and runs[0]["steps"]["a"]["status"] == "STOPPED"
    assert server.http.post(f"{base}/{ids[0]}/actions/restart", json={"mode": "nope"}).status_code == 422
    anonymous = httpx.post(server.url + f"{base}/{ids[1]}/actions/restart", json={})
    assert anonymous.status_code == 401


def test_tag_permits_are_set_read_and_removed(server):
    """TagPermitController: POST /api/v3/tag-permits, GET and DELETE /api/v3/tag-permits/{tag}."""
    r = server.http.post("/api/v3/tag-permits", json={"tag": "db", "max_allowed": 2})
    assert r.status_code == 200 and r.json()["max_allowed"] == 2 and r.json()["set_by"].endswith("via api")
    assert server.http.get("/api/v3/tag-permits/db").json()["max_allowed"] == 2
    assert "db" in [p["tag"] for p in server.http.get("/api/v3/tag-permits").json()]
    r = server.http.post("/api/v3/tag-permits", json={"tag": "db", "max_allowed": -1})
    assert r.status_code == 422 and r.json()["error"]["pointer"] == "/max_allowed"
    assert server.http.delete("/api/v3/tag-permits/db").status_code == 200
    assert server.http.get("/api/v3/tag-permits/db").status_code == 404
    assert server.http.delete("/api/v3/tag-permits/db").status_code == 404


def test_a_port_in_use_is_refused_saying_so(server):
    port = server.url.rsplit(":", 1)[1]
    proc = legato_cli("serve", "--port", port, "--no-auth", "--store", server.store, cwd=server.tmp, timeout=HANG)
    assert proc.returncode == 2 and f"cannot listen on 127.0.0.1:{port}: Address already in use" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def read_sse(lines):
    """(event, data, id) of each message of a text/event-stream's lines, as they come, until it closes."""
    kind, data, ident = None, [], None
    for line in lines:
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line.startswith("id: "):
            ident = line[4:]
        elif line == "" and kind:
            yield kind, json.loads("\n".join(data)), ident
            kind, data, ident = None, [], None


def test_an_instance_streams_its_events_live_then_ends(server, tmp_path):
    """GET …/events (the web UI's live updates, Server-Sent Events): opened while step ``a`` runs, it
    says where it starts (`hello`), then streams the rest of the timeline in order as it is
    committed, the instance's new status, and `end` once the instance has ended; with `after` (or
    Last-Event-ID) it replays from there. The timeline, the workflows list, the summary view and
    the graph read the same instance."""
    server.push(blocking("streamed", tmp_path))
    iid = server.start("streamed")["instance_id"]
    wait_file(tmp_path / f"started.{iid}")
    base = f"{W}/streamed/instances/{iid}"
    with server.http.stream("GET", base + "/events") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        assert next(lines) == "retry: 2000"
        messages = read_sse(lines)
        kind, hello, first_id = next(messages)  # the stream is open: now let the step end
        (tmp_path / "release").touch()
        rest = list(messages)
    assert kind == "hello" and first_id == str(hello["offset"])
    timeline = server.http.get(base + "/timeline").json()
    assert timeline["total"] == timeline["next_offset"] == len(timeline["events"])
    streamed = [e for kind, data, _ in rest if kind == "timeline" for e in data["events"]]
    assert streamed == timeline["events"][hello["offset"]:]  # exactly what came after, in order
    assert [(e["step_id"], e["status"]) for e in streamed][-1] == (None, "SUCCEEDED")
    assert ("a", "SUCCEEDED") in [(e["step_id"], e["status"]) for e in streamed]
    assert rest[-1][0] == "end" and rest[-1][1]["status"] == "SUCCEEDED"
    assert any(kind == "instance" and data["status"] == "SUCCEEDED" for kind, data, _ in rest)

    with server.http.stream("GET", base + "/events", headers={"Last-Event-ID": "3"}) as r:
        replay = list(read_sse(r.iter_lines()))
    assert replay[0][1] == {"offset": 3}
    assert [e for kind, data, _ in replay if kind == "timeline" for e in data["events"]] == timeline["events"][3:]
    assert server.http.get(base + "/timeline", params={"last": 2}).json()["events"] == timeline["events"][-2:]
    assert server.http.get(base + "/timeline", params={"offset": 1, "limit": 2}).json()["events"] == \
        timeline["events"][1:3]

    summary = server.http.get(base, params={"view": "summary"}).json()
    assert summary["status"] == "SUCCEEDED" and "steps" not in summary
    graph = server.http.get(base + "/graph").json()
    assert [(n["id"], n["status"], n["kind"]) for n in graph["nodes"]] == [("a", "SUCCEEDED", "step"),
                                                                           ("b", "SUCCEEDED", "step")]
    assert graph["edges"] == [["a", "b", ""]]
    assert server.http.get(base + "/graph", params={"scope": "a"}).status_code == 404
    listed = {w["workflow_id"]: w for w in server.http.get(W).json()}
    assert listed["streamed"]["run_strategy"] == "PARALLEL" and listed["streamed"]["active_version"] == 1
    assert listed["streamed"]["recent"][0]["instance_id"] == iid
    assert server.http.get(f"{W}/nope/instances/{iid}/events").status_code == 404


def test_a_loop_is_one_node_with_its_iterations_counted(server):
    """GET …/graph: a foreach is one node with its iterations by state and its total; with
    ``scope`` its body's steps, each counted over the iterations."""
    server.push({"workflow": {"id": "looped", "steps": [
        {"foreach": {"id": "each", "params": {"loop_params": {"type": "MAP", "value": {
            "i": {"type": "LONG_ARRAY", "value": [1, 2, 3]}}}}, "steps": [bash("job", "true")]}}]}})
    iid = server.start("looped")["instance_id"]
    server.wait_status("looped", iid, {"SUCCEEDED"})
    graph = server.http.get(f"{W}/looped/instances/{iid}/graph").json()
    (node,) = graph["nodes"]
    assert (node["kind"], node["iterations"], node["total"]) == ("foreach", {"SUCCEEDED": 3}, 3)
    body = server.http.get(f"{W}/looped/instances/{iid}/graph", params={"scope": "each"}).json()
    assert [(n["id"], n["counts"]) for n in body["nodes"]] == [("job", {"SUCCEEDED": 3})]
    one = server.http.get(f"{W}/looped/instances/{iid}/graph", params={"scope": "each/2"}).json()
    assert [(n["id"], n["status"]) for n in one["nodes"]] == [("job", "SUCCEEDED")]


def test_a_loop_inside_a_loops_body_opens_in_its_turn(server):
    """GET …/graph with a nested ``scope`` (``outer/2/inner``, then ``outer/2/inner/1``): the inner
    foreach of one outer iteration, its body counted over its own iterations, then one of them; a
    scope that names no loop of that body is a 404 saying what a scope is."""
    leaf = {"step": {"id": "leaf", "type": "noop"}}
    server.push({"workflow": {"id": "nested", "steps": [
        {"foreach": {"id": "outer", "params": {"loop_params": {"type": "MAP", "value": {
            "k": {"type": "LONG_ARRAY", "value": [1, 2]}}}}, "steps": [
            {"foreach": {"id": "inner", "params": {"loop_params": {"type": "MAP", "value": {
                "m": {"type": "LONG_ARRAY", "value": [1, 2, 3]}}}}, "steps": [leaf]}}]}}]}})
    iid = server.start("nested")["instance_id"]
    server.wait_status("nested", iid, {"SUCCEEDED"})
    graph = f"{W}/nested/instances/{iid}/graph"
    body = server.http.get(graph, params={"scope": "outer/2"}).json()
    assert [(n["id"], n["kind"], n["iterations"]) for n in body["nodes"]] == [("inner", "foreach", {"SUCCEEDED": 3})]
    inner = server.http.get(graph, params={"scope": "outer/2/inner"}).json()
    assert [(n["id"], n["counts"]) for n in inner["nodes"]] == [("leaf", {"SUCCEEDED": 3})]
    one = server.http.get(graph, params={"scope": "outer/2/inner/3"}).json()
    assert [(n["id"], n["status"]) for n in one["nodes"]] == [("leaf", "SUCCEEDED")]
    for wrong in ("outer/2/leaf", "outer/x/inner", "inner"):
        r = server.http.get(graph, params={"scope": wrong})
        assert r.status_code == 404 and "scope" in r.json()["error"]["message"], (wrong, r.text)


def test_the_web_ui_is_served_from_the_package_and_reaches_no_other_host(server):
    """`/` is the web UI's page; every script and style it loads is served from `/ui/` (shipped in
    the wheel, with the vendored libraries' licenses) and names no other host (no CDN): it works
    offline. An unknown asset is a 404."""
    import re

    from legato.server.ui import ASSETS

    page = server.http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    loaded = re.findall(r'(?:src|href)="([^"#]+)"', page.text)
    assert "/ui/app.js" in loaded and "/ui/vendor/dagre.min.js" in loaded
    for url in loaded:
        assert url.startswith("/ui/") or url.startswith("data:"), url
    for name, kind in ASSETS.items():
        r = server.http.get(f"/ui/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), name
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", r.text), f"{name} names another host"
    assert "MIT" in server.http.get("/ui/vendor/dagre.LICENSE").text
    assert server.http.get("/ui/nothing.js").status_code == 404
    assert server.http.get("/ui/../app.py").status_code == 404
