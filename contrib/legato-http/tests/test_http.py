"""The ``http`` step type, through the real engine, against a real HTTP server on 127.0.0.1.

Plain synchronous tests that drive trio themselves (no pytest-trio configuration needed).
"""

from __future__ import annotations

import base64
import json
import re
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trio

from legato.definition import DefinitionError
from legato.engine import Engine
from legato.plugin_manager import Plugins
from legato.storage import open_storage
from legato_http.client import decode_body
from legato_http.plugin import Http, host_allowed, parse_allowed_hosts

BIG = 2 * 1024 * 1024
MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def _no_operator_allow_list(monkeypatch):
    """The tests say their own allow-lists; one in the environment running them must not leak in."""
    monkeypatch.delenv("LEGATO_HTTP_ALLOWED_HOSTS", raising=False)


# -- the server ----------------------------------------------------------------------------------


class _Server:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request seen
        self.events: list[str] = []
        self.lock = threading.Lock()

    def hits(self, path: str) -> int:
        with self.lock:
            return sum(1 for _, p in self.requests if p == path)


def _handler(state: _Server):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest's output clean
            pass

        def _reply(self, status: int, body: bytes, ctype: str = "application/json", extra=()) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for name, value in extra:
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _any(self) -> None:
            path = self.path.split("?", 1)[0]
            with state.lock:
                state.requests.append((self.command, path))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if path == "/ok":
                self._reply(200, json.dumps({"ok": True, "rows": 3, "names": ["a", "b"]}).encode())
            elif path == "/notok":
                self._reply(200, json.dumps({"ok": False, "error": "quota exceeded"}).encode())
            elif path == "/text":
                self._reply(200, "héllo, world\n".encode(), "text/plain; charset=utf-8")
            elif path == "/badjson":
                self._reply(200, b"{not json", "application/json")
            elif path == "/big":
                self._reply(200, b"x" * BIG, "application/octet-stream")
            elif path == "/404":
                self._reply(404, b"the thing you asked for is not here", "text/plain")
            elif path == "/500":
                self._reply(500, b'{"error": "database on fire"}')
            elif path == "/429":
                self._reply(429, b"slow down", "text/plain", [("Retry-After", "1")])
            elif path == "/redirect":
                target = self.path.split("to=", 1)[1] if "to=" in self.path else "/ok"
                self._reply(302, b"", "text/plain", [("Location", target)])
            elif path == "/echo":
                raw_headers = {k.lower(): v.encode("latin-1").decode("utf-8") for k, v in self.headers.items()}
                self._reply(200, json.dumps({
                    "method": self.command,
                    "headers": raw_headers,
                    "body_b64": base64.b64encode(body).decode(),
                }).encode())
            elif path == "/slow":
                self._slow()
            else:
                self._reply(404, b"unknown endpoint", "text/plain")

        def _slow(self) -> None:
            """Answer after 30 s, unless the client hangs up first (then return at once)."""
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                readable, _, _ = select.select([self.connection], [], [], 0.05)
                if readable:
                    try:
                        gone = not self.connection.recv(1, socket.MSG_PEEK)
                    except OSError:
                        gone = True
                    if gone:
                        with state.lock:
                            state.events.append("slow: client went away")
                        self.close_connection = True
                        return
            self._reply(200, b'{"slow": true}')

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _any

    return Handler


@pytest.fixture(scope="module")
def server():
    state = _Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="test-http-server", daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


# -- the engine ------------------------------------------------------------------------------------

_plugins = None


def plugins() -> Plugins:
    global _plugins
    if _plugins is None:
        _plugins = Plugins()
        assert "http" in _plugins.step_types.types, (
            "the `http` entry point is not installed: pip install -e contrib/legato-http")
    return _plugins


def make_engine(tmp_path, settings=None) -> Engine:
    p = plugins()
    return Engine(open_storage("memory://", p), plugins=p, workspace=tmp_path, step_settings=settings)


