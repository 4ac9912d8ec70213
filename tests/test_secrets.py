"""Secrets stay secret (DESIGN §10): secret params reach steps, and no surface shows their values.

Each end-to-end test runs ``legato`` as a user would (a SQLite store, a workspace and a TMPDIR of
its own), with steps that print the secrets, write them into their outputs and fail with them in
their error messages. Then it searches every surface for each secret value (and its base64):
the raw bytes of the SQLite database and its WAL, ``legato status --json``, ``legato list
--json``, ``legato logs``, the plain output of ``legato run``, every file left in the workspace
(the notebook's output copy among them) and in TMPDIR (crash reports). Each step also writes the
SHA-256 of what it received, so the test knows the step got the real value.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from legato.definition import DefinitionError
from legato.secrets import MASK, Secrets, mask_known

from .conftest import IMAGE, LEGATO, ROOT, docker_problem, kernel_problem, require_component

TOKEN = f"tok-{uuid.uuid4().hex}"
KEY = f'k3y/{uuid.uuid4().hex[:12]}"quote\\slash'  # quotes and a backslash: escaped forms must be masked too
STEP_SECRET = f"pw-{uuid.uuid4().hex}"
SECRETS = (TOKEN, KEY, STEP_SECRET)
AWS = f"aws-{uuid.uuid4().hex}"  # in the worker's environment, for no step


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def forms(value: str) -> list[bytes]:
    """What must appear nowhere: the value and its base64."""
    return [value.encode(), base64.b64encode(value.encode()).rstrip(b"=")]


class Legato:
    """``legato`` in a directory of its own: store, workspace, TMPDIR (for crash reports)."""

    def __init__(self, tmp: Path, **env: str) -> None:
        self.tmp = tmp
        self.db = tmp / "legato.db"
        self.workspace = tmp / "ws"
        (tmp / "tmp").mkdir()
        self.key_file = tmp / "key.txt"
        self.key_file.write_text(KEY + "\n")  # one trailing newline is not part of the secret
        self.env = {**os.environ, "LEGATO_STORE": f"sqlite:///{self.db}", "TMPDIR": str(tmp / "tmp"),
                    "LEGATO_TEST_TOKEN": TOKEN, "LEGATO_TEST_STEP_SECRET": STEP_SECRET, "COLUMNS": "200", **env}
        self.seen: list[str] = []  # everything the CLI printed

    def __call__(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([LEGATO, *args], cwd=self.tmp, capture_output=True, text=True, timeout=180,
                              env={**self.env, **(env or {})})
        self.seen += [proc.stdout, proc.stderr]
        return proc

    def write(self, doc: dict, name: str = "wf.json") -> str:
        path = self.tmp / name
        path.write_text(json.dumps(doc))
        return str(path)

    def run(self, doc: dict, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return self("run", self.write(doc), "--workspace", str(self.workspace), *args, env=env)

    def status(self) -> dict:
        proc = self("status", "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def assert_nowhere(self, values=SECRETS) -> None:
        """No secret in any surface."""
        status = self.status()
        surfaces: dict[str, bytes] = {
            "legato status --json": json.dumps(status).encode(),
            "legato list --json": self("list", "--json").stdout.encode(),
            "legato logs": self("logs", status["instance_id"]).stdout.encode(),
            "legato status": self("status").stdout.encode(),
        }
        surfaces["CLI output"] = "\n".join(self.seen).encode()
        for path in self.tmp.glob("legato.db*"):  # the database, its -wal and -shm (not the wake-up FIFOs' folder)
            if path.is_file():
                surfaces[path.name] = path.read_bytes()
        for root in (self.workspace, self.tmp / "tmp"):  # every file steps left, crash reports
            for path in root.rglob("*"):
                if path.is_file():
                    surfaces[str(path.relative_to(self.tmp))] = path.read_bytes()
        assert "legato.db" in surfaces
        for value in values:
            for form in forms(value):
                leaks = [name for name, data in surfaces.items() if form in data]
                assert not leaks, f"a secret ({form[:6]!r}…) shows in {leaks}"


def workflow(steps: list[dict], **params) -> dict:
    return {"workflow": {"id": "secrets", "params": {
        "token": {"type": "STRING", "secret": True, "value": "env:LEGATO_TEST_TOKEN"},
        **params,
    }, "steps": steps}}


def with_key(legato: Legato, steps: list[dict]) -> dict:
    return workflow(steps, key={"type": "STRING", "secret": True, "value": f"file:{legato.key_file}"})


def failing(step: dict) -> dict:
    """The step fails without retries, and the DAG carries on."""
    return {"step": {**step, "failure_mode": "IGNORE_FAILURE", "retry_policy": {"error_retry_limit": 0}}}


HASHES = 'for v in token key pw; do echo "${v}_hash=$(printf %s "${!v}" | sha256sum | cut -d" " -f1)" >> "$LEGATO_OUTPUT"; done'


def bash_steps() -> list[dict]:
    ok = {"id": "ok", "type": "bash", "params": {
        "pw": {"type": "STRING", "secret": True, "value": "env:LEGATO_TEST_STEP_SECRET"},
        "script": 'env; echo "stdout: $token and $key"; echo "stderr: $pw" >&2; printf %s "$token" | base64; '
                  'printf \'{"seen": "%s"}\\n\' "$token" >> "$LEGATO_OUTPUT"; echo "seen_key=$key" >> "$LEGATO_OUTPUT"; '
                  + HASHES}}
    bad = {"id": "bad", "type": "bash", "params": {"script": 'echo "cannot log in with $token" >&2; exit 1'}}
    return [{"step": ok}, failing(bad)]


def sql_steps() -> list[dict]:
    ok = {"id": "ok", "type": "sql", "params": {
        "query": "select $token as seen, sha256($token) as token_hash, sha256($key) as key_hash"}}
    bad = {"id": "bad", "type": "sql", "params": {"query": "select cast($token as integer)"}}
    return [{"step": ok}, failing(bad)]


def notebook_steps() -> list[dict]:
    notebook = str(ROOT / "tests" / "notebooks" / "secret.ipynb")
    ok = {"id": "ok", "type": "notebook", "params": {"input_path": notebook}}
    bad = {"id": "bad", "type": "notebook", "params": {"input_path": notebook, "fail": True}}
    return [{"step": ok}, failing(bad)]


def docker_steps() -> list[dict]:
    script = ('env; echo "docker sees $token"; echo "seen=$token" >> "$LEGATO_OUTPUT"; '
              'echo "token_hash=$(printf %s "$token" | sha256sum | cut -d" " -f1)" >> "$LEGATO_OUTPUT"')
    ok = {"id": "ok", "type": "docker", "params": {"image": IMAGE, "pull": "never", "command": ["sh", "-c", script]}}
    bad = {"id": "bad", "type": "docker", "params": {
        "image": IMAGE, "pull": "never", "command": ["sh", "-c", 'echo "cannot log in with $token" >&2; exit 1']}}
    return [{"step": ok}, failing(bad)]


PYTHON_CALLABLES = """
import hashlib, os


