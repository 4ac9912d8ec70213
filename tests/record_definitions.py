"""A pytest plugin for tests/test_schema.py: records every definition the loader accepts.

``pytest -p tests.record_definitions`` with ``LEGATO_RECORD_DEFINITIONS=FILE`` appends each
document that ``legato.definition.load_definition`` accepted to FILE, one JSON line each, so that
the published schema can be checked against every definition the test suite writes.
"""

from __future__ import annotations

import json
import os


def pytest_configure(config):
    from legato import definition

    path = os.environ["LEGATO_RECORD_DEFINITIONS"]
    load = definition._load

    def recording(source, step_types, compiler, *rest):
        loaded = load(source, step_types, compiler, *rest)
        try:
            line = json.dumps(loaded.document, allow_nan=False)
        except (TypeError, ValueError):  # not a JSON document (a YAML-only value): nothing to check
            return loaded
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        return loaded

    definition._load = recording
