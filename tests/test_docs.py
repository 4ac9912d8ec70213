"""The docs match the code: README's example definition validates, its commands and hooks exist."""

from __future__ import annotations

import json
import re

from .conftest import ROOT


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


def test_readme_lists_every_hook():
    from legato import hookspecs

    hooks = [name for name in dir(hookspecs) if name.startswith("legato_")]
    for hook in hooks:
        assert f"`{hook}`" in _readme(), f"README does not document {hook}"
        assert getattr(hookspecs, hook).__doc__, f"{hook} has no docstring"
