"""Queue → first step RUNNING through a `legato worker` (DESIGN §8), beside its baseline.

    python benchmarks/worker_wakeup.py [--starts 50]

Starts a real `legato worker` on a fresh SQLite store, then queues a one-step `noop` workflow
with `legato start --no-wait` (a fresh process each time, as a user or a cron job does), one
after another. The figure is, per instance, the time from its creation (the timestamp start
gives it before its commit) to its step's RUNNING event, both read from the store: how long an
idle worker takes to notice queued work and start it. The baseline is the same figure for
`legato start` in the foreground (the starting process runs the instance itself: nobody has to
be woken), interleaved with the worker's starts so both see the same load. ``taken_up_p50``:
creation to the instance's IN_PROGRESS (a process took it up). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LEGATO = str(Path(sys.executable).parent / "legato")
DOC = {"workflow": {"id": "wake", "steps": [{"step": {"id": "a", "type": "noop"}}]}}


def latencies(db: Path, status: str = "RUNNING") -> list[float]:
    """ms from each instance's creation to its step's RUNNING event (``status`` IN_PROGRESS: to
    the instance's own IN_PROGRESS, i.e. until a process took it up)."""
    step = "e.step_id = 'a'" if status == "RUNNING" else "e.step_id IS NULL"
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT i.created_at, MIN(e.ts) FROM legato_instances i JOIN legato_events e "
            # a row may hold the step's following transitions too (RUNNING,FINISHING@…): its ts is RUNNING's
            f"ON e.instance_id = i.instance_id WHERE (e.status = ? OR e.status LIKE ?) AND {step} "
            "GROUP BY i.instance_id", (status, status + ",%")).fetchall()
    finally:
        conn.close()
    return [(ts - created) * 1000 for created, ts in rows]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=50)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="legato-wake-"))
    (work / "wake.json").write_text(json.dumps(DOC))
    dbs, envs = {}, {}
    for mode in ("worker", "foreground"):
        dbs[mode] = work / mode / "legato.db"
        envs[mode] = {**os.environ, "LEGATO_STORE": f"sqlite:///{dbs[mode]}"}
        subprocess.run([LEGATO, "push", "wake.json"], cwd=work, env=envs[mode], check=True, capture_output=True)
    worker = subprocess.Popen([LEGATO, "worker", "--workspace", str(work / "runs")], cwd=work, env=envs["worker"],
                              stdout=subprocess.PIPE, text=True)
    worker.stdout.readline()  # listening
    for _ in range(args.starts):  # interleaved, so both see the same load on the machine
        subprocess.run([LEGATO, "start", "wake", "--no-wait"], cwd=work, env=envs["worker"], check=True,
                       capture_output=True)
        subprocess.run([LEGATO, "start", "wake", "--workspace", str(work / "runs")], cwd=work,
                       env=envs["foreground"], check=True, capture_output=True)
    deadline = time.monotonic() + 60
    while len(latencies(dbs["worker"])) < args.starts and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.send_signal(signal.SIGTERM)
    worker.communicate(timeout=60)
    out = {}
    for mode, db in dbs.items():
        xs, taken = latencies(db), latencies(db, "IN_PROGRESS")
        out[mode] = {"p50_ms": pct(xs, 0.5), "p99_ms": pct(xs, 0.99), "n": len(xs),
                     "taken_up_p50_ms": pct(taken, 0.5)}
    print(json.dumps({
        "workload": f"{args.starts} x `legato start --no-wait` of a one-step noop workflow, one `legato worker` "
                    "on SQLite: instance created -> step RUNNING",
        "value": out["worker"]["p50_ms"], "p99": out["worker"]["p99_ms"], "unit": "ms", "n": out["worker"]["n"],
        "taken_up_p50": out["worker"]["taken_up_p50_ms"],
        "baseline": {"what": "the same, `legato start` in the foreground (no worker to wake)",
                     "value": out["foreground"]["p50_ms"], "p99": out["foreground"]["p99_ms"], "unit": "ms",
                     "taken_up_p50": out["foreground"]["taken_up_p50_ms"]},
    }, indent=2))


if __name__ == "__main__":
    main()
