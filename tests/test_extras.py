"""The heavy step-type libraries are extras (``legato[docker]``, ``[notebook]``, ``[sql]``,
``[postgres]``, ``[all]``): without one, its step type says how to install it, in ``legato plugins``
and when a definition uses it, and never that Legato has a bug.

A library is made missing in a child process the way an uninstalled one looks to Python:
``sys.modules[name] = None`` makes ``importlib.util.find_spec`` answer None and ``import`` fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib

import pytest

from .conftest import ROOT

EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def legato_without(libraries: list[str], *args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    """``legato ARGS`` in a process where ``libraries`` cannot be imported (as if not installed)."""
    prelude = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in libraries)
    code = prelude + "from legato.cli import main\nsys.argv[0] = 'legato'\nmain()\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env=env)


SQL_WORKFLOW = {"workflow": {"id": "totals", "steps": [
    {"step": {"id": "total", "type": "sql", "params": {"database": ":memory:", "query": "select 42 as answer"}}}]}}


@pytest.mark.parametrize(("library", "step_type", "extra"), [
    ("duckdb", "sql", "sql"), ("papermill", "notebook", "notebook"), ("docker", "docker", "docker")])
def test_legato_plugins_lists_a_step_type_whose_library_is_missing_with_its_install_command(library, step_type,
                                                                                             extra):
    """$ legato plugins      (duckdb not installed)
    sql   step type  sql  legato  0.1.0  unavailable: the `duckdb` Python package is not installed: pip install 'legato[sql]'
    """
    proc = legato_without([library], "plugins")
    assert proc.returncode == 0, proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if line.split()[:2] == [step_type, "step"]]
    assert "unavailable:" in line and f"pip install 'legato[{extra}]'" in line, line
    assert library in EXTRAS[extra][0], f"the [{extra}] extra does not bring {library}: {EXTRAS[extra]}"

    rows = json.loads(legato_without([library], "plugins", "--json").stdout)
    (row,) = [r for r in rows if r["name"] == step_type and r["kind"] == "step type"]
    assert row["unavailable"].endswith(f"pip install 'legato[{extra}]'")
    others = [r for r in rows if r["kind"] == "step type" and r["name"] in ("bash", "noop", "sleep")]
    assert len(others) == 3 and all(r["unavailable"] is None for r in others)


@pytest.mark.parametrize("command", ["run", "validate"])
def test_a_definition_that_uses_a_step_type_whose_library_is_missing_is_exit_2_with_the_install_command(
        tmp_path, command):
    """$ legato run totals.json      (duckdb not installed)
    totals.json: 1 problem(s) found
      /workflow/steps/0/step/type: step type 'sql' cannot run here: … pip install 'legato[sql]'
    """
    path = tmp_path / "totals.json"
    path.write_text(json.dumps(SQL_WORKFLOW))
    proc = legato_without(["duckdb"], command, str(path), cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "/workflow/steps/0/step/type: step type 'sql' cannot run here" in proc.stderr
    assert "pip install 'legato[sql]'" in proc.stderr
    assert "bug" not in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / ".legato").exists()  # refused before anything was stored


def test_legato_plugins_says_the_postgresql_store_needs_its_extra_when_psycopg_is_missing():
    rows = json.loads(legato_without(["psycopg"], "plugins", "--json").stdout)
    (row,) = [r for r in rows if r["name"] == "postgresql"]
    assert row["kind"] == "storage"
    assert row["unavailable"] == "the psycopg driver is not installed: pip install 'legato[postgres]'"
    assert "psycopg" in EXTRAS["postgres"][0]
    (sqlite,) = [r for r in rows if r["name"] == "sqlite"]
    assert sqlite["unavailable"] is None


def test_the_same_definition_runs_when_the_extra_is_installed(tmp_path):
    path = tmp_path / "totals.json"
    path.write_text(json.dumps(SQL_WORKFLOW))
    proc = subprocess.run([sys.executable, "-m", "legato.cli", "run", str(path), "--json", "--store", "memory://",
                           "--workspace", str(tmp_path / "runs")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["steps"]["total"]["outputs"]["rows"] == [[42]]


def test_a_third_party_plugin_whose_library_is_missing_is_listed_with_its_extra_and_legato_carries_on(tmp_path):
    """A plugin module that imports a library at the top, without it installed: `legato plugins`
    names the extra of the plugin's distribution that brings the library; other commands work."""
    site = tmp_path / "site"
    (site / "legato_fancy").mkdir(parents=True)
    (site / "legato_fancy" / "__init__.py").write_text("import fancylib_not_installed  # noqa: F401\n")
    info = site / "legato_fancy-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(textwrap.dedent("""\
        Metadata-Version: 2.1
        Name: legato-fancy
        Version: 1.2
        Requires-Dist: legato
        Provides-Extra: fast
        Requires-Dist: fancylib-not-installed>=2; extra == "fast"
        """))
    (info / "entry_points.txt").write_text("[legato]\nfancy = legato_fancy\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}

    proc = legato_without([], "plugins", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    (row,) = [r for r in json.loads(proc.stdout) if r["name"] == "fancy"]
    assert row == {"name": "fancy", "kind": "plugin", "plugin": "fancy", "distribution": "legato-fancy",
                   "version": "1.2", "unavailable": "the `fancylib_not_installed` library is not installed: "
                                                    "pip install 'legato-fancy[fast]'"}

    path = tmp_path / "hello.json"
    path.write_text(json.dumps({"workflow": {"id": "hello", "steps": [{"step": {"id": "a", "type": "noop"}}]}}))
    proc = legato_without([], "run", str(path), "--store", "memory://", "--workspace", str(tmp_path / "runs"),
                          env=env)
    assert proc.returncode == 0, proc.stderr


def test_the_extras_bring_the_heavy_libraries_and_the_base_install_does_not():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"])
    for library in ("docker", "papermill", "duckdb", "psycopg"):
        assert library not in base, f"{library} is a base dependency; it belongs in an extra"
    assert EXTRAS["docker"] == ["docker>=7"]
    assert EXTRAS["sql"] == ["duckdb>=1.0"]
    assert EXTRAS["postgres"] == ["psycopg[binary]>=3.1"]
    assert EXTRAS["notebook"][0].startswith("papermill")
    assert EXTRAS["all"] == ["legato[docker,notebook,sql,postgres,serve]"]
    # The README's two commands (scripts/dev) still install everything: the test extra brings all.
    assert "legato[all]" in EXTRAS["test"]
    assert "-e '.[all,test]'" in (ROOT / "scripts" / "dev").read_text()
