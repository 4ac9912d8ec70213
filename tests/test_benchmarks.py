"""The benchmark harness runs and prints one JSON object with every figure beside its baseline.
(The figures themselves are checked by reading them, never by timed assertions here.)"""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import ROOT


def test_quick_benchmark_prints_every_figure_with_a_baseline():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)  # exactly one JSON object on stdout
    figures = report["figures"]
    expected = {"step_overhead", "throughput", "start_overhead", "bash_steps", "import", "memory",
                "validate_100k", "docker_step", "notebook_step", "cold_start", "scaling", "peer", "trigger_lag",
                "step_overhead@memory", "throughput@memory", "start_overhead@memory", "bash_steps@memory"}
    assert expected <= set(figures), sorted(expected - set(figures))
    for name, figure in figures.items():
        if figure.get("skipped"):
            continue  # an engine that is not installed here; the reason is in the figure
        assert figure["value"] > 0, name
        assert figure["baseline"]["value"] > 0 and figure["baseline"]["what"], name
    assert figures["step_overhead"]["store"].startswith("sqlite:///")
    for name in ("step_overhead", "throughput"):  # a durable figure carries its bare-sqlite3 floor
        floor = figures[name]["durable_floor"]
        assert floor["value"] > 0 and floor["commits"] > 0 and floor["rows"] > 0, name
    assert "durable_floor" not in figures["step_overhead@memory"]
    cold = figures["cold_start"]
    assert cold["legato_run"]["value"] > 0 and cold["first_step_running_ms"] > 0
    for kind in ("chain", "fan"):
        assert [row["steps"] for row in figures["scaling"][kind]] == figures["scaling"]["sizes"]
        assert all(row["peak_rss_mb"] > 0 and row["per_step_ms"] > 0 for row in figures["scaling"][kind])
    assert figures["step_overhead@memory"]["store"] == "memory://"
