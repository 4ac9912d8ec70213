"""Traps a newcomer fell into in their first hour (issue 10), each as the CLI transcript they
would see: the definition, the command, the message.

Each test runs the installed ``legato`` script in a directory of its own, as a user types it.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from .conftest import legato_cli


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def run_json(tmp_path: Path, definition: Path, *args: str):
    proc = legato_cli("run", str(definition), "--store", "memory://", "--workspace", str(tmp_path / "runs"),
                      "--json", *args, cwd=tmp_path)
    return proc, (json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else None)


# -- SQL: paths and records ----------------------------------------------------------------------


SALES = """
    workflow:
      id: sales
      steps:
        - step:
            id: extract
            type: bash
            params:
              script: printf 'region,total\\nnorth,150\\nsouth,80\\n' > sales.csv
            transition: {successors: [load]}
        - step:
            id: load
            type: sql
            params:
              query: SELECT region, total FROM read_csv('sales.csv') ORDER BY total DESC
            transition:
              successors:
                report: steps.load.outputs.records[0].total > 100
        - step:
            id: report
            type: noop
            params:
              outputs:
                type: MAP
                expression: "{'top': steps.load.outputs.records[0].region, 'second': steps.load.outputs.rows[1][1]}"
    """


def test_a_query_reads_the_file_the_bash_step_before_it_wrote(tmp_path):
    """
    $ cat sales.yaml          # extract writes sales.csv; load reads it by its relative name
    $ legato run sales.yaml   # from a directory that has no sales.csv
    sales [...] SUCCEEDED     # load found the file in the instance's working directory

    and ``records[0].total`` reads a column by name where ``rows[1][1]`` reads it by position.
    """
    pytest.importorskip("duckdb")
    definition = write(tmp_path, "sales.yaml", SALES)
    proc, report = run_json(tmp_path, definition)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = report["steps"]
    assert steps["load"]["outputs"]["records"] == [{"region": "north", "total": 150},
                                                   {"region": "south", "total": 80}]
    assert steps["load"]["outputs"]["rows"] == [["north", 150], ["south", 80]]
    assert steps["report"]["status"] == "SUCCEEDED"
    assert steps["report"]["outputs"] == {"top": "north", "second": 80}
    assert not (tmp_path / "sales.csv").exists()


# -- YAML 1.2 --------------------------------------------------------------------------------------


def test_yaml_reads_no_on_yes_as_strings_and_0755_as_yaml_1_2_does(tmp_path):
    """
    $ cat countries.yaml
    workflow:
      id: countries
      params: {country: NO, switch: on, answer: yes, off_peak: off, mode: 0755, octal: 0o755, ...}
    $ legato run countries.yaml --json
    "params": {"country": "NO", "switch": "on", "answer": "yes", "off_peak": "off", "mode": 755, "octal": 493, ...}

    (YAML 1.1, PyYAML's dialect, made Norway false and 0755 the number 493.)
    """
    definition = write(tmp_path, "countries.yaml", """
        workflow:
          id: countries
          params:
            country: NO
            switch: on
            answer: yes
            off_peak: off
            mode: 0755
            octal: 0o755
            day: 2025-01-01
            enabled: true
          steps:
            - step: {id: a, type: noop}
        """)
    proc, report = run_json(tmp_path, definition)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report["params"] == {"country": "NO", "switch": "on", "answer": "yes", "off_peak": "off",
                                "mode": 755, "octal": 493, "day": "2025-01-01", "enabled": True}
