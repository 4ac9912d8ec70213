"""Traps a newcomer fell into in their first hour (issue 10), each as the CLI transcript they
would see: the definition, the command, the message.

Each test runs the installed ``legato`` script in a directory of its own, as a user types it.
"""

from __future__ import annotations

import json
import re
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


def test_operator_settings_are_yaml_1_2_too(tmp_path):
    """
    $ cat settings.yaml
    bash: {inherit_env: [NO]}      # a variable named NO, not the boolean false
    $ NO=norway legato run --settings settings.yaml env.yaml --json
    "outputs": {"no": "norway"}
    """
    settings = write(tmp_path, "settings.yaml", "bash: {inherit_env: [NO]}\n")
    definition = write(tmp_path, "env.yaml", """
        workflow:
          id: env
          steps:
            - step:
                id: a
                type: bash
                params: {script: 'echo "no=$NO" >> "$LEGATO_OUTPUT"'}
        """)
    proc = legato_cli("run", str(definition), "--settings", str(settings), "--store", "memory://",
                      "--workspace", str(tmp_path / "runs"), "--json", cwd=tmp_path, env_extra={"NO": "norway"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["steps"]["a"]["outputs"] == {"no": "norway"}


# -- references to steps that are not upstream -----------------------------------------------------


def test_validate_names_references_to_steps_that_are_not_upstream(tmp_path):
    """
    $ legato validate branches.yaml
    branches.yaml: 4 problem(s) found
      /workflow/params/early/expression: `steps.extract`: workflow params are evaluated when ...
      /workflow/steps/1/step/params/me/expression: `steps.load` is this step itself: ...
      /workflow/steps/1/step/transition/successors/report: `steps.alert` is not upstream of `load`, ...
      /workflow/steps/3/step/params/total: `steps.alert` is not upstream of `report`, ...
    $ echo $?
    2

    ``alert`` is on another branch: whether it has finished when ``report`` starts depends on
    timing, so the run would work on one day and fail on the next.
    """
    definition = write(tmp_path, "branches.yaml", """
        workflow:
          id: branches
          params:
            early: {type: STRING, expression: "steps.extract.status"}
          steps:
            - step:
                id: extract
                type: noop
                transition: {successors: [load, alert]}
            - step:
                id: load
                type: noop
                params:
                  me: {type: STRING, expression: "steps.load.status"}
                  ok: {type: STRING, expression: "steps.extract.status + ' (not steps.alert)'"}
                transition:
                  successors:
                    report: "steps.alert.status == 'SUCCEEDED' && steps.load.status == 'SUCCEEDED'"
            - step:
                id: alert
                type: noop
            - step:
                id: report
                type: bash
                params:
                  fine: ${steps.extract.status}
                  total: ${steps.alert.outputs.total}
                  script: echo "$total"
        """)
    proc = legato_cli("validate", str(definition), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        f"{definition}: 4 problem(s) found",
        "  /workflow/params/early/expression: `steps.extract`: workflow params are evaluated when the instance "
        "starts, before any step has run; read it in the params of a step downstream of extract",
        "  /workflow/steps/1/step/params/me/expression: `steps.load` is this step itself: its params are evaluated "
        "before it runs; read its outputs in its transition's conditions or in the params of a step downstream of it",
        "  /workflow/steps/1/step/transition/successors/report: `steps.alert` is not upstream of `load`, so it may "
        "or may not have run when `load`'s conditions are evaluated (as it ends); a condition of `load` can read "
        "`load`, `extract` (or add `load` to the successors of `alert`)",
        "  /workflow/steps/3/step/params/total: `steps.alert` is not upstream of `report`, so it may or may not "
        "have run when `report`'s params are evaluated; `report` can read `load`, `extract` (or add `report` to "
        "the successors of `alert`)",
    ]


def test_validate_names_maestro_step_param_references_to_steps_that_are_not_upstream(tmp_path):
    """
    $ legato validate sleepy.yaml
    sleepy.yaml: 3 problem(s) found
      /workflow/params/total: `job1__sleep_seconds`: workflow params are evaluated when ...
      /workflow/steps/2/step/params/said: `job1__sleep_seconds` reads step `job1`, which is not upstream of ...
      /workflow/steps/2/step/params/next/expression: `job1__sleep_seconds` reads step `job1`, which is not ...
    $ echo $?
    2

    Maestro's ParamEvaluator.getReferenceParam: "a step can only reference its upstream step's
    param". ``job1`` and ``job2`` both follow ``start``; whether ``job1`` has finished when
    ``job2`` starts depends on timing, so the reference is refused at load, not at run time.
    """
    definition = write(tmp_path, "sleepy.yaml", """
        workflow:
          id: sleepy
          params:
            total: "${job1__sleep_seconds}"
          steps:
            - step:
                id: start
                type: noop
                transition: {successors: [job1, job2]}
            - step:
                id: job1
                type: sleep
                params: {sleep_seconds: {type: LONG, value: 0}}
            - step:
                id: job2
                type: noop
                params:
                  said: "slept ${job1__sleep_seconds}s"
                  next: {type: LONG, expression: "job1__sleep_seconds + 1"}
        """)
    proc = legato_cli("validate", str(definition), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        f"{definition}: 3 problem(s) found",
        "  /workflow/params/total: `job1__sleep_seconds`: workflow params are evaluated when the instance starts, "
        "before any step has run; read it in the params of a step downstream of job1",
        "  /workflow/steps/2/step/params/said: `job1__sleep_seconds` reads step `job1`, which is not upstream of "
        "`job2`, so it may or may not have run when `job2`'s params are evaluated; `job2` can read `start` (or add "
        "`job2` to the successors of `job1`)",
        "  /workflow/steps/2/step/params/next/expression: `job1__sleep_seconds` reads step `job1`, which is not "
        "upstream of `job2`, so it may or may not have run when `job2`'s params are evaluated; `job2` can read "
        "`start` (or add `job2` to the successors of `job1`)",
    ]


def test_validate_checks_the_entries_of_a_maestro_map_param(tmp_path):
    """
    $ legato validate conf.yaml
    conf.yaml: 3 problem(s) found
      /workflow/steps/1/step/params/conf/value/image: ${imgae} names no param; ...
      /workflow/steps/1/step/params/conf/value/limits/value/cpu/expression: `steps.sizer` names no step
      /workflow/steps/1/step/params/conf/value/wait/expression: `job1__sleep_second`: step 'job1' declares ...
    $ echo $?
    2

    Each entry of a MAP written Maestro's way (MapParamDefinition) is a param definition of its
    own: a mistyped name in it is found at load, at the entry, not when the step runs.
    """
    definition = write(tmp_path, "conf.yaml", """
        workflow:
          id: conf
          params:
            image_name: busybox
          steps:
            - step:
                id: job1
                type: sleep
                params: {sleep_seconds: {type: LONG, value: 0}}
                transition: {successors: [job2]}
            - step:
                id: job2
                type: noop
                params:
                  conf:
                    type: MAP
                    value:
                      image: {type: STRING, value: "${imgae}"}
                      limits:
                        type: MAP
                        value:
                          cpu: {type: LONG, expression: "steps.sizer.outputs.cpu"}
                      wait: {type: LONG, expression: "job1__sleep_second * 2"}
                      tag: {type: STRING, value: "${image_name}:${job1__sleep_seconds}"}
        """)
    proc = legato_cli("validate", str(definition), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    at = "/workflow/steps/1/step/params/conf/value"
    assert proc.stderr.splitlines() == [
        f"{definition}: 3 problem(s) found",
        f"  {at}/image: ${{imgae}} names no param; declare `imgae` or write $${{…}} for a literal",
        f"  {at}/limits/value/cpu: `steps.sizer` names no step",
        f"  {at}/wait: `job1__sleep_second`: step 'job1' declares no param 'sleep_second' (it declares sleep_seconds)",
    ]


def test_a_reference_to_a_step_downstream_says_it_has_not_run_yet(tmp_path):
    """
    $ legato validate early.json
      /workflow/steps/0/step/params/n/expression: `steps.b` runs after `a`, so it has not run yet when
      `a`'s params are evaluated; nothing is upstream of `a`
    """
    definition = write(tmp_path, "early.json", json.dumps({"workflow": {"id": "early", "steps": [
        {"step": {"id": "a", "type": "noop", "params": {"n": {"type": "LONG", "expression": "steps.b.attempt"}},
                  "transition": {"successors": ["b"]}}},
        {"step": {"id": "b", "type": "noop"}}]}}))
    proc = legato_cli("validate", str(definition), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[1:] == [
        "  /workflow/steps/0/step/params/n/expression: `steps.b` runs after `a`, so it has not run yet when "
        "`a`'s params are evaluated; nothing is upstream of `a`"]


def test_references_to_any_ancestor_validate(tmp_path):
    """Ancestors at every distance, through a diamond and a long chain, and a step's own outputs
    in its conditions, are all upstream: no false alarm."""
    steps = [{"step": {"id": "top", "type": "noop", "transition": {"successors": ["left", "right"]}}},
             {"step": {"id": "left", "type": "noop", "transition": {"successors": ["join"]}}},
             {"step": {"id": "right", "type": "noop", "transition": {"successors": ["join"]}}},
             {"step": {"id": "join", "type": "noop", "transition": {"successors": ["c0"]},
                       "params": {"a": "${steps.top.status}", "b": "${steps.left.status}${steps.right.status}"}}}]
    n = 300
    for i in range(n):
        last = i == n - 1
        steps.append({"step": {
            "id": f"c{i}", "type": "noop",
            "params": {"far": {"type": "STRING", "expression": "steps.top.status + steps.join.status"},
                       **({"back": f"${{steps.c{i - 3}.status}}"} if i >= 3 else {})},
            "transition": {"successors": {} if last else {f"c{i + 1}": f"steps.c{i}.status == 'SUCCEEDED' "
                                                                       "&& steps.right.status != ''"}}}})
    definition = write(tmp_path, "deep.json", json.dumps({"workflow": {"id": "deep", "steps": steps}}))
    proc = legato_cli("validate", str(definition), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


# -- CEL errors in the user's terms ----------------------------------------------------------------


def _failure_line(stdout: str) -> tuple[str, str, str]:
    """(step, status, message) of the run summary's one failed attempt: ``  step (attempt 1) STATUS: message``."""
    found = re.findall(r"^  ([\w.-]+) \(attempt \d+\) ([A-Z_]+): (.*)$", stdout, re.M)
    assert len(found) == 1, stdout
    return found[0]


def test_a_condition_reading_a_row_by_name_says_how_to_write_it(tmp_path):
    """
    $ legato run rows.yaml
    ...
    traps [...] FAILED in 0.30s (...)
      load (attempt 1) INTERNALLY_FAILED: /workflow/steps/0/step/transition/successors/report: condition
      failed: `steps.load.outputs.rows[0]` is a list; use `rows[0][1]` or `records[0].total`

    The pointer names the condition (load's transition to report); which step ends in which
    status is Maestro's rule, pinned by tests/test_maestro_statuses.py.
    """
    pytest.importorskip("duckdb")
    definition = write(tmp_path, "rows.yaml", """
        workflow:
          id: traps
          steps:
            - step:
                id: load
                type: sql
                params:
                  query: SELECT 'north' AS region, 42 AS total
                transition:
                  successors:
                    report: steps.load.outputs.rows[0].total > 10
            - step:
                id: report
                type: noop
        """)
    proc = legato_cli("run", str(definition), "--store", "memory://", "--workspace", str(tmp_path / "runs"),
                      cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    _, _, message = _failure_line(proc.stdout)
    assert message == ("/workflow/steps/0/step/transition/successors/report: condition failed: "
                       "`steps.load.outputs.rows[0]` is a list; use `rows[0][1]` or `records[0].total`")
    assert "celpy" not in proc.stdout + proc.stderr and "Type(" not in proc.stdout + proc.stderr


def test_a_param_expression_that_fails_is_blamed_on_its_step_in_cel_terms(tmp_path):
    """
    $ legato run count.yaml
      step(s) failed: report
      report (attempt 1) INTERNALLY_FAILED: /workflow/steps/1/step/params/big/expression: CEL
      `steps.count.outputs.n > 100` compares a string (`steps.count.outputs.n`) with an int (`100`);
      convert one side: `int(steps.count.outputs.n)`
    """
    definition = write(tmp_path, "count.yaml", """
        workflow:
          id: count
          steps:
            - step:
                id: count
                type: bash
                params: {script: 'echo "n=250" >> "$LEGATO_OUTPUT"'}
                transition: {successors: [report]}
            - step:
                id: report
                type: noop
                params:
                  big: {type: BOOLEAN, expression: "steps.count.outputs.n > 100"}
        """)
    proc = legato_cli("run", str(definition), "--store", "memory://", "--workspace", str(tmp_path / "runs"),
                      cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "  step(s) failed: report" in proc.stdout.splitlines()
    step, _, message = _failure_line(proc.stdout)
    assert step == "report"
    assert message == ("/workflow/steps/1/step/params/big/expression: CEL `steps.count.outputs.n > 100` compares "
                       "a string (`steps.count.outputs.n`) with an int (`100`); convert one side: "
                       "`int(steps.count.outputs.n)`")


OUTPUTS = {"row_count": 2, "columns": ["region", "total"], "rows": [["north", 150], ["south", 80]],
           "records": [{"region": "north", "total": 150}, {"region": "south", "total": 80}], "n": "5"}


@pytest.mark.parametrize(("expression", "message"), [
    # a list read by name
    ("steps.load.outputs.rows[0].total > 100",
     "`steps.load.outputs.rows[0]` is a list; use `rows[0][1]` or `records[0].total`"),
    ("steps.load.outputs.rows[0]['total'] > 100",
     "`steps.load.outputs.rows[0]` is a list, indexed by position; use `rows[0][1]` or `records[0].total`"),
    ("steps.load.outputs.rows[0].totl > 100",
     "`steps.load.outputs.rows[0]` is a list, which has no fields: `.totl` needs a map; index a list by "
     "position (`steps.load.outputs.rows[0][0]`); its columns, in order: region, total"),
    ("steps.load.outputs.rows['0']",
     "`steps.load.outputs.rows` is a list: index it by position with an int, not a string (`'0'`)"),
    ("steps.load.outputs.rows[5][0] == 'x'",
     "`steps.load.outputs.rows[5]`: index 5 is out of range; `steps.load.outputs.rows` has 2 element(s)"),
    # an int compared with a string
    ("steps.load.outputs.n > 3",
     "`steps.load.outputs.n > 3` compares a string (`steps.load.outputs.n`) with an int (`3`); convert one "
     "side: `int(steps.load.outputs.n)`"),
    ("threshold < 2.5", "`threshold < 2.5` compares an int (`threshold`) with a double (`2.5`); convert the int: "
                        "`double(threshold)`"),
    ("steps.load.outputs.row_count + 'a'",
     "`steps.load.outputs.row_count + 'a'`: no `+` between an int (`steps.load.outputs.row_count`) and a string "
     "(`'a'`); convert one side: `string(steps.load.outputs.row_count)` to join text, `int('a')` to add"),
    # a missing key
    ("steps.load.outputs.rowcount > 0",
     "`steps.load.outputs` has no `rowcount` (did you mean `row_count`?); its keys: columns, n, records, "
     "row_count, rows"),
    ("steps.load.outputs['total']",
     "`steps.load.outputs` has no key 'total'; its keys: columns, n, records, row_count, rows"),
    ("steps.alert.status == 'SUCCEEDED'",
     "`steps.alert`: no step `alert` has finished at this point (finished: load); read steps upstream of this one"),
    # a method on the wrong type, a function, a name
    ("steps.load.outputs.row_count.startsWith('1')",
     "`steps.load.outputs.row_count.startsWith('1')`: `startsWith()` applies to a string, and "
     "`steps.load.outputs.row_count` is an int"),
    ("int(steps.load.outputs.rows[0][0]) > 1", "`int(steps.load.outputs.rows[0][0])`: 'north' is not an int"),
    ("size(threshold) > 1", "`size(threshold)`: `size()` does not take (int)"),
    ("thresold > 1", "`thresold` is not defined; the names here: params, steps, threshold, workflow"),
    ("steps.load.outputs.row_count ? 'a' : 'b'",
     "`steps.load.outputs.row_count ? 'a' : 'b'`: the condition before `?` must be a bool, and "
     "`steps.load.outputs.row_count` is an int"),
    ("!steps.load.outputs.n", "`!steps.load.outputs.n`: `!` needs a bool, and `steps.load.outputs.n` is a string"),
    ("steps.load.outputs.row_count / 0 > 1", "`steps.load.outputs.row_count / 0`: cannot divide by zero"),
    # Legato's own functions keep their words
    ("size(intsBetween(0, 5, 0)) > 0", "intsBetween: step must not be 0"),
])
def test_cel_errors_name_the_sub_expression_and_cel_types(expression, message):
    """The common mistakes, each as the message a user reads after ``CEL `` (cel-python's own
    message named Python classes: ``ListType([...]) with type '<class 'celpy.celtypes.ListType'>'
    does not support field selection``)."""
    from legato.cel import CelCompiler, CelError, to_cel

    context = {"steps": to_cel({"load": {"status": "SUCCEEDED", "outputs": OUTPUTS}}),
               "params": to_cel({"threshold": 3}), "threshold": to_cel(3), "workflow": to_cel({"id": "w"})}
    with pytest.raises(CelError) as info:
        CelCompiler().compile(expression).evaluate(context)
    assert info.value.message == message


def test_the_upstream_check_walks_once_per_step_referenced_from_afar(monkeypatch):
    """The check stays linear for 100,000-step definitions (DESIGN §9, validate ≤ 2 s): references
    to a predecessor or a predecessor's predecessor cost a lookup, and the steps named from farther
    away are answered by one forward walk each, whatever the number of readers."""
    from legato import definition as definition_module
    from legato.cel import CelCompiler
    from legato.definition import upstream
    from legato.plugin_manager import get_plugins

    walks = []
    walk = upstream._descendants
    monkeypatch.setattr(upstream, "_descendants", lambda *a: walks.append(a[0]) or walk(*a))
    n = 5_000
    steps = [{"step": {"id": f"s{i}", "type": "noop",
                       "params": {"first": {"type": "STRING", "expression": "steps.s0.status"},
                                  "back": f"${{steps.s{max(i - 2, 0)}.status}}"} if i >= 2 else {},
                       "transition": {"successors": [f"s{i + 1}"] if i + 1 < n else []}}} for i in range(n)]
    plugins = get_plugins()
    loaded = definition_module.load_definition({"workflow": {"id": "long", "steps": steps}},
                                               plugins.step_types.types, CelCompiler())
    assert len(loaded.steps) == n
    assert walks == ["s0"]


def test_the_upstream_check_of_step_param_references_walks_once_too(monkeypatch):
    """Maestro's `s0__x` references cost what `steps.s0` ones do: one forward walk from `s0` for
    all 5,000 readers, and one more for the step read from afar by the last one only."""
    from legato import definition as definition_module
    from legato.cel import CelCompiler
    from legato.definition import upstream
    from legato.plugin_manager import get_plugins

    walks = []
    walk = upstream._descendants
    monkeypatch.setattr(upstream, "_descendants", lambda *a: walks.append(a[0]) or walk(*a))
    n = 5_000
    steps = [{"step": {"id": f"s{i}", "type": "noop",
                       "params": {"x": i, **({"first": {"type": "LONG", "expression": "s0__x + 1"},
                                             "m": {"type": "MAP", "value": {"back": {
                                                 "type": "STRING", "value": f"${{s{max(i - 2, 0)}__x}}"}}}}
                                            if i >= 2 else {}),
                                  **({"mid": "${s2500__x}"} if i == n - 1 else {})},
                       "transition": {"successors": [f"s{i + 1}"] if i + 1 < n else []}}} for i in range(n)]
    plugins = get_plugins()
    loaded = definition_module.load_definition({"workflow": {"id": "long", "steps": steps}},
                                               plugins.step_types.types, CelCompiler())
    assert len(loaded.steps) == n
    assert sorted(walks) == ["s0", "s2500"]
    assert ("s0__x", "s0", "x") in loaded.by_id["s9"].params["first"].step_refs
