"""Injection payloads through every step type and every path a param takes (DESIGN §10, issue 8).

Each payload would create the canary file ``CANARY`` (at an absolute path in the test's
directory) if it escaped into a shell, a query, a Python cell or a file path. For each path
(bash env, bash argv, docker env and command, SQL query params, notebook parameters, SQL
``database`` and ``result_path``, notebook ``output_path``, a workflow's ``docker_host``, the
operator's settings) the tests assert that no canary appears anywhere under the test's directory
and, where a value is data, that it arrived byte for byte.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from legato.definition import DefinitionError
from legato.engine import Engine
from legato.steptype import SettingsError
from legato.storage import open_storage

from .conftest import IMAGE, docker_problem, kernel_problem, legato_cli, require_component

CANARY = "CANARY"

#: Payloads, each a template of ``{canary}`` (the canary's absolute path). Every one creates the
#: canary if a shell, SQL or Python ever parses it as code.
PAYLOADS = [
    "$(touch {canary})",
    "`touch {canary}`",
    "; touch {canary}",
    "&& touch {canary}",
    "; false || touch {canary}",
    "| touch {canary}",
    "x\ntouch {canary}\n",
    "x\r\ntouch {canary}",
    "'; touch {canary}; '",
    '"; touch {canary}; "',
    "\"$(touch {canary})\"",
    "'$(touch {canary})'",
    ";touch${{IFS}}{canary}",
    "$(touch${{IFS}}{canary})",
    "> {canary}",
    ">> {canary}",
    "<(touch {canary})",
    "& touch {canary} &",
    "*; touch {canary}",
    "\\\"; touch {canary}; \\\"",
    "'); import os; os.system('touch {canary}'); ('",
    '"""); import os; os.system("touch {canary}"); ("""',
    "' + __import__('os').system('touch {canary}') + '",
    "{{__import__('os').system('touch {canary}')}}",
    "'; COPY (SELECT 1) TO '{canary}'; --",
    "x\"; COPY (SELECT 1) TO '{canary}'; --",
    "'); ATTACH '{canary}' AS pwned; --",
]
#: Values that hold Legato's, papermill's and printf's own syntax: they must arrive unchanged.
DATA = ["$$ ${{x}} $${{y}} %s %(x)s {{}} {{x}} \\ \t ü € 🎻 \\x00"]


def payloads(root: Path) -> list[str]:
    """The payloads aimed at ``root / CANARY``, then the data-only values."""
    canary = str(root / CANARY)
    return [p.format(canary=canary) for p in PAYLOADS + DATA]


#: How each kind of code pastes a value: a payload is live if one of these runs it.
SHELL_PASTES = ["echo {}", "echo '{}'", 'echo "{}"']
SQL_PASTES = ["SELECT '{}'", 'SELECT "{}"', "SELECT ('{}')"]
PYTHON_PASTES = ["x = '{}'", 'x = "{}"', "x = ('{}')", 'x = ("""{}""")', 'x = f"{}"']


@pytest.mark.parametrize("template", PAYLOADS)
def test_every_payload_creates_the_canary_when_pasted_into_code(tmp_path, template):
    """The payloads are live: pasted into a shell line, a SQL text or a Python cell (what Legato
    must never do), each creates the canary. So a test below that finds no canary means something."""
    import subprocess

    payload = template.format(canary=tmp_path / CANARY)
    canary = tmp_path / CANARY
    for paste in SHELL_PASTES:
        subprocess.run(["bash", "-c", paste.replace("{}", payload)], cwd=tmp_path, capture_output=True, timeout=10)
        if canary.exists():
            return
    try:
        import duckdb
    except ImportError:
        duckdb = None
    for paste in SQL_PASTES if duckdb else ():
        con = duckdb.connect()
        try:
            statements = con.extract_statements(paste.replace("{}", payload))
        except duckdb.Error:
            statements = []
        for statement in statements:
            try:
                con.execute(statement)
            except duckdb.Error:
                pass
        con.close()
        if canary.exists():
            return
    for paste in PYTHON_PASTES:
        try:
            exec(compile(paste.replace("{}", payload), "<paste>", "exec"), {})  # noqa: S102 - the point
        except Exception:  # noqa: BLE001 - a payload that breaks the syntax after running is still live
            pass
        if canary.exists():
            return
    pytest.fail(f"payload {template!r} creates no canary in any paste: it proves nothing")


def assert_no_canary(root: Path) -> None:
    """No file named CANARY anywhere under ``root`` (absolute and relative payloads alike)."""
    found = [str(p) for p in root.rglob(CANARY)]
    assert not found, f"a payload escaped and created {found}"


def make_engine(tmp_path: Path, settings: dict | None = None) -> Engine:
    return Engine(open_storage("memory://"), workspace=tmp_path / "runs", step_settings=settings)


NO_RETRY = {"error_retry_limit": 0, "platform_retry_limit": 0}


def doc(*steps: dict, params: dict | None = None) -> dict:
    body: dict = {"id": "inject", "steps": [{"step": {"retry_policy": NO_RETRY, **s}} for s in steps]}
    if params:
        body["params"] = params
    return {"workflow": body}


async def run(engine: Engine, definition_doc: dict, raw_params: dict | None = None):
    """Run to the end; ``raw_params`` are ``name=value`` strings exactly as ``legato run -p`` passes them."""
    instance = await engine.execute(engine.load(definition_doc), raw_params=raw_params)
    attempts = {a.step_id: a for a in await engine.storage.get_attempts(instance.instance_id)}
    return instance, attempts, engine.workspace / instance.instance_id


def names(n: int) -> list[str]:
    return [f"p{i}" for i in range(n)]


# -- bash -----------------------------------------------------------------------------------------


async def test_bash_env_and_whole_argv_elements_carry_payloads_as_data(tmp_path):
    """Through `-p`, a workflow param reaches bash as the environment variable (read by `script`,
    where `${p}` is bash's own expansion, never Legato's) and as a whole argv element."""
    values = payloads(tmp_path)
    ps = names(len(values))
    listing = " ".join(f'"${{{p}}}"' for p in ps)  # bash's expansion: `script` is never interpolated
    steps = [
        {"id": "env", "type": "bash", "params": {"script": f"printf '%s\\0' {listing} > env.out"}},
        {"id": "argv", "type": "bash", "params": {"argv": ["sh", "-c", 'printf "%s\\0" "$@" > argv.out', "sh",
                                                          *[f"${{{p}}}" for p in ps]]}},
        # unquoted and through eval-free word splitting: still never a command
        {"id": "unquoted", "type": "bash", "params": {"script": " ".join(f"echo ${p} >/dev/null;" for p in ps)}},
    ]
    engine = make_engine(tmp_path)
    instance, attempts, workdir = await run(engine, doc(*steps, params={p: "" for p in ps}),
                                            raw_params=dict(zip(ps, values)))
    assert instance.status.value == "SUCCEEDED", {k: a.message for k, a in attempts.items()}
    assert_no_canary(tmp_path)
    for name in ("env", "argv"):
        assert (workdir / f"{name}.out").read_bytes().split(b"\0")[:-1] == [v.encode() for v in values], name


async def test_bash_step_params_and_env_map_are_data(tmp_path):
    """A step param (interpolated from a workflow param) and an `env` entry built with `${}` are
    environment variables: text, never parsed."""
    values = payloads(tmp_path)
    ps = names(len(values))
    steps = [{"id": "s", "type": "bash", "params": {
        **{f"s_{p}": f"${{{p}}}" for p in ps},
        "env": {f"E_{p}": f"<${{{p}}}>" for p in ps},
        "script": "for n in " + " ".join(ps) + "; do v=s_$n; e=E_$n; printf '%s\\0%s\\0' \"${!v}\" \"${!e}\"; done > out",
    }}]
    instance, attempts, workdir = await run(make_engine(tmp_path), doc(*steps, params={p: "" for p in ps}),
                                            raw_params=dict(zip(ps, values)))
    assert instance.status.value == "SUCCEEDED", attempts["s"].message
    assert_no_canary(tmp_path)
    got = (workdir / "out").read_bytes().split(b"\0")[:-1]
    assert got == [x for v in values for x in (v.encode(), f"<{v}>".encode())]


@pytest.mark.parametrize("argv, pointer", [
    (["sh", "-c", "echo ${p}"], "/argv/2"),
    (["sh", "-c", "echo $(cat ${p})"], "/argv/2"),
    (["printf", "%s", "x${p}"], "/argv/2"),
    (["printf", "%s", "${p}${p}"], "/argv/2"),
    ({"type": "STRING_ARRAY", "value": ["bash", "-c", "${p} | sh"]}, "/argv/value/2"),
])
def test_spliced_argv_interpolation_is_refused_at_load(tmp_path, argv, pointer):
    """The regression of "8 of 22 payloads executed": `${p}` spliced into an argv element that
    `bash -c` parses is refused when the definition loads, pointing at the element and saying to
    use the environment variable."""
    engine = make_engine(tmp_path)
    with pytest.raises(DefinitionError) as info:
        engine.load(doc({"id": "s", "type": "bash", "params": {"argv": argv}}, params={"p": "x"}))
    problems = {p.pointer: p.message for p in info.value.problems}
    where = f"/workflow/steps/0/step/params{pointer}"
    assert where in problems, problems
    assert 'inside an argument is refused' in problems[where] and '"$p"' in problems[where]


@pytest.mark.parametrize("name", ["BASH_ENV", "ENV", "SHELLOPTS", "PS4", "PROMPT_COMMAND", "IFS", "PATH",
                                  "LD_PRELOAD", "LD_LIBRARY_PATH", "BASH_FUNC_ls%%", "PYTHONSTARTUP", "NODE_OPTIONS"])
def test_params_named_like_variables_that_run_code_are_refused_at_load(tmp_path, name):
    """Params are exported under their own names, so a param named BASH_ENV (or LD_PRELOAD, PATH…)
    would let a start request (`-p BASH_ENV=/tmp/evil`) decide what bash or the loader runs: such
    names are refused where they are declared, workflow or step, and a step's `env` stays the
    explicit way to set them."""
    engine = make_engine(tmp_path)
    for document, where in [
        (doc({"id": "s", "type": "bash", "params": {"script": "true"}}, params={name: "x"}), f"/workflow/params/{name}"),
        (doc({"id": "s", "type": "bash", "params": {"script": "true", name: "x"}}),
         f"/workflow/steps/0/step/params/{name}"),
    ]:
        with pytest.raises(DefinitionError) as info:
            engine.load(document)
        problems = {p.pointer: p.message for p in info.value.problems}
        if not name.isidentifier():  # `BASH_FUNC_ls%%` is refused as no identifier already
            assert "is not an identifier" in problems[where], problems
            continue
        assert f"{name} changes what those processes run" in problems[where], problems
    engine.load(doc({"id": "s", "type": "bash", "params": {"script": "true", "env": {"PATH": "/usr/bin:/bin"}}}))


async def test_argv_whole_elements_and_dollar_escapes(tmp_path):
    """`${p}` as a whole element is one argument (spaces and all); `$$` is a literal `$`, so a
    shell's own `$${x}` or `$$x` reaches it as `${x}` / `$x` and is expanded from the environment."""
    steps = [{"id": "s", "type": "bash", "params": {
        "argv": ["sh", "-c", 'printf "%s|" "$#" "$1" "$${p}" "$$p" > out', "sh", "${p}"]}}]
    instance, attempts, workdir = await run(make_engine(tmp_path), doc(*steps, params={"p": "a  b; c"}))
    assert instance.status.value == "SUCCEEDED", attempts["s"].message
    assert (workdir / "out").read_text() == "1|a  b; c|a  b; c|a  b; c|"


# -- docker ---------------------------------------------------------------------------------------


async def test_docker_env_and_whole_command_elements_carry_payloads_as_data(tmp_path):
    require_component("Docker", docker_problem())
    values = payloads(tmp_path)
    ps = names(len(values))
    env_list = " ".join(f'"${p}"' for p in ps)
    command = ["sh", "-c", f'printf "%s\\0" "$@" > /legato/argv; printf "%s\\0" {env_list} > /legato/env', "sh",
               *[f"${{{p}}}" for p in ps]]
    steps = [{"id": "s", "type": "docker", "params": {"image": IMAGE, "command": command}}]
    engine = make_engine(tmp_path)
    instance, attempts, workdir = await run(engine, doc(*steps, params={p: "" for p in ps}),
                                            raw_params=dict(zip(ps, values)))
    assert instance.status.value == "SUCCEEDED", attempts["s"].message
    assert_no_canary(tmp_path)
    io = workdir / ".legato" / "s.1"
    for name in ("argv", "env"):
        assert (io / name).read_bytes().split(b"\0")[:-1] == [v.encode() for v in values], name


@pytest.mark.parametrize("field", ["command", "entrypoint"])
def test_docker_spliced_command_interpolation_is_refused_at_load(tmp_path, field):
    from legato.plugins.docker import Docker

    require_component("the Docker SDK", Docker.unavailable())
    with pytest.raises(DefinitionError) as info:
        make_engine(tmp_path).load(doc({"id": "s", "type": "docker", "params": {
            "image": IMAGE, field: ["sh", "-c", "echo ${p}"]}}, params={"p": "x"}))
    problems = {p.pointer: p.message for p in info.value.problems}
    assert f"/workflow/steps/0/step/params/{field}/2" in problems, problems


async def test_docker_host_from_params_never_overrides_the_operator(tmp_path):
    """Every payload, and a real-looking engine URL, given as `docker_host` through `-p`: refused
    (FATALLY_FAILED) before any engine is contacted, whatever the operator's own `docker_host`."""
    from legato.plugins.docker import Docker

    require_component("the Docker SDK", Docker.unavailable())
    values = [*payloads(tmp_path), "tcp://attacker.example:2375", "unix:///var/run/docker.sock"]
    ps = names(len(values))
    steps = [{"id": f"s{i}", "type": "docker", "params": {"image": IMAGE, "command": ["true"], "docker_host": f"${{{p}}}"}}
             for i, p in enumerate(ps)]
    engine = make_engine(tmp_path, {"docker": {"docker_host": "unix:///nonexistent-operator.sock"}})
    instance, attempts, _ = await run(engine, doc(*steps, params={p: "" for p in ps}), raw_params=dict(zip(ps, values)))
    assert instance.status.value == "FAILED"
    for i, value in enumerate(values):
        a = attempts[f"s{i}"]
        assert a.status.value == "FATALLY_FAILED" and "is refused" in a.message, (value, a.message)
    assert_no_canary(tmp_path)


# -- sql ------------------------------------------------------------------------------------------


async def test_sql_query_params_step_params_and_workflow_params_are_bound_never_pasted(tmp_path):
    from legato.plugins.sql import Sql

    require_component("duckdb", Sql.unavailable())
    values = payloads(tmp_path)
    ps = names(len(values))
    select = ", ".join(f"${p} AS {p}, $q_{p} AS q_{p}, $s_{p} AS s_{p}" for p in ps)
    steps = [{"id": "q", "type": "sql", "params": {
        "query": f"SELECT {select}",
        "query_params": {f"q_{p}": f"${{{p}}}" for p in ps},  # interpolated text, then bound
        **{f"s_{p}": f"${{{p}}}" for p in ps},  # a step param, bound by name
    }}]
    instance, attempts, _ = await run(make_engine(tmp_path), doc(*steps, params={p: "" for p in ps}),
                                      raw_params=dict(zip(ps, values)))
    assert instance.status.value == "SUCCEEDED", attempts["q"].message
    assert_no_canary(tmp_path)
    assert attempts["q"].outputs["rows"] == [[v for v in values for _ in range(3)]]


def traversals(tmp_path: Path, suffix: str) -> list[str]:
    """Paths that lead out of the instance's working directory (``runs/<id>/``) to the canary."""
    outside = tmp_path / f"{CANARY}{suffix}"
    return [
        f"../../{CANARY}{suffix}",
        f"./../../{CANARY}{suffix}",
        f"sub/../../../{CANARY}{suffix}",
        f"..//..//{CANARY}{suffix}",
        str(outside),
        f"//{str(outside).lstrip('/')}",
        f"/proc/self/cwd/{CANARY}{suffix}",
        f"escape/{CANARY}{suffix}",  # a symlink an earlier step made, pointing outside
    ]


@pytest.mark.parametrize("field, suffix", [("database", ".duckdb"), ("result_path", ".csv")])
async def test_sql_paths_from_params_stay_in_the_working_directory(tmp_path, field, suffix):
    """`database` and `result_path` from `-p`: traversals (`..`, absolute paths, a symlink made by
    an earlier step) end FATALLY_FAILED and create nothing; shell-looking names are just file
    names inside the instance's working directory."""
    from legato.plugins.sql import Sql

    require_component("duckdb", Sql.unavailable())
    escapes = traversals(tmp_path, suffix)
    harmless = [p.replace("/", "_") + suffix for p in payloads(tmp_path)]
    if field == "database":  # DuckDB reads `\` as a path separator when it opens a database
        escapes.append(f"..\\..\\{CANARY}{suffix}")
        escapes += [h for h in harmless if h.startswith("\\")]  # `\x` opens the absolute `/x`
        harmless = [h for h in harmless if not h.startswith("\\")]
    else:  # written by Python: a backslash is part of the file's name
        harmless.append(f"..\\..\\{CANARY}{suffix}")
    values = escapes + harmless
    ps = names(len(values))
    steps = [{"id": "link", "type": "bash", "params": {"script": f"ln -s {tmp_path} escape"},
              "transition": {"successors": [f"q{i}" for i in range(len(ps))]}}]
    steps += [{"id": f"q{i}", "type": "sql", "params": {"query": "SELECT 42 AS answer", field: f"${{{p}}}"}}
              for i, p in enumerate(ps)]
    instance, attempts, workdir = await run(make_engine(tmp_path), doc(*steps, params={p: "" for p in ps}),
                                            raw_params=dict(zip(ps, values)))
    assert_no_canary(tmp_path)
    assert not list(tmp_path.glob(f"{CANARY}*")), "nothing is written outside the working directory"
    for i, value in enumerate(values):
        a = attempts[f"q{i}"]
        if value in escapes:
            assert a.status.value == "FATALLY_FAILED", (value, a.status, a.message)
            assert f"{field} " in a.message and "is refused" in a.message and "sql.allowed_paths" in a.message
        else:
            assert a.status.value == "SUCCEEDED", (value, a.message)
            assert (workdir / (value.replace("\\", "/") if field == "database" else value)).is_file(), value


async def test_sql_paths_under_an_allowed_root_are_written(tmp_path):
    """The operator's `sql.allowed_paths` is the one way out of the working directory."""
    from legato.plugins.sql import Sql

    require_component("duckdb", Sql.unavailable())
    root = tmp_path / "warehouse"
    root.mkdir()
    steps = [{"id": "q", "type": "sql", "params": {"query": "SELECT 1 AS one", "database": str(root / "w.duckdb"),
                                                   "result_path": str(root / "out" / "r.csv")}}]
    engine = make_engine(tmp_path, {"sql": {"allowed_paths": [str(root)]}})
    instance, attempts, _ = await run(engine, doc(*steps))
    assert instance.status.value == "SUCCEEDED", attempts["q"].message
    assert (root / "w.duckdb").is_file() and (root / "out" / "r.csv").read_text().splitlines() == ["one", "1"]


# -- notebook -------------------------------------------------------------------------------------


def _notebook(path: Path) -> Path:
    """A notebook that writes every parameter it received (names p*, s_*, values, nested) to JSON."""
    cells = [
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "outputs": [], "execution_count": None,
         "source": ["values = []\n", "nested = {}\n"]},
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
         "source": ["import json\n",
                    "import re\n",
                    "got = {k: v for k, v in globals().items() if re.fullmatch(r'values|nested|p\\d+|s_p\\d+', k)}\n",
                    "json.dump(got, open('received.json', 'w', encoding='utf-8'))\n"]},
    ]
    nb = {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))
    return path


