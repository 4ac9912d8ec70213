"""Queue → first step RUNNING through a `legato worker` (DESIGN §8), beside its baseline.

    python benchmarks/worker_wakeup.py [--starts 50]

Starts a real `legato worker` on a fresh SQLite store, then queues a one-step `noop` workflow
with `legato start --no-wait` (a fresh process each time, as a user or a cron job does), one
after another. The figure is, per instance, the time from its creation (the timestamp start
gives it before its commit) to its step's RUNNING event, both read from the store: how long an
idle worker takes to notice queued work and start it. The baseline is the same figure for
`legato start` in the foreground (the starting process runs the instance itself: nobody has to
be woken). Prints one JSON object.
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


def latencies(db: Path) -> list[float]:
    """ms from each instance's creation to its step's RUNNING event."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT i.created_at, MIN(e.ts) FROM legato_instances i JOIN legato_events e "
            "ON e.instance_id = i.instance_id WHERE e.status = 'RUNNING' AND e.step_id = 'a' "
            "GROUP BY i.instance_id").fetchall()
    finally:
        conn.close()
    return [(running - created) * 1000 for created, running in rows]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=50)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="legato-wake-"))
    (work / "wake.json").write_text(json.dumps(DOC))
    out = {}
    for mode in ("worker", "foreground"):
        db = work / mode / "legato.db"
        env = {**os.environ, "LEGATO_STORE": f"sqlite:///{db}"}
        run = dict(cwd=work, env=env, check=True, capture_output=True)
        subprocess.run([LEGATO, "push", "wake.json"], **run)
        worker = None
        if mode == "worker":
            worker = subprocess.Popen([LEGATO, "worker", "--workspace", str(work / "runs")], cwd=work, env=env,
                                      stdout=subprocess.PIPE, text=True)
            worker.stdout.readline()  # listening
        for _ in range(args.starts):
            if mode == "worker":
                subprocess.run([LEGATO, "start", "wake", "--no-wait"], **run)
            else:
                subprocess.run([LEGATO, "start", "wake", "--workspace", str(work / "runs")], **run)
        if worker is not None:
            deadline = time.monotonic() + 60
            while len(latencies(db)) < args.starts and time.monotonic() < deadline:
                time.sleep(0.05)
            worker.send_signal(signal.SIGTERM)
            worker.communicate(timeout=60)
        xs = latencies(db)
        out[mode] = {"p50_ms": pct(xs, 0.5), "p99_ms": pct(xs, 0.99), "n": len(xs)}
    print(json.dumps({
        "workload": f"{args.starts} x `legato start --no-wait` of a one-step noop workflow, one `legato worker` "
                    "on SQLite: instance created -> step RUNNING",
        "value": out["worker"]["p50_ms"], "p99": out["worker"]["p99_ms"], "unit": "ms", "n": out["worker"]["n"],
        "baseline": {"what": "the same, `legato start` in the foreground (no worker to wake)",
                     "value": out["foreground"]["p50_ms"], "p99": out["foreground"]["p99_ms"], "unit": "ms"},
    }, indent=2))


if __name__ == "__main__":
    main()