def doc(params, *, retry=None, successors=None, extra_steps=(), wf_params=None) -> dict:
    step = {"id": "s", "type": "http", "params": params,
            "retry_policy": {"error_retry_limit": 0, "platform_retry_limit": 0,
                             "backoff": {"type": "fixed", "base": 0}, **(retry or {})}}
    if successors:
        step["transition"] = {"successors": successors}
    workflow = {"id": "http-test", "steps": [{"step": step}, *extra_steps]}
    if wf_params:
        workflow["params"] = wf_params
    return {"workflow": workflow}


def run(tmp_path, document, settings=None):
    engine = make_engine(tmp_path, settings)

    async def main():
        instance = await engine.execute(engine.load(document))
        attempts = await engine.storage.get_attempts(instance.instance_id)
        logs = await engine.storage.get_logs(instance.instance_id)
        return instance, attempts, "".join(chunk.text for chunk in logs)

    return trio.run(main)


def exhausted(attempt, failure: str) -> bool:
    """The attempt ended FATALLY_FAILED as a ``failure`` (USER_FAILED, PLATFORM_FAILED) with no retry
    of that class left: the engine names the class in the message (Maestro's StepRuntimeManager)."""
    return attempt.status.value == "FATALLY_FAILED" and f"({failure}, no " in attempt.message


def only(attempts, step_id="s"):
    mine = [a for a in attempts if a.step_id == step_id]
    return mine[-1], len(mine)


# -- success ---------------------------------------------------------------------------------------


def test_json_response_outputs_round_trip_and_feed_a_condition(server, tmp_path):
    reader = {"step": {"id": "reader", "type": "noop", "params": {
        "got": {"type": "MAP", "expression": "steps.s.outputs.body"}}}}
    never = {"step": {"id": "never", "type": "noop"}}
    document = doc({"url": f"{server.base}/ok"}, extra_steps=[reader, never], successors={
        "reader": "steps.s.outputs.status_code == 200", "never": "steps.s.outputs.status_code != 200"})
    instance, attempts, logs = run(tmp_path, document)
    assert instance.status.value == "SUCCEEDED"
    attempt, _ = only(attempts)
    assert attempt.status.value == "SUCCEEDED"
    out = attempt.outputs
    assert out["status_code"] == 200
    assert out["body"] == {"ok": True, "rows": 3, "names": ["a", "b"]}
    assert out["truncated"] is False
    assert out["headers"]["content-type"] == "application/json"
    assert all(name == name.lower() for name in out["headers"])
    assert json.loads(json.dumps(out)) == out
    reader_attempt, _ = only(attempts, "reader")
    assert reader_attempt.status.value == "SUCCEEDED"
    assert reader_attempt.params["got"] == {"ok": True, "rows": 3, "names": ["a", "b"]}
    assert not [a for a in attempts if a.step_id == "never" and a.status.value == "SUCCEEDED"]
    assert re.search(r"GET http://127\.0\.0\.1:\d+/ok sending\n", logs), logs
    assert re.search(r"GET http://127\.0\.0\.1:\d+/ok -> 200 \(\d+ bytes, \d+\.\d\ds\)\n", logs), logs


def test_text_body_is_text(server, tmp_path):
    _, attempts, _ = run(tmp_path, doc({"url": f"{server.base}/text", "method": "get"}))
    attempt, _ = only(attempts)
    assert attempt.status.value == "SUCCEEDED"
    assert attempt.outputs["body"] == "héllo, world\n"
    assert attempt.outputs["truncated"] is False


def test_json_content_type_that_does_not_parse_is_text(server, tmp_path):
    _, attempts, _ = run(tmp_path, doc({"url": f"{server.base}/badjson"}))
    attempt, _ = only(attempts)
    assert attempt.status.value == "SUCCEEDED"
    assert attempt.outputs["body"] == "{not json"


