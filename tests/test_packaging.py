"""The packaging and architecture guards of DESIGN §1."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
MAPPING = PYPROJECT["tool"]["setuptools"]["package-dir"]


def _packages_on_disk() -> set[str]:
    found = set()
    for package, folder in MAPPING.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([package, *rel.parts]))
    # a subpackage of a mapped folder that is itself mapped is found twice: fine, it is a set
    return found


def test_every_subpackage_is_listed():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    missing = _packages_on_disk() - listed
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve within legato
                base = "legato" if node.level == 1 else ""
                names.append(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                names.append(node.module)
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "kernel").rglob("*.py")), ids=lambda p: p.name)
def test_kernel_imports_no_plugin(path):
    bad = [n for n in _imports(path) if n.startswith(("legato.plugins", "legato.conformance", "plugins", "conformance"))]
    assert not bad, f"{path.name} imports {bad}: the kernel must reach plugins through entry points only"


def test_first_party_plugins_are_entry_points():
    eps = PYPROJECT["project"]["entry-points"]["legato"]
    modules = {p.stem for p in (ROOT / "plugins").glob("*.py") if p.stem not in ("__init__", "profiles")}
    modules |= {p.parent.name for p in (ROOT / "plugins").glob("*/__init__.py")}
    assert {v.rsplit(".", 1)[-1] for v in eps.values()} == modules


def test_every_first_party_plugin_publishes_a_conformance_profile():
    entry_points = PYPROJECT["project"]["entry-points"]["legato"]
    plugins = set(entry_points.values())  # a plugin listed under several names (sqlstore: sqlite, postgresql) once
    profiles = PYPROJECT["project"]["entry-points"]["legato.conformance"]
    covered = set()
    from legato.plugins import profiles as module

    for name, target in profiles.items():
        profile = getattr(module, target.split(":")[1])
        profile = profile() if callable(profile) else profile
        covered.add(entry_points[profile.entry_point])
    assert covered == plugins, f"plugins without a conformance profile: {sorted(plugins - covered)}"


def test_wheel_is_complete_and_installs_no_stray_top_level(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("legato-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"legato"}, f"the wheel installs top-level {tops - {'legato'}}"
    for package in _packages_on_disk():
        assert package.replace(".", "/") + "/__init__.py" in names
    for module in ("legato/engine.py", "legato/plugins/bash.py", "legato/conformance/__init__.py",
                   "legato/schema/definition.schema.json", "legato/api.py", "legato/testing.py",
                   "legato/pytest_plugin.py"):
        assert module in names
    # The heavy libraries are extras, each declared in the wheel's metadata.
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    lines = zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
    for extra, library in (("docker", "docker"), ("notebook", "papermill"), ("sql", "duckdb"),
                           ("postgres", "psycopg"), ("all", "legato")):
        assert f"Provides-Extra: {extra}" in lines
        assert any(line.startswith(f"Requires-Dist: {library}") and f'extra == "{extra}"' in line for line in lines), extra
    base = [line for line in lines if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not [line for line in base if any(lib in line for lib in ("docker", "papermill", "duckdb", "psycopg"))]