async def test_notebook_parameters_are_data(tmp_path):
    """Payloads as workflow params, step params, `parameters` values, nested map keys and values:
    papermill's injected cell holds them as literals; they arrive byte for byte."""
    require_component("Jupyter kernel", kernel_problem())
    values = payloads(tmp_path)
    ps = names(len(values))
    notebook = _notebook(tmp_path / "echo.ipynb")
    steps = [{"id": "nb", "type": "notebook", "params": {
        "input_path": str(notebook),
        **{f"s_{p}": f"${{{p}}}" for p in ps},
        # built by CEL from the (overridden) workflow params, so the payloads are never definition text
        "parameters": {"type": "MAP", "expression": "{'values': [%s], 'nested': {%s}}" % (
            ", ".join(ps), ", ".join(f"{p}: [{p}, {{{p}: {p}}}]" for p in ps))},
    }}]
    instance, attempts, workdir = await run(make_engine(tmp_path), doc(*steps, params={p: "" for p in ps}),
                                            raw_params=dict(zip(ps, values)))
    assert instance.status.value == "SUCCEEDED", attempts["nb"].message
    assert_no_canary(tmp_path)
    got = json.loads((workdir / "received.json").read_text(encoding="utf-8"))
    assert got["values"] == values
    assert got["nested"] == {v: [v, {v: v}] for v in values}
    for p, v in zip(ps, values):
        assert got[p] == v and got[f"s_{p}"] == v