def test_big_body_is_truncated_at_max_body_bytes(server, tmp_path):
    _, attempts, logs = run(tmp_path, doc({"url": f"{server.base}/big"}))
    attempt, _ = only(attempts)
    assert attempt.status.value == "SUCCEEDED"
    assert attempt.outputs["truncated"] is True
    assert len(attempt.outputs["body"]) == MIB
    assert f"({MIB} bytes, truncated," in logs

    _, attempts, _ = run(tmp_path, doc({"url": f"{server.base}/ok", "max_body_bytes": 5}))
    attempt, _ = only(attempts)
    assert attempt.outputs["truncated"] is True
    assert attempt.outputs["body"] == '{"ok"'  # truncated JSON is text


def test_head_request_has_no_body(server, tmp_path):
    _, attempts, _ = run(tmp_path, doc({"url": f"{server.base}/ok", "method": "HEAD"}))
    attempt, _ = only(attempts)
    assert attempt.status.value == "SUCCEEDED"
    assert attempt.outputs["body"] == ""


# -- failures ----------------------------------------------------------------------------------------


def test_404_is_fatal_and_never_retried(server, tmp_path):
    before = server.hits("/404")
    _, attempts, _ = run(tmp_path, doc({"url": f"{server.base}/404"},
                                       retry={"error_retry_limit": 3, "platform_retry_limit": 3}))
    attempt, count = only(attempts)
    assert attempt.status.value == "FATALLY_FAILED"
    assert count == 1
    assert server.hits("/404") - before == 1
    assert "HTTP 404" in attempt.message
    assert "the thing you asked for is not here" in attempt.message
    assert attempt.outputs["status_code"] == 404  # kept for whoever looks at the failure


def test_500_is_a_platform_error_retried_per_platform_retry_limit(server, tmp_path):
    before = server.hits("/500")
    _, attempts, _ = run(tmp_path, doc({"url": f"{server.base}/500"},
                                       retry={"error_retry_limit": 0, "platform_retry_limit": 2}))
    attempt, count = only(attempts)
    assert exhausted(attempt, "PLATFORM_FAILED")
    assert count == 3  # the first attempt and two retries
    assert server.hits("/500") - before == 3
    assert "HTTP 500" in attempt.message and "database on fire" in attempt.message


def test_429_is_retryable(server, tmp_path):
    _, attempts, _ = run(tmp_path, doc({"url": f"{server.base}/429"}, retry={"platform_retry_limit": 1}))
    attempt, count = only(attempts)
    assert exhausted(attempt, "PLATFORM_FAILED")
    assert count == 2


def test_connection_refused_is_a_platform_error(tmp_path):
    with socket.socket() as sock:  # a port nothing listens on (once closed)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _, attempts, logs = run(tmp_path, doc({"url": f"http://127.0.0.1:{port}/", "timeout": 5}))
    attempt, count = only(attempts)
    assert exhausted(attempt, "PLATFORM_FAILED"), attempt.message
    assert count == 1
    assert "ConnectError" in attempt.message
    assert "failed after" in logs


def test_timeout_param_bounds_the_request(server, tmp_path):
    started = time.monotonic()
    _, attempts, _ = run(tmp_path, doc({"url": f"{server.base}/slow", "timeout": 0.5}))
    attempt, _ = only(attempts)
    assert time.monotonic() - started < 25, "the 0.5 s timeout did not end the 30 s request"  # a hang guard
    assert exhausted(attempt, "PLATFORM_FAILED")
    assert "timed out" in attempt.message


