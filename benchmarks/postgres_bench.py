"""The SQL store on PostgreSQL beside SQLite, in the same run (issue 14, DESIGN §9).

    python benchmarks/postgres_bench.py [--quick] [--instances 2000] [--pg postgresql://…]

Without ``--pg`` a throwaway cluster is started for the run (tests/pgserver.py: ``initdb`` in a
temporary directory, a unix socket, ``fsync=off``: the figures are Legato's cost, not the disk's;
SQLite runs with its default ``synchronous=NORMAL``, which does not fsync a commit either).
With ``--pg`` each measurement gets a new database created on that server (the role needs
CREATEDB).

- ``step_overhead``: a chain of 1,000 ``noop`` steps run by ``engine.execute`` in this process;
  wall time / 1,000, p50 of 5 (2 with --quick), a fresh store each; on PostgreSQL, beside the same
  on SQLite interleaved with it (the baseline).
- ``workers``: ``--instances`` (2,000; 300 with --quick) instances of a 3-step ``noop`` chain
  (PARALLEL) queued from this process into a store that 1, 2 and 4 ``legato worker`` processes
  listen on (each started and ready first); completed instances/s from the first queued to the
  last ended (``ended_at`` in the store); on PostgreSQL beside SQLite with the same number of
  workers (the baseline). The curve (1 → 2 → 4) says how the queue scales with workers.

Prints one JSON object (progress on stderr).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

import pgserver  # noqa: E402 - tests/pgserver.py, kernel-free
from run import chain_doc, check_succeeded, warm_up  # noqa: E402

LEGATO = str(Path(sys.executable).parent / "legato")
CHAIN = {"properties": {"run_strategy": {"rule": "parallel", "workflow_concurrency": 400}}, "workflow": {
    "id": "chain3", "steps": [
        {"step": {"id": "a", "type": "noop", "transition": {"successors": {"b": "true"}}}},
        {"step": {"id": "b", "type": "noop", "transition": {"successors": {"c": "true"}}}},
        {"step": {"id": "c", "type": "noop"}}]}}
perf = time.perf_counter


def log(msg: str) -> None:
    print(f"[pg-bench] {msg}", file=sys.stderr, flush=True)


def rnd(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}") if x else x


class Stores:
    """Fresh stores: SQLite files under ``root``, PostgreSQL databases on ``cluster`` (or ``--pg``)."""

    def __init__(self, root: Path, pg: str | None) -> None:
        self.root, self.n = root, 0
        self.cluster = None if pg else pgserver.start()
        self.pg = pg

    def sqlite(self) -> str:
        self.n += 1
        path = self.root / f"s{self.n}"
        path.mkdir()
        return f"sqlite:///{path}/bench.db"

    def postgresql(self) -> str:
        if self.cluster is not None:
            return self.cluster.database("bench")
        import psycopg

        self.n += 1
        name = f"legato_bench_{os.getpid()}_{self.n}"
        with psycopg.connect(self.pg.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        head, _, query = self.pg.partition("?")
        return head.rsplit("/", 1)[0] + "/" + name + (f"?{query}" if query else "")

    def fresh(self, kind: str) -> str:
        return self.sqlite() if kind == "sqlite" else self.postgresql()

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()


# -- step overhead --------------------------------------------------------------------------------

def _chain_ms_per_step(url: str, workspace: Path, n: int) -> float:
    from legato.engine import Engine
    from legato.storage import open_storage

    async def main():
        async with open_storage(url) as storage:
            engine = Engine(storage, workspace=workspace)
            await warm_up(engine)
            definition = engine.load(chain_doc(n))
            t0 = perf()
            instance = await engine.execute(definition)
            dt = perf() - t0
            check_succeeded(instance)
            return dt / n * 1e3

    gc.collect()
    return trio.run(main)


def step_overhead(stores: Stores, root: Path, quick: bool) -> dict:
    n, reps = 1000, (2 if quick else 5)
    samples: dict[str, list[float]] = {"postgresql": [], "sqlite": []}
    for i in range(reps):
        for kind in ("sqlite", "postgresql"):
            samples[kind].append(_chain_ms_per_step(stores.fresh(kind), root / f"ws-{kind}-{i}", n))
        log(f"step_overhead {i + 1}/{reps}: postgresql {samples['postgresql'][-1]:.3f} ms/step, "
            f"sqlite {samples['sqlite'][-1]:.3f}")
    pg, lite = statistics.median(samples["postgresql"]), statistics.median(samples["sqlite"])
    return {
        "workload": f"chain of {n} noop steps, engine.execute in this process, wall time / {n}; p50 of {reps}, "
                    "a fresh store each, PostgreSQL and SQLite interleaved",
        "value": rnd(pg), "unit": "ms/step", "store": "postgresql", "target": 0.5, "target_is": "max",
        "meets_target": pg <= 0.5, "samples": [rnd(x) for x in samples["postgresql"]],
        "baseline": {"what": "the same chain on SQLite (the default store), same run", "value": rnd(lite),
                     "unit": "ms/step", "samples": [rnd(x) for x in samples["sqlite"]]},
        "ratio": rnd(pg / lite),
    }


# -- several workers --------------------------------------------------------------------------------

def _ready(proc: subprocess.Popen, deadline: float) -> None:
    seen = ""
    while "runs up to" not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            raise RuntimeError(f"a worker did not start: {seen}")
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a worker exited ({proc.wait()}): {seen}")
        seen += line


def _drain(procs) -> None:
    for proc in procs:  # keep reading so a worker never blocks on a full pipe
        while select.select([proc.stdout], [], [], 0)[0] and proc.stdout.readline():
            pass


def workers_throughput(url: str, root: Path, n_workers: int, instances: int) -> float:
    from legato.engine import Engine
    from legato.states import InstanceStatus
    from legato.storage import open_storage

    env = {**os.environ, "LEGATO_STORE": url}

    async def push():
        async with open_storage(url) as store:
            await store.push_definition("chain3", CHAIN)

    trio.run(push)
    procs = [subprocess.Popen([LEGATO, "worker", "--max-instances", "100", "--workspace", str(root / "runs")],
                              env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(n_workers)]
    try:
        deadline = time.monotonic() + 120
        for proc in procs:
            _ready(proc, deadline)

        async def main():
            async with open_storage(url) as store:
                engine = Engine(store, workspace=root / "runs")
                version = await store.get_definition("chain3")
                definition = engine.load(version.document)
                definition.version = version.version
                t0 = time.time()
                for _ in range(instances):
                    await engine.start(definition, queued=True)
                limit = time.monotonic() + 600
                while True:
                    done = await store.list_instances("chain3", limit=instances + 1, status=InstanceStatus.SUCCEEDED)
                    if len(done) >= instances:
                        return t0, max(r.ended_at for r in done)
                    if time.monotonic() > limit:
                        raise RuntimeError(f"only {len(done)} of {instances} instances ended in 10 minutes")
                    _drain(procs)
                    await trio.sleep(0.2)  # the benchmark's own look at the store, not part of the figure

        t0, t1 = trio.run(main)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return instances / (t1 - t0)


def workers(stores: Stores, root: Path, instances: int) -> dict:
    curve: dict[str, dict[int, float]] = {"postgresql": {}, "sqlite": {}}
    for n in (1, 2, 4):
        for kind in ("sqlite", "postgresql"):
            where = root / f"w-{kind}-{n}"
            where.mkdir()
            curve[kind][n] = workers_throughput(stores.fresh(kind), where, n, instances)
        log(f"workers {n}: postgresql {curve['postgresql'][n]:.0f} instances/s, sqlite {curve['sqlite'][n]:.0f}")
    pg = {f"{n}_workers": rnd(v) for n, v in curve["postgresql"].items()}
    lite = {f"{n}_workers": rnd(v) for n, v in curve["sqlite"].items()}
    return {
        "workload": f"{instances} instances of a 3-step noop chain (PARALLEL) queued from one process into a store "
                    "that 1, 2 and 4 `legato worker` processes (--max-instances 100) listen on; completed "
                    "instances/s from the first queued to the last ended",
        "value": pg, "unit": "instances/s", "store": "postgresql",
        "scaling_4_over_1": rnd(curve["postgresql"][4] / curve["postgresql"][1]),
        "baseline": {"what": "the same on SQLite (one file, the same numbers of workers), same run", "value": lite,
                     "unit": "instances/s", "scaling_4_over_1": rnd(curve["sqlite"][4] / curve["sqlite"][1])},
        "ratio": {k: rnd(pg[k] / lite[k]) for k in pg},
    }


def run(quick: bool = False, instances: int | None = None, pg: str | None = None) -> dict:
    instances = instances or (300 if quick else 2000)
    root = Path(tempfile.mkdtemp(prefix="legato-pg-bench-"))
    stores = Stores(root, pg)
    try:
        figures = {"step_overhead": step_overhead(stores, root, quick)}
        log(f"workers: {instances} instances with 1, 2 and 4 workers on each store ...")
        figures["workers"] = workers(stores, root, instances)
    finally:
        stores.close()
    import platform

    return {"command": f"python benchmarks/postgres_bench.py --instances {instances}" + (" --quick" if quick else ""),
            "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                        "postgresql": "throwaway cluster (fsync=off)" if pg is None else "--pg"},
            "figures": figures}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--instances", type=int, default=None)
    parser.add_argument("--pg", default=None, help="a PostgreSQL server URL (default: a throwaway cluster)")
    args = parser.parse_args()
    print(json.dumps(run(args.quick, args.instances, args.pg), indent=2))


if __name__ == "__main__":
    main()