async def test_notebook_output_path_stays_in_the_working_directory(tmp_path):
    """`output_path` from `-p` that leads out of the working directory is refused before papermill
    starts (FATALLY_FAILED), and nothing is written there."""
    from legato.plugins.notebook import Notebook

    require_component("papermill", Notebook.unavailable())
    notebook = _notebook(tmp_path / "echo.ipynb")
    values = traversals(tmp_path, ".ipynb")
    ps = names(len(values))
    steps = [{"id": "link", "type": "bash", "params": {"script": f"ln -s {tmp_path} escape"},
              "transition": {"successors": [f"n{i}" for i in range(len(ps))]}}]
    steps += [{"id": f"n{i}", "type": "notebook", "params": {"input_path": str(notebook), "output_path": f"${{{p}}}"}}
              for i, p in enumerate(ps)]
    instance, attempts, _ = await run(make_engine(tmp_path), doc(*steps, params={p: "" for p in ps}),
                                      raw_params=dict(zip(ps, values)))
    for i, value in enumerate(values):
        a = attempts[f"n{i}"]
        assert a.status.value == "FATALLY_FAILED", (value, a.message)
        assert "output_path" in a.message and "notebook.allowed_paths" in a.message
    assert not list(tmp_path.glob(f"{CANARY}*"))