def test_redirects_are_not_followed_unless_asked(server, tmp_path):
    _, attempts, _ = run(tmp_path, doc({"url": f"{server.base}/redirect"}))
    attempt, _ = only(attempts)
    assert attempt.status.value == "FATALLY_FAILED"
    assert "follow_redirects" in attempt.message

    _, attempts, _ = run(tmp_path, doc({"url": f"{server.base}/redirect", "follow_redirects": True}))
    attempt, _ = only(attempts)
    assert attempt.status.value == "SUCCEEDED"
    assert attempt.outputs["body"]["ok"] is True


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_https_with_an_untrusted_certificate_is_a_platform_error(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)

    class Quiet(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):  # the refused handshake is expected
            pass

    httpd = Quiet(("127.0.0.1", 0), _handler(_Server()))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"https://127.0.0.1:{httpd.server_address[1]}/ok"
        _, attempts, logs = run(tmp_path, doc({"url": url, "timeout": 5}))
    finally:
        httpd.shutdown()
        httpd.server_close()
    attempt, _ = only(attempts)
    assert exhausted(attempt, "PLATFORM_FAILED"), attempt.message
    assert "CERTIFICATE_VERIFY_FAILED" in attempt.message


def test_credentials_in_the_url_are_masked_in_logs_and_messages(server, tmp_path):
    url = server.base.replace("http://", "http://bob:s3cret@") + "/404"
    _, attempts, logs = run(tmp_path, doc({"url": url}))
    attempt, _ = only(attempts)
    assert attempt.status.value == "FATALLY_FAILED"
    assert "s3cret" not in logs and "s3cret" not in attempt.message
    assert "http://***@127.0.0.1" in logs


# -- state_expr ----------------------------------------------------------------------------------------


def test_state_expr_maps_a_404_to_done(server, tmp_path):
    expr = "response.status_code == 404 ? 'DONE' : 'FATAL_ERROR'"
    _, attempts, _ = run(tmp_path, doc({"url": f"{server.base}/404", "state_expr": expr}))
    attempt, _ = only(attempts)
    assert attempt.status.value == "SUCCEEDED"
    assert attempt.outputs["status_code"] == 404


def test_state_expr_maps_a_200_with_ok_false_to_user_error(server, tmp_path):
    expr = "response.status_code == 200 && response.body.ok ? 'DONE' : 'USER_ERROR'"
    _, attempts, _ = run(tmp_path, doc({"url": f"{server.base}/notok", "state_expr": expr},
                                       retry={"error_retry_limit": 1}))
    attempt, count = only(attempts)
    assert exhausted(attempt, "USER_FAILED")
    assert count == 2  # user errors are retried under error_retry_limit
    assert "USER_ERROR" in attempt.message and "quota exceeded" in attempt.message

    _, attempts, _ = run(tmp_path, doc({"url": f"{server.base}/ok", "state_expr": expr}))
    assert only(attempts)[0].status.value == "SUCCEEDED"


def test_state_expr_giving_something_else_is_fatal(server, tmp_path):
    _, attempts, _ = run(tmp_path, doc({"url": f"{server.base}/ok", "state_expr": "'MAYBE'"},
                                       retry={"error_retry_limit": 3, "platform_retry_limit": 3}))
    attempt, count = only(attempts)
    assert attempt.status.value == "FATALLY_FAILED"
    assert count == 1
    assert "'MAYBE'" in attempt.message and "DONE" in attempt.message

    # An expression that fails on this response (no such key) is fatal too, and says why.
    _, attempts, _ = run(tmp_path, doc({"url": f"{server.base}/text", "state_expr": "response.body.ok ? 'DONE' : 'USER_ERROR'"}))
    attempt, _ = only(attempts)
    assert attempt.status.value == "FATALLY_FAILED"
    assert "state_expr failed" in attempt.message


README_EXPR = """response.status_code == 404 ? "DONE" :
response.status_code >= 500 ? "PLATFORM_ERROR" :
response.status_code != 200 ? "FATAL_ERROR" :
response.body.ok ? "DONE" : "USER_ERROR"
"""


