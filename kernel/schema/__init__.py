"""The published JSON Schema (draft 2020-12) of the definition format, for editors.

``definition.schema.json`` beside this module is what ``legato schema`` prints (``legato schema
--path`` says where it is): point an editor at it to complete and check definitions as they are
typed. It describes the shapes Legato accepts, Maestro's included (its envelopes, retry policy,
``run_strategy`` forms, tag objects, enum values in any case); ``legato validate`` checks what a
schema cannot (CEL, cycles, references, each step type's own params). ``tests/test_schema.py``
keeps it in step with the loader.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SCHEMA_PATH", "definition_schema"]

#: The schema file, shipped inside the package.
SCHEMA_PATH = Path(__file__).with_name("definition.schema.json")


def definition_schema() -> dict:
    """The schema as a dict."""
    import json

    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