# -- operator settings ----------------------------------------------------------------------------


def test_allowed_mounts_as_a_string_does_not_allow_the_root(tmp_path):
    """The regression of `allowed_mounts: "/"` iterated letter by letter (which allowed `/` and let a
    workflow read /etc/shadow): the settings are refused, naming the key, before anything runs."""
    with pytest.raises(SettingsError) as info:
        make_engine(tmp_path, {"docker": {"allowed_mounts": "/"}})
    assert info.value.problems == [
        ("docker.allowed_mounts", "must be a list of absolute paths (directories workflows may mount), got a string '/'")]
    from legato.plugins.docker import Docker

    with pytest.raises(SettingsError):
        Docker({"allowed_mounts": "/"})  # built from code: validated again
    refused = Docker({"allowed_mounts": [str(tmp_path)]})._refused(
        Docker.Params.model_validate({"image": IMAGE, "mounts": [{"source": "/etc", "target": "/x"}]}))
    assert refused and "/etc" in refused and "is refused" in refused


@pytest.mark.parametrize("settings, expected", [
    ("docker:\n  allowed_mounts: /\n", "docker.allowed_mounts: must be a list of absolute paths"),
    ("docker:\n  allowed_mounts: [data]\n", "docker.allowed_mounts: must be a list of absolute paths: 'data' is not absolute"),
    ("docker:\n  allowed_mount: [/data]\n", "docker.allowed_mount: unknown setting (did you mean `allowed_mounts`?)"),
    ("docker:\n  docker_host: [unix:///x]\n", "docker.docker_host: must be an engine URL"),
    ("docker:\n  allowed_docker_hosts: unix:///x\n", "docker.allowed_docker_hosts: must be a list of engine URLs"),
    ("docker:\n  allowed_networks: host\n", "docker.allowed_networks: must be a list of network modes"),
    ("sql:\n  allowed_paths: '$(touch CANARY)'\n", "sql.allowed_paths: must be a list of absolute paths"),
    ("notebook:\n  allowed_paths: [/ok, '; touch CANARY']\n", "notebook.allowed_paths: must be a list of absolute paths"),
    ("bash:\n  inherit: true\n", "bash.inherit: unknown setting (did you mean `inherit_env`?)"),
    ("noop:\n  fast: true\n", "noop: the noop step type takes no settings"),
    ("dockr: {}\n", "dockr: no installed step type is named 'dockr'"),
    ("docker: 3\n", "docker: must be a map of setting -> value, got an integer 3"),
    ("[docker]\n", "must map each step type's name to its settings, got a list"),
])
def test_wrong_settings_are_exit_2_naming_the_key(tmp_path, settings, expected):
    path = tmp_path / "x.yaml"
    path.write_text(settings)
    definition = tmp_path / "w.json"
    definition.write_text(json.dumps(doc({"id": "s", "type": "noop"})))
    proc = legato_cli("run", str(definition), "--settings", str(path), "--workspace", str(tmp_path / "ws"),
                      cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"settings {path}: {expected}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert_no_canary(tmp_path)
    assert not os.path.exists(tmp_path / "ws"), "nothing ran"


def test_settings_are_validated_whenever_a_step_type_is_built():
    """The contract for every step type, first- or third-party: `Settings` declares what the
    operator may set; `self.settings` holds every field; anything else is a SettingsError."""
    import pydantic

    from legato import StepType

    class Model(pydantic.BaseModel):
        roots: list[str] = pydantic.Field(default_factory=list, description="a list of paths")

    class WithSettings(StepType):
        name = "with-settings"
        Settings = Model

    class Without(StepType):
        name = "without"

    assert WithSettings().settings == {"roots": []}
    assert WithSettings({"roots": ["/a"]}).settings == {"roots": ["/a"]}
    with pytest.raises(SettingsError) as info:
        WithSettings({"roots": "/", "root": ["/a"]})
    assert info.value.problems == [("with-settings.root", "unknown setting (did you mean `roots`?)"),
                                   ("with-settings.roots", "must be a list of paths, got a string '/'")]
    assert Without().settings == {}
    with pytest.raises(SettingsError, match="the without step type takes no settings"):
        Without({"anything": 1})


def test_confine_resolves_symlinks_and_dot_dots(tmp_path):
    from legato.paths import PathRefused, confine

    work, allowed, outside = tmp_path / "work", tmp_path / "allowed", tmp_path / "outside"
    for d in (work, allowed, outside):
        d.mkdir()
    (work / "out").symlink_to(outside)
    (work / "ok").symlink_to(allowed)
    assert confine("a/b.csv", work, [], what="x", setting="s.allowed_paths") == work / "a" / "b.csv"
    assert confine("ok/b.csv", work, [str(allowed)], what="x", setting="s") == allowed / "b.csv"
    assert confine(str(allowed / "c"), work, [str(allowed)], what="x", setting="s") == allowed / "c"
    for bad in ("out/b.csv", "../outside/b.csv", str(outside / "b.csv"), "a/../../x", "ok/b.csv",
                str(tmp_path / "allowedx"), "a\0b"):
        with pytest.raises(PathRefused):
            confine(bad, work, [], what="x", setting="s.allowed_paths")
    with pytest.raises(PathRefused, match=r"x '\.\./outside/b\.csv' \(resolved: .*\) is refused: .*s\.allowed_paths"):
        confine("../outside/b.csv", work, [str(allowed)], what="x", setting="s.allowed_paths")
    with pytest.raises(PathRefused):  # a sibling whose name starts like an allowed root is not under it
        confine(str(tmp_path / "allowedx" / "f"), work, [str(allowed)], what="x", setting="s")
