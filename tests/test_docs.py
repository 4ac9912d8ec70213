"""The docs match the code: README's example definition validates, its commands and hooks exist."""

from __future__ import annotations

import json
import re

from .conftest import ROOT, legato_cli


def _readme() -> str:
    return (ROOT / "README.md").read_text()


def test_readme_starts_with_the_two_setup_commands():
    block = re.search(r"```sh\n(.*?)```", _readme(), re.S).group(1).splitlines()
    assert [line.split("#")[0].strip() for line in block] == ["bash scripts/dev example", "bash scripts/dev test"]
    assert "bash scripts/dev test" in (ROOT / ".ci" / "run").read_text()


def test_readme_definition_validates(engine):
    doc = json.loads(re.search(r"```json\n(.*?)```", _readme(), re.S).group(1))
    definition = engine.load(doc)
    assert [s.id for s in definition.steps] == ["extract", "load", "alert"]


def test_readme_definition_runs_as_printed(tmp_path):
    """The README's definition, byte for byte, saved as daily.json and run as the README says:
    ``legato run daily.json`` succeeds, ``load`` runs on the three rows ``extract`` wrote and
    ``alert`` is UNSATISFIED."""
    text = re.search(r"```json\n(.*?)```", _readme(), re.S).group(1)
    assert "Saved as `daily.json`, this runs as printed (`.venv/bin/legato run daily.json`)" in _readme()
    (tmp_path / "daily.json").write_text(text)
    store = f"sqlite:///{tmp_path / 'legato.db'}"
    proc = legato_cli("run", "daily.json", "--json", "--store", store, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert {sid: step["status"] for sid, step in report["steps"].items()} == {
        "extract": "SUCCEEDED", "load": "SUCCEEDED", "alert": "UNSATISFIED"}
    assert report["steps"]["extract"]["outputs"]["rows"] == "3"
    logs = legato_cli("logs", report["instance_id"], "load", "--store", store, cwd=tmp_path)
    assert logs.returncode == 0, logs.stderr
    assert re.search(r"loading 4 lines into sales_\d{8}\b", logs.stdout), logs.stdout


def test_readme_lists_every_hook():
    from legato import hookspecs

    hooks = [name for name in dir(hookspecs) if name.startswith("legato_")]
    for hook in hooks:
        assert f"`{hook}`" in _readme(), f"README does not document {hook}"
        assert getattr(hookspecs, hook).__doc__, f"{hook} has no docstring"


PLUGINS_DOC = ROOT / "docs" / "plugins.md"


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:python|toml)\n(.*?)```", text, re.S)


def test_plugin_guide_code_is_copied_from_the_contrib_package():
    """Every python/toml block in docs/plugins.md is a verbatim slice of legato-python's sources."""
    package = ROOT / "contrib" / "legato-python"
    sources = [p.read_text() for p in package.rglob("*") if p.suffix in (".py", ".toml") and p.is_file()]
    blocks = _code_blocks(PLUGINS_DOC.read_text())
    assert len(blocks) >= 4
    for block in blocks:
        assert any(block in source for source in sources), f"docs/plugins.md drifted from the code:\n{block[:300]}"


def test_every_hook_is_documented_with_its_signature_and_has_a_test_of_its_own():
    import inspect

    from legato import hookspecs

    guide = PLUGINS_DOC.read_text()
    tests = (ROOT / "tests" / "test_plugins.py").read_text()
    for name in [n for n in dir(hookspecs) if n.startswith("legato_")]:
        signature = f"{name}{inspect.signature(getattr(hookspecs, name))}"
        assert f"`{signature}`" in guide, f"docs/plugins.md does not document `{signature}`"
        assert f"def test_hook_{name}(" in tests or f"async def test_hook_{name}(" in tests, (
            f"{name} has no test of its own in tests/test_plugins.py (test_hook_{name})")


def test_every_capability_is_documented():
    from legato.conformance import STEP_CAPABILITIES, STORAGE_CAPABILITIES, TRIGGER_CAPABILITIES

    guide = PLUGINS_DOC.read_text()
    for name, promise in {**STEP_CAPABILITIES, **STORAGE_CAPABILITIES, **TRIGGER_CAPABILITIES}.items():
        assert f"| `{name}` | {promise} |" in guide, f"capability {name!r} is not in docs/plugins.md's tables"
