"""`legato serve` through its REST API (DESIGN §8, §9), each figure beside a baseline from the same run.

    python benchmarks/api_bench.py [--quick] [--starts 200] [--instances 2000] [--concurrency 64]

Starts a real `legato serve --port 0 --no-auth` on a fresh SQLite store and drives it with httpx:

- ``start_to_running``: one start at a time (`POST …/versions/1/actions/start` of a one-step
  `noop` workflow), the next once the previous ended; per start, the wall time from just before
  the client sends the request to its step's RUNNING event as the store holds it. Baseline: in
  this process, `Engine.start` → the observer of `Engine.run` seeing RUNNING, on a SQLite store.
- ``throughput``: ``--instances`` starts of a 3-step `noop` chain sent by a concurrent async httpx
  client (``--concurrency`` requests in flight); completed instances/s from the first request to
  the last instance's end (read from the store), each start's latency (request → answer), and the
  server's peak RSS (VmHWM). Baseline: the same instances queued in-process (`Engine.start`,
  queued) then run by a `Worker` in this process: what the HTTP layer adds.

Prints one JSON object (progress on stderr).
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

import trio

LEGATO = str(Path(sys.executable).parent / "legato")
ONE = {"workflow": {"id": "one", "steps": [{"step": {"id": "a", "type": "noop"}}]}}
# PARALLEL: SEQUENTIAL, the default run strategy, would run one instance at a time; 100 is the
# worker's default --max-instances.
CHAIN = {"properties": {"run_strategy": {"rule": "parallel", "workflow_concurrency": 100}}, "workflow": {"id": "chain", "steps": [
    {"step": {"id": "a", "type": "noop", "transition": {"successors": {"b": "true"}}}},
    {"step": {"id": "b", "type": "noop", "transition": {"successors": {"c": "true"}}}},
    {"step": {"id": "c", "type": "noop"}}]}}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3) if xs else 0.0


def query(db: Path, sql: str, args=()) -> list[tuple]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


class Served:
    def __init__(self, work: Path, *args: str) -> None:
        self.db = work / "legato.db"
        env = {**os.environ, "LEGATO_STORE": f"sqlite:///{self.db}"}
        out = work / "serve.out"  # a file, not a pipe: the server writes a line per instance ended
        with open(out, "w") as sink:
            self.proc = subprocess.Popen([LEGATO, "serve", "--port", "0", "--no-auth", "--workspace",
                                          str(work / "runs"), *args], cwd=work, env=env, stdout=sink,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while "listening on " not in out.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"legato serve did not start ({self.proc.poll()}):\n{out.read_text()}")
            time.sleep(0.01)
        self.url = out.read_text().split("listening on ")[1].split()[0]

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
        return 0.0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.communicate(timeout=120)


def start_to_running(served: Served, n: int) -> list[float]:
    import httpx

    with httpx.Client(base_url=served.url, timeout=60) as http:
        http.post("/api/v3/workflows", json=ONE).raise_for_status()
        sent: dict[str, float] = {}
        for _ in range(n + 5):
            t0 = time.time()
            r = http.post("/api/v3/workflows/one/versions/1/actions/start", json={})
            r.raise_for_status()
            iid = r.json()["instance_id"]
            sent[iid] = t0
            while http.get(f"/api/v3/workflows/one/instances/{iid}").json()["status"] != "SUCCEEDED":
                time.sleep(0.001)
    from legato.plugins.sqlstore.store import event_statuses

    running: dict[str, float] = {}
    # A row may hold several of a step's transitions (CREATED,…,RUNNING@dt): RUNNING's time is ts + dt.
    for iid, status, ts in query(served.db, "SELECT instance_id, status, ts FROM legato_events WHERE step_id = 'a' "
                                            "AND status LIKE '%RUNNING%' ORDER BY id"):
        for name, dt in event_statuses(status):
            if name == "RUNNING" and iid not in running:
                running[iid] = ts + dt
    order = sorted(sent, key=sent.get)[5:]  # the first few warm up (imports, caches)
    return [(running[i] - sent[i]) * 1000 for i in order]


def baseline_start_to_running(work: Path, n: int) -> list[float]:
    from legato.engine import Engine
    from legato.storage import open_storage

    async def main() -> list[float]:
        out = []
        async with open_storage(f"sqlite:///{work / 'baseline.db'}") as store:
            engine = Engine(store, workspace=work / "runs-baseline")
            d = engine.load(ONE)
            for i in range(n + 5):
                mark: list[float] = []

                def observer(event, mark=mark) -> None:
                    if event.status == "RUNNING" and event.step_id is not None and not mark:
                        mark.append(time.perf_counter())

                t0 = time.perf_counter()
                instance, _ = await engine.start(d)
                await engine.run(d, instance, observer=observer)
                if i >= 5:
                    out.append((mark[0] - t0) * 1000)
        return out

    return trio.run(main)


def throughput(served: Served, n: int, concurrency: int) -> dict:
    import httpx

    latencies: list[float] = []

    async def main() -> float:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=served.url, timeout=120, limits=limits) as http:
            (await http.post("/api/v3/workflows", json=CHAIN)).raise_for_status()
            left = iter(range(n))
            t_first = time.time()

            async def sender() -> None:
                for _ in left:
                    t0 = time.perf_counter()
                    r = await http.post("/api/v3/workflows/chain/versions/1/actions/start", json={})
                    latencies.append((time.perf_counter() - t0) * 1000)
                    r.raise_for_status()

            async with trio.open_nursery() as nursery:
                for _ in range(concurrency):
                    nursery.start_soon(sender)
        return t_first

    t_first = trio.run(main)
    t_sent = time.time()
    deadline = time.monotonic() + 600
    while query(served.db, "SELECT COUNT(*) FROM legato_instances WHERE workflow_id = 'chain' AND status = "
                           "'SUCCEEDED'")[0][0] < n:
        assert time.monotonic() < deadline, "the instances never all ended"
        time.sleep(0.05)
    last = query(served.db, "SELECT MAX(ended_at) FROM legato_instances WHERE workflow_id = 'chain'")[0][0]
    wall = last - t_first
    return {"completed_per_s": round(n / wall, 1), "wall_s": round(wall, 3), "send_s": round(t_sent - t_first, 3),
            "start_p50_ms": pct(latencies, 0.5), "start_p99_ms": pct(latencies, 0.99),
            "server_peak_rss_mb": served.peak_rss_mb()}


def baseline_throughput(work: Path, n: int) -> dict:
    from legato.engine import Engine
    from legato.storage import open_storage
    from legato.worker import Worker

    async def main() -> float:
        async with open_storage(f"sqlite:///{work / 'baseline-tp.db'}") as store:
            engine = Engine(store, workspace=work / "runs-baseline")
            d = engine.load(CHAIN)
            async with trio.open_nursery() as nursery:
                worker = await nursery.start(Worker(engine).run)
                t0 = time.time()
                for _ in range(n):
                    await engine.start(d, queued=True)
                while worker.counts["ended"] < n:  # the worker's own count: no store reads beside it
                    await trio.sleep(0.01)
                worker.stop()
            last = max(r.ended_at for r in await store.list_instances("chain", limit=n + 1))
            return n / (last - t0)

    return {"completed_per_s": round(trio.run(main), 1)}


def run(quick: bool = False, starts: int | None = None, instances: int | None = None, concurrency: int = 64) -> dict:
    """The `service` section of benchmarks/run.py."""
    starts = starts or (50 if quick else 200)
    instances = instances or (300 if quick else 2000)
    work = Path(tempfile.mkdtemp(prefix="legato-api-bench-"))
    served = Served(work)
    try:
        log(f"service: {starts} API starts one at a time ...")
        latency = start_to_running(served, starts)
        log(f"service: {instances} API starts, {concurrency} in flight ...")
        tp = throughput(served, instances, concurrency)
    finally:
        served.stop()
    log("service: baselines in-process ...")
    base_latency = baseline_start_to_running(work, starts)
    base_tp = baseline_throughput(work, instances)
    return {
        "command": f"python benchmarks/api_bench.py --starts {starts} --instances {instances} "
                   f"--concurrency {concurrency}",
        "start_to_running": {
            "workload": f"{starts} starts of a one-step noop workflow through `legato serve` (SQLite), one at a "
                        "time: client sends POST …/actions/start -> the step's RUNNING event in the store",
            "value": pct(latency, 0.5), "p99": pct(latency, 0.99), "unit": "ms", "target": 5.0,
            "meets_target": pct(latency, 0.5) <= 5.0,
            "baseline": {"what": "in-process Engine.start -> RUNNING seen by Engine.run's observer (SQLite)",
                         "value": pct(base_latency, 0.5), "p99": pct(base_latency, 0.99), "unit": "ms"}},
        "throughput": {
            "workload": f"{instances} instances of a 3-step noop chain started through the API by a concurrent "
                        f"httpx client ({concurrency} requests in flight), one `legato serve` on SQLite: first "
                        "request -> last instance ended",
            "value": tp["completed_per_s"], "unit": "instances/s", "target": 1000,
            "meets_target": tp["completed_per_s"] >= 1000 and tp["start_p99_ms"] <= 50,
            "start_latency_p50_ms": tp["start_p50_ms"], "start_latency_p99_ms": tp["start_p99_ms"],
            "start_latency_p99_target_ms": 50, "wall_s": tp["wall_s"], "all_sent_s": tp["send_s"],
            "server_peak_rss_mb": tp["server_peak_rss_mb"],
            "baseline": {"what": "the same instances queued in-process (Engine.start, queued) and run by an "
                                 "in-process Worker on SQLite: no HTTP", **base_tp, "unit": "instances/s",
                         "value": base_tp["completed_per_s"]}},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--starts", type=int, default=None)
    parser.add_argument("--instances", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    print(json.dumps(run(args.quick, args.starts, args.instances, args.concurrency), indent=2))


if __name__ == "__main__":
    main()