@pytest.mark.parametrize(("path", "status", "failure"), [
    ("/404", "SUCCEEDED", None), ("/500", "FATALLY_FAILED", "PLATFORM_FAILED"), ("/429", "FATALLY_FAILED", None),
    ("/notok", "FATALLY_FAILED", "USER_FAILED"), ("/ok", "SUCCEEDED", None),
])
def test_the_readme_state_expr(server, tmp_path, path, status, failure):
    """With no retries, the expression's USER_ERROR / PLATFORM_ERROR end FATALLY_FAILED naming the
    class; its FATAL_ERROR is FATALLY_FAILED as it is."""
    _, attempts, _ = run(tmp_path, doc({"url": f"{server.base}{path}", "state_expr": README_EXPR}))
    attempt, _ = only(attempts)
    assert attempt.status.value == status, attempt.message
    assert (f"({failure}, no " in attempt.message) if failure else ("retry left" not in attempt.message)
    assert attempt.outputs["status_code"] == {"/404": 404, "/500": 500, "/429": 429}.get(path, 200)


def test_bad_state_expr_is_refused_when_the_definition_loads(server, tmp_path):
    engine = make_engine(tmp_path)
    with pytest.raises(DefinitionError) as info:
        engine.load(doc({"url": f"{server.base}/ok", "state_expr": "response.status_code == ? 'DONE'"}))
    problems = {p.pointer: p.message for p in info.value.problems}
    pointer = "/workflow/steps/0/step/params/state_expr"
    assert pointer in problems, problems
    assert re.search(r"CEL 1:\d+: syntax error", problems[pointer]), problems[pointer]


@pytest.mark.parametrize(("params", "pointer"), [
    ({"method": "FETCH"}, "/method"),
    ({"url": "ftp://127.0.0.1/file"}, "/url"),
    ({"url": "http:///nohost"}, "/url"),
    ({"timeout": 0}, "/timeout"),
    ({"max_body_bytes": -1}, "/max_body_bytes"),
    ({"headers": {"X-Bad": "a\r\nInjected: yes"}}, "/headers"),
    ({"headers": {"Bad Name": "x"}}, "/headers"),
    ({"json": {"a": 1}, "body": "text"}, ""),
])
def test_invalid_params_are_refused_at_load(server, tmp_path, params, pointer):
    engine = make_engine(tmp_path)
    with pytest.raises(DefinitionError) as info:
        engine.load(doc({"url": f"{server.base}/ok", **params}))
    pointers = [p.pointer for p in info.value.problems]
    assert f"/workflow/steps/0/step/params{pointer}" in pointers, [str(p) for p in info.value.problems]


def test_missing_url_is_refused_at_load(tmp_path):
    with pytest.raises(DefinitionError) as info:
        make_engine(tmp_path).load(doc({"method": "GET"}))
    assert "/workflow/steps/0/step/params/url" in [p.pointer for p in info.value.problems]


# -- the allow-list -------------------------------------------------------------------------------------


def test_a_host_off_the_allow_list_is_refused_without_sending(server, tmp_path):
    seen = len(server.requests)
    _, attempts, _ = run(tmp_path, doc({"url": f"{server.base}/ok"},
                                       retry={"error_retry_limit": 3, "platform_retry_limit": 3}),
                         settings={"http": {"allowed_hosts": ["example.com"]}})
    attempt, count = only(attempts)
    assert attempt.status.value == "FATALLY_FAILED"
    assert count == 1
    assert "host '127.0.0.1' is not on the operator's allow-list" in attempt.message
    assert len(server.requests) == seen, "the server saw a request from a refused step"


def test_the_allow_list_admits_listed_hosts_and_checks_redirects(server, tmp_path):
    settings = {"http": {"allowed_hosts": ["example.com", "127.0.0.1"]}}
    _, attempts, _ = run(tmp_path, doc({"url": f"{server.base}/ok"}), settings=settings)
    assert only(attempts)[0].status.value == "SUCCEEDED"

    # A redirect to a host off the list is refused before the second request is sent.
    port = server.base.rsplit(":", 1)[1]
    seen = server.hits("/ok")
    url = f"{server.base}/redirect?to=http://localhost:{port}/ok"
    _, attempts, _ = run(tmp_path, doc({"url": url, "follow_redirects": True}), settings=settings)
    attempt, _ = only(attempts)
    assert attempt.status.value == "FATALLY_FAILED"
    assert "'localhost' is not on the operator's allow-list" in attempt.message
    assert server.hits("/ok") == seen


