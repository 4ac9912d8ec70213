"""``legato graph FILE|INSTANCE``: the DAG as Mermaid or DOT, an instance's steps coloured by state."""

from __future__ import annotations

import json
import subprocess

from .conftest import LEGATO, ROOT


def legato(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([LEGATO, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


ETL_MERMAID = '''\
---
title: "daily-sales"
---
flowchart LR
    s0["extract<br/>bash"]
    s1["validate<br/>bash"]
    s2["load<br/>bash"]
    s3["alert<br/>bash"]
    s4["report<br/>bash"]
    s0 --> s1
    s1 -->|"steps.extract.outputs.rows.int() #gt;= threshold && steps.validate.outputs.bad_rows == 0"| s2
    s1 -->|"steps.extract.outputs.rows.int() #lt; threshold || steps.validate.outputs.bad_rows #gt; 0"| s3
    s2 --> s4
    s3 --> s4
'''


def test_graph_of_a_file_prints_mermaid(tmp_path):
    """$ legato graph examples/etl.json"""
    proc = legato("graph", str(ROOT / "examples" / "etl.json"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ETL_MERMAID
    assert not (tmp_path / ".legato").exists()  # drawing a file opens no store


QUOTED = {"workflow": {"id": "quoted", "steps": [
    {"step": {"id": "job.1", "type": "noop", "transition": {"successors": {
        "job.2": "'say \"hi\" #1' != 'a\\\\b'", "job.3": True, "job.4": "false"}}}},
    {"step": {"id": "job.2", "type": "noop"}}, {"step": {"id": "job.3", "type": "sleep"}},
    {"step": {"id": "job.4", "type": "noop"}}]}}


def test_graph_dot_escapes_quotes_and_backslashes(tmp_path):
    """$ legato graph quoted.json --format dot"""
    path = tmp_path / "quoted.json"
    path.write_text(json.dumps(QUOTED))
    proc = legato("graph", str(path), "--format", "dot", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == '''\
digraph "quoted" {
    rankdir=LR;
    label="quoted"; labelloc=t;
    node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica"];
    edge [fontname="Helvetica", fontsize=10];
    "job.1" [label="job.1\\nnoop"];
    "job.2" [label="job.2\\nnoop"];
    "job.3" [label="job.3\\nsleep"];
    "job.4" [label="job.4\\nnoop"];
    "job.1" -> "job.2" [label="'say \\"hi\\" #1' != 'a\\\\\\\\b'"];
    "job.1" -> "job.3";
    "job.1" -> "job.4" [label="false"];
}
'''


def test_graph_mermaid_escapes_what_would_end_a_label(tmp_path):
    path = tmp_path / "quoted.json"
    path.write_text(json.dumps(QUOTED))
    proc = legato("graph", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert '    s0 -->|"\'say #quot;hi#quot; #35;1\' != \'a\\\\b\'"| s1\n' in proc.stdout
    assert "    s0 --> s2\n" in proc.stdout and '    s0 -->|"false"| s3\n' in proc.stdout


FAILING = {"workflow": {"id": "partly", "steps": [
    {"step": {"id": "start", "type": "noop", "transition": {"successors": {"flaky": "true", "never": "false"}}}},
    {"step": {"id": "flaky", "type": "bash", "params": {"script": "exit 1"},
              "retry_policy": {"error_retry_limit": 1, "backoff": {"type": "fixed", "base": 0}},
              "transition": {"successors": ["after"]}}},
    {"step": {"id": "never", "type": "noop"}},
    {"step": {"id": "after", "type": "noop"}}]}}


def test_graph_of_an_instance_colours_each_step_by_its_state(tmp_path):
    """$ legato run partly.json; legato graph <id prefix>"""
    path = tmp_path / "partly.json"
    path.write_text(json.dumps(FAILING))
    store = f"sqlite:///{tmp_path}/legato.db"
    ran = legato("run", str(path), "--store", store, "--json", cwd=tmp_path)
    assert ran.returncode == 1, ran.stderr
    iid = json.loads(ran.stdout)["instance_id"]
    proc = legato("graph", iid[:6], "--store", store, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f'''\
---
title: "partly v1 [{iid}] FAILED"
---
flowchart LR
    s0["start<br/>noop<br/>SUCCEEDED"]
    s1["flaky<br/>bash<br/>FATALLY_FAILED (attempt 2)"]
    s2["never<br/>noop<br/>UNSATISFIED"]
    s3["after<br/>noop<br/>NOT_CREATED"]
    s0 --> s1
    s0 -->|"false"| s2
    s1 --> s3
    classDef SUCCEEDED fill:#c8e6c9,stroke:#2e7d32,color:#000
    class s0 SUCCEEDED
    classDef FATALLY_FAILED fill:#ffcdd2,stroke:#c62828,color:#000
    class s1 FATALLY_FAILED
    classDef UNSATISFIED fill:#eeeeee,stroke:#9e9e9e,color:#000
    class s2 UNSATISFIED
    classDef NOT_CREATED fill:#eeeeee,stroke:#9e9e9e,color:#000
    class s3 NOT_CREATED
'''
    dot = legato("graph", iid, "--store", store, "--format", "dot", cwd=tmp_path)
    assert dot.returncode == 0, dot.stderr
    assert f'    label="partly v1 [{iid}] FAILED"; labelloc=t;\n' in dot.stdout
    assert '    "flaky" [label="flaky\\nbash\\nFATALLY_FAILED (attempt 2)", fillcolor="#ffcdd2", color="#c62828"];\n' \
        in dot.stdout


def test_graph_of_an_unknown_instance_is_exit_2_and_creates_no_store(tmp_path):
    proc = legato("graph", "3fa2", "--store", f"sqlite:///{tmp_path}/none/legato.db", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"legato: no Legato store at {tmp_path}/none/legato.db")
    assert not (tmp_path / "none").exists()
    store = f"sqlite:///{tmp_path}/legato.db"
    legato("run", str(ROOT / "examples" / "etl.json"), "--store", store, "--workspace", str(tmp_path / "runs"),
           cwd=tmp_path)
    proc = legato("graph", "zzzz", "--store", store, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == f"legato: no instance 'zzzz' in {store}: `legato list` shows the instances there\n"


def test_graph_of_an_invalid_file_lists_its_problems_with_exit_2(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"workflow": {"id": "bad", "steps": [
        {"step": {"id": "a", "type": "noop", "transition": {"successors": ["b"]}}}]}}))
    proc = legato("graph", "bad.json", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "bad.json: 1 problem(s) found\n  /workflow/steps/0/step/transition/successors/b: no such step\n"


def test_every_step_status_has_a_colour():
    """A status added to the state machine (DISABLED came with Maestro's statuses) gets a colour
    of its own kind, not the grey fallback of an unknown one."""
    from legato.graph import COLOURS
    from legato.states import StepStatus

    assert {s.value for s in StepStatus} - set(COLOURS) == set()
