"""The ``notebook`` step type's overhead over papermill run bare.

    python benchmarks/notebook_bench.py [--runs 5]

Prints one JSON object: the wall time of a one-step workflow running a 2-cell notebook through
``engine.execute`` (memory store; p50 of ``--runs``) beside the same notebook run by
``python -m papermill`` as a child process (p50 of ``--runs``), and their ratio. One discarded
warm-up run of each precedes the samples. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

CELLS = [
    "import math\nvalues = [math.sqrt(i) for i in range(1000)]",
    "from legato.notebook import output\noutput('total', round(sum(values), 3))\nprint('total', sum(values))",
]


def write_notebook(path: Path) -> None:
    document = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"c{n}", "metadata": {}, "outputs": [],
                   "source": source} for n, source in enumerate(CELLS)],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    path.write_text(json.dumps(document), encoding="utf-8")


def through_legato(notebook: Path, workspace: Path) -> float:
    from legato.engine import Engine
    from legato.storage import open_storage

    doc = {"workflow": {"id": "bench", "steps": [{"step": {
        "id": "nb", "type": "notebook", "params": {"input_path": str(notebook)},
        "retry_policy": {"error_retry_limit": 0, "platform_retry_limit": 0}}}]}}

    async def main() -> float:
        engine = Engine(open_storage("memory://"), workspace=workspace)
        definition = engine.load(doc)
        start = time.perf_counter()
        instance = await engine.execute(definition)
        took = time.perf_counter() - start
        if instance.status.value != "SUCCEEDED":
            attempts = await engine.storage.get_attempts(instance.instance_id)
            raise SystemExit(f"the notebook step failed: {[a.message for a in attempts]}")
        return took

    return trio.run(main)


def bare_papermill(notebook: Path, output: Path) -> float:
    env = {**os.environ, "LEGATO_OUTPUT": str(output.with_suffix(".outputs"))}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "papermill", str(notebook), str(output), "-k", "python3",
                           "--no-progress-bar"], capture_output=True, text=True, env=env)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"papermill failed:\n{proc.stderr}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="legato-notebook-bench-") as tmp:
        tmp = Path(tmp)
        notebook = tmp / "two_cells.ipynb"
        write_notebook(notebook)
        legato, bare = [], []
        for n in range(args.runs + 1):  # run 0 is the warm-up, interleaved so drift hits both alike
            b = bare_papermill(notebook, tmp / f"bare{n}.ipynb")
            s = through_legato(notebook, tmp / f"runs{n}")
            print(f"run {n}{' (warm-up)' if n == 0 else ''}: legato {s:.3f}s, bare papermill {b:.3f}s", file=sys.stderr)
            if n:
                legato.append(s)
                bare.append(b)
    value, baseline = statistics.median(legato), statistics.median(bare)
    print(json.dumps({
        "workload": "one notebook step (2-cell notebook) through engine.execute, memory store; p50 of "
                    f"{args.runs}",
        "value": round(value, 4), "unit": "s",
        "baseline": {"what": "python -m papermill on the same notebook, as a child process; p50 of "
                             f"{args.runs}", "value": round(baseline, 4), "unit": "s"},
        "ratio": round(value / baseline, 3),
        "samples": [round(x, 4) for x in legato],
        "baseline_samples": [round(x, 4) for x in bare],
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "trio": trio.__version__},
    }))


if __name__ == "__main__":
    main()
