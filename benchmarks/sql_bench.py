"""The ``sql`` step type's latency: a one-step workflow running ``select 1``.

    python benchmarks/sql_bench.py [--runs 20]

Prints one JSON object: the wall time of a one-step ``select 1`` workflow through
``engine.execute`` (memory store, one engine, one trio run: "warm"; p50 of ``--runs`` after the
first, which is reported apart: it starts the run's fork server), with the step's DuckDB process
forked from the fork server and, for comparison, started as a Python of its own
(``Sql.fork_server = False``); beside them the floor, DuckDB run bare in this process
(``duckdb.connect()``, the query, ``close()``; p50). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

DOC = {"workflow": {"id": "bench", "steps": [{"step": {
    "id": "q", "type": "sql", "params": {"query": "select 1"},
    "retry_policy": {"error_retry_limit": 0, "platform_retry_limit": 0}}}]}}


def through_legato(runs: int, fork_server: bool) -> tuple[float, float]:
    """(the first run's seconds, the p50 of the next ``runs``)."""
    from legato.engine import Engine
    from legato.plugins import sql
    from legato.storage import open_storage

    sql.Sql.fork_server = fork_server

    async def main() -> tuple[float, float]:
        engine = Engine(open_storage("memory://"), workspace=Path(tempfile.mkdtemp(prefix="legato-sql-bench-")))
        definition = engine.load(DOC)
        times = []
        for _ in range(runs + 1):
            start = time.perf_counter()
            instance = await engine.execute(definition)
            times.append(time.perf_counter() - start)
            if instance.status.value != "SUCCEEDED":
                attempts = await engine.storage.get_attempts(instance.instance_id)
                raise SystemExit(f"the sql step failed: {[a.message for a in attempts]}")
        return times[0], statistics.median(times[1:])

    try:
        return trio.run(main)
    finally:
        sql.Sql.fork_server = True


def bare(runs: int) -> float:
    import duckdb

    times = []
    for _ in range(runs + 1):
        start = time.perf_counter()
        con = duckdb.connect()
        con.execute("select 1").fetchall()
        con.close()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    print("sql step, forked…", file=sys.stderr)
    first, forked = through_legato(args.runs, fork_server=True)
    print("sql step, a Python of its own…", file=sys.stderr)
    _, own = through_legato(args.runs, fork_server=False)
    print("bare duckdb…", file=sys.stderr)
    floor = bare(args.runs)
    print(json.dumps({
        "figure": "sql_step",
        "runs": args.runs,
        "first_step_ms": round(first * 1000, 1),
        "forked_p50_ms": round(forked * 1000, 1),
        "own_process_p50_ms": round(own * 1000, 1),
        "bare_duckdb_p50_ms": round(floor * 1000, 1),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }))


if __name__ == "__main__":
    main()