def ok(token):
    print("python sees", token, sorted(os.environ))
    return {"seen": token, "token_hash": hashlib.sha256(token.encode()).hexdigest()}


def bad(token):
    raise ValueError(f"cannot log in with {token!r}")
"""


def python_steps() -> list[dict]:
    """The contrib ``python`` step type, which passes step params (not workflow params) to the
    callable: the secret is a step param of its own, resolved when the step launches."""
    token = {"type": "STRING", "secret": True, "value": "env:LEGATO_TEST_TOKEN"}
    common = {"sys_path": ["."], "token": token}
    return [{"step": {"id": "ok", "type": "python", "params": {"callable": "secret_callables:ok", **common}}},
            failing({"id": "bad", "type": "python", "params": {"callable": "secret_callables:bad", **common}})]


STEP_TYPES = {"bash": bash_steps, "sql": sql_steps, "notebook": notebook_steps, "docker": docker_steps,
              "python": python_steps}


@pytest.mark.parametrize("step_type", sorted(STEP_TYPES))
def test_no_surface_shows_a_secret_of_any_step_type(tmp_path, step_type):
    if step_type == "docker":
        require_component("Docker", docker_problem())
    if step_type == "notebook":
        require_component("a Jupyter kernel", kernel_problem())
    if step_type == "python" and importlib.util.find_spec("legato_python") is None:
        pytest.skip("contrib/legato-python is not installed")
    legato = Legato(tmp_path, AWS_SECRET_ACCESS_KEY=AWS)
    (tmp_path / "secret_callables.py").write_text(PYTHON_CALLABLES)
    proc = legato.run(with_key(legato, STEP_TYPES[step_type]()))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status = legato.status()
    assert status["params"] == {"token": "env:LEGATO_TEST_TOKEN", "key": f"file:{legato.key_file}"}
    ok, bad = status["steps"]["ok"], status["steps"]["bad"]
    assert ok["status"] == "SUCCEEDED" and bad["status"] == "COMPLETED_WITH_ERROR"
    outputs = ok["outputs"]
    # The step received the real values...
    if step_type == "sql":
        assert outputs["rows"] == [[MASK, sha(TOKEN), sha(KEY)]]
    else:
        assert outputs["token_hash"] == sha(TOKEN) and outputs["seen"] == MASK
    if step_type == "bash":
        assert (outputs["key_hash"], outputs["pw_hash"], outputs["seen_key"]) == (sha(KEY), sha(STEP_SECRET), MASK)
    # ...which it printed and failed with: masked where Legato keeps them.
    logs = legato("logs", status["instance_id"]).stdout
    assert (MASK in logs) is (step_type != "sql"), logs  # a sql step logs its statements, not their values
    if step_type != "sql":  # each process printed its whole environment: the worker's was not in it
        assert "LEGATO_IDEMPOTENCY_KEY" in logs and "AWS_SECRET_ACCESS_KEY" not in logs
    assert MASK in bad["message"], bad["message"]
    legato.assert_nowhere((*SECRETS, AWS))
    if step_type == "notebook":
        copy = json.loads(Path(outputs["output_notebook"]).read_text())
        injected = "".join(copy["cells"][2]["source"])  # papermill's cell, after the parameters cell
        assert f'token = "{MASK}"' in injected and f'key = "{MASK}"' in injected
        assert f"notebook sees {MASK}\n" in copy["cells"][3]["outputs"][0]["text"]


def test_a_literal_secret_on_the_command_line_is_refused_and_a_reference_is_resolved(tmp_path):
    legato = Legato(tmp_path, LEGATO_TEST_OTHER="other-" + TOKEN[::-1])
    doc = workflow(bash_steps()[:1])
    refused = legato.run(doc, "-p", f"token={TOKEN}")
    assert refused.returncode == 2
    assert "param token is secret: give a reference, `env:NAME`" in refused.stderr
    assert not legato.db.exists() or TOKEN.encode() not in legato.db.read_bytes()
    proc = legato.run(doc, "-p", "token=env:LEGATO_TEST_OTHER")
    assert proc.returncode == 0, proc.stderr
    status = legato.status()
    assert status["params"]["token"] == "env:LEGATO_TEST_OTHER"
    assert status["steps"]["ok"]["outputs"]["token_hash"] == sha("other-" + TOKEN[::-1])
    legato.assert_nowhere((TOKEN, "other-" + TOKEN[::-1], STEP_SECRET))


def test_an_unresolvable_secret_is_a_clear_error_before_anything_runs(tmp_path):
    legato = Legato(tmp_path)
    doc = workflow(bash_steps()[:1])
    proc = legato.run(doc, env={"LEGATO_TEST_TOKEN": ""})
    assert proc.returncode == 2 and "is empty" in proc.stderr
    env = {k: v for k, v in legato.env.items() if k != "LEGATO_TEST_TOKEN"}
    proc = subprocess.run([LEGATO, "run", legato.write(doc)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "legato: /workflow/params/token/value: secret param token: environment variable LEGATO_TEST_TOKEN is not "
        "set in the worker's environment: export it where Legato runs (or point the param at file:PATH)")
    missing = workflow(bash_steps()[:1], key={"type": "STRING", "secret": True, "value": f"file:{tmp_path}/nope"})
    proc = legato.run(missing)
    assert proc.returncode == 2 and f"/workflow/params/key/value: secret param key: cannot read {tmp_path}/nope" \
        in proc.stderr and "Traceback" not in proc.stderr


def test_a_step_secret_that_cannot_be_resolved_fails_the_step_saying_why(tmp_path):
    legato = Legato(tmp_path)
    proc = legato.run(workflow(bash_steps()[:1]), env={"LEGATO_TEST_STEP_SECRET": ""})
    assert proc.returncode == 1
    ok = legato.status()["steps"]["ok"]
    assert ok["status"] == "FATALLY_FAILED" and ok["attempt"] == 1
    assert ok["message"] == ("/workflow/steps/0/step/params/pw/value: secret param pw: "
                             "env:LEGATO_TEST_STEP_SECRET is empty; a secret needs a value")


def test_a_secret_validator_runs_on_the_value_and_never_echoes_it(tmp_path):
    legato = Legato(tmp_path)
    doc = workflow(bash_steps()[:1])
    doc["workflow"]["params"]["token"]["validator"] = "size(value) > 1000"
    proc = legato.run(doc)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("legato: /workflow/params/token/validator: the secret value of token (from "
                                   "env:LEGATO_TEST_TOKEN) fails its validator `size(value) > 1000`")
    doc["workflow"]["params"]["token"]["validator"] = 'value.startsWith("tok-")'
    assert legato.run(doc).returncode == 0
    legato.assert_nowhere()


def test_resume_after_a_crash_resolves_the_secrets_again(tmp_path):
    legato = Legato(tmp_path, LEGATO_LEASE_TTL="0.3")
    script = 'echo "token_hash=$(printf %s "$token" | sha256sum | cut -d" " -f1)" >> "$LEGATO_OUTPUT"; echo "$token"'
    doc = workflow([{"step": {"id": "a", "type": "bash", "params": {"script": script}, "transition": {"successors": ["b"]}}},
                    {"step": {"id": "b", "type": "bash", "params": {"script": script}}}])
    crashed = legato.run(doc, env={"LEGATO_CRASH_AT": "before_launch:2"})
    assert crashed.returncode == -9, crashed.stderr
    env = {k: v for k, v in legato.env.items() if k != "LEGATO_TEST_TOKEN"}
    refused = subprocess.run([LEGATO, "resume", "--workspace", str(legato.workspace)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "LEGATO_TEST_TOKEN is not set" in refused.stderr, refused.stderr
    assert legato.status()["status"] == "IN_PROGRESS"
    resumed = legato("resume", "--workspace", str(legato.workspace))
    assert resumed.returncode == 0, resumed.stderr
    steps = legato.status()["steps"]
    assert steps["a"]["outputs"]["token_hash"] == steps["b"]["outputs"]["token_hash"] == sha(TOKEN)
    legato.assert_nowhere()


def test_the_workers_environment_reaches_a_step_only_as_the_operator_allows(tmp_path):
    aws = "AKIA-" + uuid.uuid4().hex
    legato = Legato(tmp_path, AWS_SECRET_ACCESS_KEY=aws, AWS_PROFILE="analytics", LEGATO_TEST_TOKEN=TOKEN)
    dump = {"step": {"id": "env", "type": "bash", "params": {"script": "env | sort; echo \"home=$HOME\""}}}
    doc = {"workflow": {"id": "env", "steps": [dump]}}
    assert legato.run(doc).returncode == 0
    logs = legato("logs", legato.status()["instance_id"]).stdout
    assert "PATH=" in logs and f"home={os.environ['HOME']}" in logs  # the minimal base
    assert "AWS_" not in logs and aws not in logs and TOKEN not in logs and "LEGATO_TEST_" not in logs
    settings = tmp_path / "settings.yaml"
    settings.write_text("bash: {inherit_env: [AWS_PROFILE]}\n")
    assert legato.run(doc, "--settings", str(settings)).returncode == 0
    logs = legato("logs", legato.status()["instance_id"]).stdout
    assert "AWS_PROFILE=analytics" in logs and aws not in logs
    # A step may ask only for what the operator allows, and is told who can allow more.
    greedy = {"step": {**dump["step"], "params": {**dump["step"]["params"], "inherit_env": ["AWS_SECRET_ACCESS_KEY"]}}}
    assert legato.run({"workflow": {"id": "env", "steps": [greedy]}}, "--settings", str(settings)).returncode == 1
    message = legato.status()["steps"]["env"]["message"]
    assert message.startswith("`inherit_env` asks for AWS_SECRET_ACCESS_KEY, which the operator does not allow "
                              "(the bash step type's setting `inherit_env` allows: AWS_PROFILE)")
    # The way to hand a step a credential: a secret param, masked everywhere.
    doc = {"workflow": {"id": "env", "params": {"aws": {"type": "STRING", "secret": True,
                                                        "value": "env:AWS_SECRET_ACCESS_KEY"}},
                        "steps": [{"step": {"id": "use", "type": "bash", "params": {
                            "script": 'echo "using $aws"; echo "h=$(printf %s "$aws" | sha256sum | cut -c1-64)" >> "$LEGATO_OUTPUT"'}}}]}}
    assert legato.run(doc).returncode == 0
    assert legato.status()["steps"]["use"]["outputs"]["h"] == sha(aws)
    legato.assert_nowhere((aws, TOKEN))


def test_crash_reports_are_masked(tmp_path, monkeypatch, capsys):
    import tempfile

    from legato import cli

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    Secrets([TOKEN])  # this process has seen the secret
    with pytest.raises(SystemExit) as exit_:
        try:
            raise RuntimeError(f"cannot connect with {TOKEN!r}")
        except RuntimeError as exc:
            cli._internal_error(exc)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert TOKEN not in err and f"cannot connect with '{MASK}'" in err
    report, = tmp_path.glob("legato-crash-*.txt")
    text = report.read_text()
    assert "RuntimeError" in text and TOKEN not in text and MASK in text


# -- definitions ---------------------------------------------------------------------------------


def problems(engine, doc) -> list[str]:
    with pytest.raises(DefinitionError) as exc:
        engine.load(doc)
    return [str(p) for p in exc.value.problems]


def test_definitions_refuse_what_would_store_or_paste_a_secret(engine):
    secret = {"type": "STRING", "secret": True, "value": "env:T"}
    doc = {"workflow": {"id": "w", "params": {
        "number": {"type": "LONG", "secret": True, "value": 3},
        "literal": {"type": "STRING", "secret": True, "value": "hunter2"},
        "computed": {"type": "STRING", "secret": True, "expression": "'x'"},
        "relative": {"type": "STRING", "secret": True, "value": "file:token.txt"},
        "flag": {"type": "STRING", "secret": "yes", "value": "env:T"},
        "token": secret,
        "dsn": "postgres://u:${token}@db",
    }, "steps": [{"step": {"id": "s", "type": "bash", "params": {"script": secret, "x": "${token}"}}}]}}
    assert problems(engine, doc) == [
        "/workflow/params/number/type: a secret param is a STRING (its value is text read from the environment "
        "or a file), not a LONG",
        "/workflow/params/literal/value: a secret's value is a reference, `env:NAME` (a variable of the worker's "
        "environment) or `file:/absolute/path`, never the secret itself (a literal would be stored with the "
        "definition or the instance)",
        "/workflow/params/computed/expression: a secret param takes its value from a reference, `env:NAME` (a "
        "variable of the worker's environment) or `file:/absolute/path`, not an expression (whatever an expression "
        "computes would be stored)",
        "/workflow/params/relative/value: `file:token.txt` needs an absolute path (e.g. file:/run/secrets/token)",
        "/workflow/params/flag/secret: `secret` must be true or false",
        "/workflow/steps/0/step/params/script/secret: `script` configures the bash step type and cannot be "
        "secret; pass the secret as a param of its own",
        "/workflow/params/dsn: ${token} names the secret param `token`: a secret is never pasted into another "
        'param (the result would be stored); use it where it arrives in the step (bash: "$token")',
        "/workflow/steps/0/step/params/x: ${token} names the secret param `token`: a secret is never pasted into "
        'another param (the result would be stored); use it where it arrives in the step (bash: "$token")',
    ]


def test_a_definition_without_secrets_has_no_masker(engine):
    plain = engine.load({"workflow": {"id": "w", "params": {"a": 1}, "steps": [{"step": {"id": "s", "type": "noop"}}]}})
    assert plain.has_secrets is False
    step_only = engine.load({"workflow": {"id": "w", "steps": [{"step": {"id": "s", "type": "noop", "params": {
        "t": {"type": "STRING", "secret": True, "value": "env:T"}}}}]}})
    assert step_only.has_secrets is True


# -- the masker ----------------------------------------------------------------------------------


def test_the_masker_masks_values_inside_longer_text_and_their_encodings():
    value = 'p@ss "w0rd"/é\\x'
    secrets = Secrets([value])
    encoded = [value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1], repr(value)[1:-1],
               base64.b64encode(value.encode()).decode(), __import__("urllib.parse").parse.quote(value, safe="")]
    for form in encoded:
        assert secrets.mask(f"before{form}after") == f"before{MASK}after", form
    assert secrets.mask_value({value: [value, 1, {"k": f"x{value}"}]}) == {MASK: [MASK, 1, {"k": f"x{MASK}"}]}
    assert repr(secrets) == "Secrets(1 value(s))" and not Secrets()
    assert Secrets().mask("text") == "text"


def test_a_secret_split_across_log_chunks_is_still_masked():
    secrets = Secrets(["hunter2-SECRET"])
    stream = secrets.stream()
    pieces = ["line one hun", "ter2-SEC", "RET and h", "unter2-SECRET!\nhu", "n"]
    out = "".join(stream.feed(p) for p in pieces) + stream.flush()
    assert out == f"line one {MASK} and {MASK}!\nhun"
    assert stream.feed("plain text\n") == "plain text\n"  # nothing held back when nothing could be a secret


def test_mask_known_covers_every_secret_this_process_saw():
    value = "known-" + uuid.uuid4().hex
    assert mask_known(f"a {value} b").count(value) == 1
    Secrets([value])
    assert mask_known(f"a {value} b") == f"a {MASK} b"