def test_the_allow_list_comes_from_the_environment_when_settings_do_not_say(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LEGATO_HTTP_ALLOWED_HOSTS", "example.com, *.example.org")
    seen = len(server.requests)
    _, attempts, _ = run(tmp_path, doc({"url": f"{server.base}/ok"}))
    attempt, _ = only(attempts)
    assert attempt.status.value == "FATALLY_FAILED"
    assert "allow-list" in attempt.message
    assert len(server.requests) == seen
    # Settings win over the environment.
    _, attempts, _ = run(tmp_path, doc({"url": f"{server.base}/ok"}),
                         settings={"http": {"allowed_hosts": ["127.0.0.1"]}})
    assert only(attempts)[0].status.value == "SUCCEEDED"


def test_host_patterns(monkeypatch):
    monkeypatch.delenv("LEGATO_HTTP_ALLOWED_HOSTS", raising=False)
    patterns = parse_allowed_hosts(" API.example.com , *.corp.example ,")
    assert patterns == ["api.example.com", "*.corp.example"]
    assert host_allowed("api.example.com", patterns)
    assert host_allowed("API.Example.COM.", patterns)
    assert not host_allowed("example.com", patterns)
    assert not host_allowed("evil-api.example.com", patterns)
    assert host_allowed("a.corp.example", patterns)
    assert host_allowed("a.b.corp.example", patterns)
    assert not host_allowed("corp.example", patterns)
    assert not host_allowed("notcorp.example", patterns)
    assert not host_allowed("anything", [])
    assert host_allowed("anything", ["*"])
    assert host_allowed("::1", ["[::1]"])
    with pytest.raises(ValueError):
        parse_allowed_hosts(42)
    assert Http({"allowed_hosts": []}).allowed_hosts() == []  # an empty list allows nothing
    assert Http().allowed_hosts() is None  # no list at all allows everything
    monkeypatch.setenv("LEGATO_HTTP_ALLOWED_HOSTS", "  ")
    assert Http().allowed_hosts() is None
    monkeypatch.setenv("LEGATO_HTTP_ALLOWED_HOSTS", "a.example,b.example")
    assert Http().allowed_hosts() == ["a.example", "b.example"]
    assert Http({"allowed_hosts": ["c.example"]}).allowed_hosts() == ["c.example"]  # settings first


def test_settings_are_validated_a_string_is_not_an_allow_list():
    """Operator settings go through HttpSettings: a string is refused (not split, not iterated
    letter by letter), as is an unknown key, each named."""
    from legato.steptype import SettingsError

    with pytest.raises(SettingsError, match=r"http.allowed_hosts: must be a list of host names"):
        Http({"allowed_hosts": "c.example"})
    with pytest.raises(SettingsError, match=r"http.allowed_host: unknown setting \(did you mean `allowed_hosts`\?\)"):
        Http({"allowed_host": ["c.example"]})


# -- params are data ---------------------------------------------------------------------------------------

NASTY = "'; DROP TABLE users; -- $(rm -rf /) `id` && echo \"pwned\" | cat > /tmp/x \\ %s %% {} 'ü€'"


def test_headers_and_body_arrive_byte_for_byte(server, tmp_path):
    body = NASTY + "\n\ttabs, newlines\r\nand a NUL-free tail; $HOME $$ $${HOME}"
    params = {"url": f"{server.base}/echo", "method": "POST",
              "headers": {"X-Nasty": NASTY, "X-From-Param": "${who}", "Content-Type": "text/plain"},
              "body": body}
    document = doc(params, wf_params={"who": "Robert'); DROP TABLE Students;-- $(id)"})
    _, attempts, _ = run(tmp_path, document)
    attempt, _ = only(attempts)
    assert attempt.status.value == "SUCCEEDED", attempt.message
    echo = attempt.outputs["body"]
    assert echo["method"] == "POST"
    assert echo["headers"]["x-nasty"] == NASTY
    assert echo["headers"]["x-from-param"] == "Robert'); DROP TABLE Students;-- $(id)"
    # Legato interpolates `${…}` in params before the step runs, and `$$` is its escape for `$`
    # (so `$${HOME}` is a literal `${HOME}`); everything else arrives untouched.
    expected = NASTY + "\n\ttabs, newlines\r\nand a NUL-free tail; $HOME $ ${HOME}"
    assert base64.b64decode(echo["body_b64"]).decode("utf-8") == expected


def test_json_param_is_sent_as_json(server, tmp_path):
    payload = {"query": NASTY, "n": [1, 2.5, True, None], "nested": {"k": "v"}}
    _, attempts, _ = run(tmp_path, doc({"url": f"{server.base}/echo", "method": "PUT",
                                        "json": {"type": "MAP", "value": payload}}))
    attempt, _ = only(attempts)
    assert attempt.status.value == "SUCCEEDED", attempt.message
    echo = attempt.outputs["body"]
    assert echo["method"] == "PUT"
    assert echo["headers"]["content-type"] == "application/json"
    assert json.loads(base64.b64decode(echo["body_b64"])) == payload


def test_decode_body():
    assert decode_body(b'{"a": 1}', "application/json; charset=utf-8", False) == ({"a": 1}, '{"a": 1}')
    assert decode_body(b'{"a": 1}', "application/problem+json", False)[0] == {"a": 1}
    assert decode_body(b'{"a": 1}', "text/plain", False)[0] == '{"a": 1}'
    assert decode_body("é".encode("latin-1"), "text/plain; charset=ISO-8859-1", False)[0] == "é"
    assert decode_body(b"\xff", "text/plain; charset=nonsense", False)[0] == "\ufffd"
    assert decode_body(b"", "application/json", False)[0] == ""


# -- cancellation --------------------------------------------------------------------------------------------


def test_stopping_a_slow_request_ends_it(server, tmp_path):
    engine = make_engine(tmp_path)
    facts = {}

    async def main():
        definition = engine.load(doc({"url": f"{server.base}/slow"}))
        instance, _ = await engine.start(definition)
        running = trio.Event()

        def observer(event):
            if event.step_id == "s" and event.status == "RUNNING":
                running.set()

        async with trio.open_nursery() as nursery:
            run_ = await nursery.start(lambda task_status: engine.run(
                definition, instance, observer=observer, task_status=task_status))
            with trio.move_on_after(10):
                await running.wait()
            assert running.is_set()
            # Wait until the request is really on the wire.
            with trio.move_on_after(20):
                while not server.hits("/slow"):
                    await trio.sleep(0.02)
            await trio.sleep(0.3)
            run_.stop("stopped by the test")
        facts["attempts"] = await engine.storage.get_attempts(instance.instance_id)
        facts["logs"] = await engine.storage.get_logs(instance.instance_id)

    trio.run(main)
    attempt, _ = only(facts["attempts"])
    assert attempt.status.value == "STOPPED"  # /slow answers after 30 s: the step would have succeeded
    assert "sending" in "".join(c.text for c in facts["logs"])
    # The connection was closed: the server's handler noticed and returned.
    deadline = time.monotonic() + 20  # a hang guard
    while "slow: client went away" not in server.events and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "slow: client went away" in server.events


def test_the_entry_point_module_does_not_import_httpx():
    import sys

    code = "import sys, legato_http.plugin; print('httpx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
