"""Legato benchmarks (DESIGN §9): prints ONE JSON object on stdout, progress on stderr.

    python benchmarks/run.py [--quick] [--store URL …] [--only fig1,fig2]

Every figure is reported beside a baseline measured in the same run, on the same machine, so
the numbers can be compared across machines by their ratio. See benchmarks/README.md.

``--store`` (repeatable) is a storage URL each measurement opens afresh; a ``{tmp}`` in it is
replaced by a new empty directory for every measurement. By default the engine figures run on the
embedded default store, ``sqlite:///{tmp}/bench.db`` (reported under their plain names, as DESIGN
§9's targets are for SQLite), and again on ``memory://`` (reported as ``<figure>@memory``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import trio

from legato.engine import Engine
from legato.storage import StorageError, open_storage

REPO = Path(__file__).resolve().parent.parent
perf = time.perf_counter


# -- plumbing --------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def rnd(x: float, digits: int = 4) -> float:
    """Round to ``digits`` significant digits (keeps the JSON readable)."""
    if x == 0 or x != x:
        return x
    return float(f"{x:.{digits}g}")


def maxrss_mb(ru_maxrss: int) -> float:
    """ru_maxrss is KiB on Linux, bytes on macOS."""
    return ru_maxrss / (1024 * 1024) if sys.platform == "darwin" else ru_maxrss / 1024


def figure(workload: str, value: float, unit: str, target: float, *, higher_is_better: bool = False,
           baseline: dict[str, Any], samples: list[float], ratio: bool = True, **extra: Any) -> dict[str, Any]:
    meets = value >= target if higher_is_better else value <= target
    entry: dict[str, Any] = {
        "workload": workload, "value": rnd(value), "unit": unit, "target": target,
        "target_is": "min" if higher_is_better else "max", "meets_target": bool(meets),
        "baseline": {**baseline, "value": rnd(baseline["value"])},
    }
    if ratio:
        entry["ratio"] = rnd(value / baseline["value"]) if baseline["value"] else None
    entry["samples"] = [rnd(s) for s in samples]
    entry.update(extra)
    return entry


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.quick = args.quick
        self.root = root
        self._n = 0

    def fresh_dir(self, tag: str) -> Path:
        self._n += 1
        path = self.root / f"{tag}-{self._n}"
        path.mkdir(parents=True)
        return path

    store = "memory://"

    def store_url(self) -> str:
        url = self.store
        if "{tmp}" in url:
            url = url.replace("{tmp}", str(self.fresh_dir("store")))
        return url

    def run_once(self, body: Callable[[Engine], Any]) -> Any:
        return self.engine_run(body)[0]

    def sqlite_url(self) -> str:
        """A new SQLite store (the default one) for the figures that only run on it."""
        return f"sqlite:///{self.fresh_dir('store')}/bench.db"

    def engine_run(self, body: Callable[[Engine], Any], record: bool = False) -> Any:
        """``await body(engine)`` in a fresh trio run with a fresh store, engine and workspace:
        (result, floor, batches). With ``record`` on a SQLite store, ``floor`` is the seconds bare
        sqlite3 takes to commit the same rows in the same transactions, ``batches`` their shapes."""
        url = self.store_url()
        if not record or not url.startswith("sqlite:///"):
            return self._engine_run(body, url), None, None
        recorder: list[CommitRecorder] = []

        async def wrapped(engine: Engine):
            recorder.append(CommitRecorder(engine.storage))
            return await body(engine)

        result = self._engine_run(wrapped, url)
        db = Path(url.split(":///", 1)[1].split("?", 1)[0])
        batches = recorder[0].batches
        return result, sqlite_floor(db, batches, self.fresh_dir("floor")), batches

    def _engine_run(self, body: Callable[[Engine], Any], url: str) -> Any:
        gc.collect()

        async def main():
            storage = open_storage(url)
            async with storage:
                engine = Engine(storage, workspace=self.fresh_dir("ws"))
                return await body(engine)

        return trio.run(main)


def chain_doc(n: int, wid: str = "chain") -> dict:
    steps = []
    for i in range(n):
        step: dict[str, Any] = {"id": f"s{i}", "type": "noop"}
        if i < n - 1:
            step["transition"] = {"successors": [f"s{i + 1}"]}
        steps.append({"step": step})
    return {"workflow": {"id": wid, "steps": steps}}


def fan_doc(width: int, wid: str = "fan") -> dict:
    steps = [{"step": {"id": "start", "type": "noop", "transition": {"successors": [f"p{i}" for i in range(width)]}}}]
    steps += [{"step": {"id": f"p{i}", "type": "noop", "transition": {"successors": ["end"]}}} for i in range(width)]
    steps.append({"step": {"id": "end", "type": "noop"}})
    return {"workflow": {"id": wid, "steps": steps}}


async def warm_up(engine: Engine) -> None:
    """One small run, discarded, so a figure's first sample does not pay one-off costs."""
    check_succeeded(await engine.execute(engine.load(chain_doc(20, "warmup"))))


def check_succeeded(instance) -> None:
    if instance.status.value != "SUCCEEDED":
        raise RuntimeError(f"benchmark instance ended {instance.status.value}: {instance.message}")


# -- 1. step overhead ------------------------------------------------------------------------

def bench_step_overhead(b: Bench) -> dict:
    n, reps = 1000, (2 if b.quick else 5)
    doc = chain_doc(n)

    async def legato(engine: Engine) -> float:
        d = engine.load(doc)
        t0 = perf()
        inst = await engine.execute(d)
        dt = perf() - t0
        check_succeeded(inst)
        return dt

    async def bare() -> float:
        async def hop(ev: trio.Event) -> None:
            ev.set()

        async with trio.open_nursery() as nursery:
            t0 = perf()
            for _ in range(n):
                ev = trio.Event()
                nursery.start_soon(hop, ev)
                await ev.wait()
            return perf() - t0

    b.run_once(warm_up)  # discarded: first-use costs (lazy imports, step-type instances)
    samples, base, floors = [], [], []
    for i in range(reps):
        gc.collect()
        base.append(trio.run(bare) / n * 1e3)
        dt, floor, batches = b.engine_run(legato, record=True)
        samples.append(dt / n * 1e3)
        if floor is not None:
            floors.append(floor)
        log(f"step_overhead {i + 1}/{reps}: {samples[-1]:.4f} ms/step (bare trio {base[-1]:.4f})")
    entry = figure(
        f"chain of {n} noop steps (transition.successors to the next); wall time of engine.execute "
        f"(start -> instance end) / {n}; {reps} runs after one discarded warm-up, fresh store and engine each",
        p50(samples), "ms/step", 0.5, samples=samples,
        baseline={"what": f"{n} trio tasks spawned one after another, each awaited via a trio.Event "
                          f"round trip (p50 of {reps})", "value": p50(base), "unit": "ms/step",
                  "samples": [rnd(x) for x in base]},
    )
    add_floor(entry, floors, n, "ms/step", True, batches)
    return entry


# -- 2. throughput ---------------------------------------------------------------------------

def bench_throughput(b: Bench) -> dict:
    width, reps = 10_000, (1 if b.quick else 3)
    total = width + 2
    doc = fan_doc(width)

    async def legato(engine: Engine) -> float:
        d = engine.load(doc)
        t0 = perf()
        inst = await engine.execute(d)
        dt = perf() - t0
        check_succeeded(inst)
        return dt

    async def bare() -> float:
        async def nothing() -> None:
            pass

        t0 = perf()
        async with trio.open_nursery() as nursery:
            for _ in range(total):
                nursery.start_soon(nothing)
        return perf() - t0

    b.run_once(warm_up)  # discarded: first-use costs (lazy imports, step-type instances)
    samples, base, floors = [], [], []
    for i in range(reps):
        gc.collect()
        base.append(total / trio.run(bare))
        dt, floor, batches = b.engine_run(legato, record=True)
        samples.append(total / dt)
        if floor is not None:
            floors.append(floor)
        log(f"throughput {i + 1}/{reps}: {samples[-1]:.0f} steps/s (bare trio {base[-1]:.0f} tasks/s)")
    entry = figure(
        f"1 -> {width} parallel noop -> 1 ({total} steps, no step_concurrency); {total} / wall time of "
        f"engine.execute (load excluded); p50 of {reps}",
        p50(samples), "steps/s", 5000, higher_is_better=True, samples=samples,
        baseline={"what": f"{total} bare trio tasks doing nothing, spawned in one nursery (p50 of {reps})",
                  "value": p50(base), "unit": "tasks/s", "samples": [rnd(x) for x in base]},
    )
    add_floor(entry, floors, total, "steps/s", False, batches)
    return entry


# -- 3. start overhead -----------------------------------------------------------------------

def bench_start_overhead(b: Bench) -> dict:
    n, warmup = (50 if b.quick else 200), 10
    doc = {"workflow": {"id": "one", "steps": [{"step": {"id": "only", "type": "noop"}}]}}

    async def legato(engine: Engine) -> list[float]:
        d = engine.load(doc)
        out = []
        for i in range(warmup + n):
            mark: list[float] = []

            def observer(event, mark=mark) -> None:
                if event.status == "RUNNING" and event.step_id is not None and not mark:
                    mark.append(perf())

            t0 = perf()
            instance, _ = await engine.start(d)
            final = await engine.run(d, instance, observer=observer)
            check_succeeded(final)
            if i >= warmup:
                out.append((mark[0] - t0) * 1e3)
        return out

    async def bare() -> list[float]:
        async def hop(ev: trio.Event) -> None:
            ev.set()

        out = []
        async with trio.open_nursery() as nursery:
            for i in range(warmup + n):
                t0 = perf()
                ev = trio.Event()
                nursery.start_soon(hop, ev)
                await ev.wait()
                if i >= warmup:
                    out.append((perf() - t0) * 1e3)
        return out

    gc.collect()
    base = trio.run(bare)
    samples = b.run_once(legato)
    log(f"start_overhead: p50 {p50(samples):.4f} ms (bare trio {p50(base):.4f} ms)")
    return figure(
        f"one-step noop workflow, definition already loaded: perf_counter from calling engine.start() "
        f"until the observer passed to engine.run() sees the step's RUNNING event (delivered after the "
        f"commit that holds it); p50 of {n} starts in one engine/store after {warmup} warm-ups",
        p50(samples), "ms", 2, samples=samples,
        baseline={"what": f"spawn one trio task and wait for it to set a trio.Event (p50 of {n})",
                  "value": p50(base), "unit": "ms"},
        p90=rnd(statistics.quantiles(samples, n=10)[-1]),
    )


# -- 4. bash steps ---------------------------------------------------------------------------

def bench_bash_steps(b: Bench) -> dict:
    n, conc, reps = (200 if b.quick else 1000), 8, (1 if b.quick else 5)
    bash = shutil.which("bash")
    doc = {"properties": {"step_concurrency": conc}, "workflow": {"id": "bash", "steps": [
        {"step": {"id": f"b{i}", "type": "bash", "params": {"script": "true"}}} for i in range(n)]}}
    cpu: dict[str, list[tuple[float, float]]] = {"legato": [], "bare": []}

    def cpu_since(t: os.times_result) -> tuple[float, float]:
        """CPU ms per step of this process (all its threads) and of its reaped children."""
        u = os.times()
        return ((u.user - t.user + u.system - t.system) / n * 1e3,
                (u.children_user - t.children_user + u.children_system - t.children_system) / n * 1e3)

    async def legato(engine: Engine) -> float:
        d = engine.load(doc)
        t, t0 = os.times(), perf()
        inst = await engine.execute(d)
        dt = perf() - t0
        cpu["legato"].append(cpu_since(t))
        check_succeeded(inst)
        return dt

    async def bare() -> float:
        limiter = trio.CapacityLimiter(conc)

        async def one() -> None:
            async with limiter:
                await trio.run_process([bash, "-c", "true"], stdin=subprocess.DEVNULL)

        t, t0 = os.times(), perf()
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(one)
        dt = perf() - t0
        cpu["bare"].append(cpu_since(t))
        return dt

    async def warm(engine: Engine) -> None:  # one-off costs: step-type instance, lazy imports, workspace
        small = {**doc, "workflow": {"id": "bash-warmup", "steps": doc["workflow"]["steps"][:conc]}}
        check_succeeded(await engine.execute(engine.load(small)))

    b.run_once(warm)
    samples, base = [], []
    for i in range(reps):  # interleaved, so drift on the machine hits both alike
        gc.collect()
        base.append(trio.run(bare))
        samples.append(b.run_once(legato))
        log(f"bash_steps {i + 1}/{reps}: {samples[-1]:.3f} s (bare {base[-1]:.3f} s)")
    value, bvalue = p50(samples), p50(base)
    entry = figure(
        f"{n} independent bash steps, script 'true', properties.step_concurrency {conc} (so at most "
        f"{conc} processes at once, like the baseline); wall time of engine.execute; p50 of {reps} after a discarded {conc}-step warm-up",
        value, "s", 0.0, samples=samples,
        baseline={"what": f"{n} `bash -c true` spawned bare with trio.run_process, {conc} at once "
                          f"(trio.CapacityLimiter); p50 of {reps}", "value": bvalue, "unit": "s",
                  "samples": [rnd(x) for x in base]},
        per_step_ms={"legato": rnd(value / n * 1e3), "bare": rnd(bvalue / n * 1e3)},
    )
    # Runs are interleaved in pairs; the median of the per-pair ratios resists drift on the machine.
    pairs = [x / y for x, y in zip(samples, base)]
    entry["ratio"] = rnd(p50(pairs))
    entry["ratio_is"] = "p50 of the per-run ratios (each legato run paired with the bare run just before it)"
    entry["ratio_samples"] = [rnd(r) for r in pairs]
    # Where the time goes: this process's CPU (engine, store, plugin, the threads that spawn) and
    # the bash processes' own, per step.
    entry["cpu_ms_per_step"] = {
        side: {"process": rnd(p50([c[0] for c in runs])), "children": rnd(p50([c[1] for c in runs]))}
        for side, runs in cpu.items()}
    cpu_pairs = [sum(x) / sum(y) for x, y in zip(cpu["legato"], cpu["bare"])]
    entry["cpu_ratio"] = rnd(p50(cpu_pairs))
    entry["cpu_ratio_is"] = "p50 of the per-run ratios of CPU time, this process's plus its children's"
    # The target is on the ratio, not on the wall time.
    entry["target"] = None
    entry["target_is"] = "max ratio"
    entry["ratio_target"] = 1.2
    entry["meets_target"] = bool(p50(pairs) <= 1.2)
    return entry


# -- 5. import -------------------------------------------------------------------------------

def legato_script() -> str:
    exe = Path(sys.executable).parent / "legato"
    if exe.exists():
        return str(exe)
    found = shutil.which("legato")
    if found is None:
        raise RuntimeError("no `legato` console script next to sys.executable or on PATH")
    return found


def timed_run(cmd: list[str], **kwargs) -> float:
    t0 = perf()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, **kwargs)
    return perf() - t0


def bench_import(b: Bench) -> dict:
    reps = 3 if b.quick else 10
    cmd = [legato_script(), "--help"]
    base_cmd = [sys.executable, "-c", "pass"]
    timed_run(cmd), timed_run(base_cmd)  # discarded: warm the page cache and write any .pyc
    samples, base = [], []
    for _ in range(reps):
        base.append(timed_run(base_cmd) * 1e3)
        samples.append(timed_run(cmd) * 1e3)
    log(f"import: legato --help p50 {p50(samples):.1f} ms (python -c pass {p50(base):.1f} ms)")
    return figure(
        f"`legato --help` as a fresh process (the console script), wall time; p50 of {reps} "
        f"after one discarded warm-up (page cache warm, .pyc present)",
        p50(samples), "ms", 300, samples=samples,
        baseline={"what": f"`python -c pass` with the same interpreter (p50 of {reps})",
                  "value": p50(base), "unit": "ms", "samples": [rnd(x) for x in base]},
    )


# -- 6. memory -------------------------------------------------------------------------------

# Runs argv as a child and prints the child's peak RSS: getrusage(RUSAGE_CHILDREN) in a fresh
# wrapper sees only that child (and its own children, e.g. the bash steps), nothing of ours.
_RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
    "if r.returncode: sys.stderr.buffer.write(r.stderr); sys.exit(r.returncode)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def child_peak_rss_mb(argv: list[str], cwd: Path) -> float:
    out = subprocess.run([sys.executable, "-c", _RSS_WRAPPER, *argv], cwd=cwd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{argv} failed ({out.returncode}): {out.stderr[-2000:]}")
    return maxrss_mb(int(out.stdout.strip()))


def bench_memory(b: Bench) -> dict:
    reps = 1 if b.quick else 3
    samples, base = [], []
    for _ in range(reps):
        argv = [legato_script(), "run", "examples/etl.json", "--store", b.store_url(),
                "--workspace", str(b.fresh_dir("ws"))]
        samples.append(child_peak_rss_mb(argv, REPO))
        base.append(child_peak_rss_mb([sys.executable, "-c", "import trio"], REPO))
    log(f"memory: legato run etl peak {max(samples):.1f} MB (python -c 'import trio' {max(base):.1f} MB)")
    return figure(
        f"peak RSS of `legato run examples/etl.json` (5 bash steps, plain output) as a fresh process, "
        f"measured with getrusage(RUSAGE_CHILDREN) in a wrapper; max of {reps}",
        max(samples), "MB", 64, samples=samples,
        baseline={"what": "peak RSS of `python -c 'import trio'`, measured the same way",
                  "value": max(base), "unit": "MB", "samples": [rnd(x) for x in base]},
    )


# -- 7. validating 100,000 steps -------------------------------------------------------------

_LOAD_CHILD = r"""
import json, resource, sys, time
path, what, store, ws = sys.argv[1:5]

def peak_kib():
    # VmHWM belongs to this process's own address space. ru_maxrss (RUSAGE_SELF) would also count
    # the parent's RSS, inherited at fork/exec, which is large here (it built the document).
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss // 1024 if sys.platform == "darwin" else rss

before = peak_kib()
if what == "json":
    t0 = time.perf_counter()
    with open(path, encoding="utf-8") as f:
        doc = json.loads(f.read())
    dt = time.perf_counter() - t0
    steps = len(doc["workflow"]["steps"])
else:
    from legato.engine import Engine
    from legato.storage import open_storage
    engine = Engine(open_storage(store), workspace=ws)
    before = peak_kib()
    t0 = time.perf_counter()
    d = engine.load(path)
    dt = time.perf_counter() - t0
    steps = len(d.steps)
print(json.dumps({"seconds": dt, "steps": steps, "peak_kib": peak_kib(), "peak_kib_before": before}))
"""


def bench_validate_100k(b: Bench) -> dict:
    n, reps = 100_000, (1 if b.quick else 3)
    path = b.fresh_dir("doc") / "wide.json"
    path.write_text(json.dumps(fan_doc(n - 2, "wide")), encoding="utf-8")
    size_mb = path.stat().st_size / 1e6

    def child(what: str) -> dict:
        out = subprocess.run([sys.executable, "-c", _LOAD_CHILD, str(path), what, b.store_url(),
                              str(b.fresh_dir("ws"))], capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"validate child ({what}) failed: {out.stderr[-3000:]}")
        res = json.loads(out.stdout)
        if res["steps"] != n:
            raise RuntimeError(f"expected {n} steps, got {res['steps']}")
        return res

    loads, jsons = [], []
    for i in range(reps):
        jsons.append(child("json"))
        loads.append(child("legato"))
        log(f"validate_100k {i + 1}/{reps}: engine.load {loads[-1]['seconds']:.3f} s, "
            f"peak {loads[-1]['peak_kib'] / 1024:.0f} MB (json.loads {jsons[-1]['seconds']:.3f} s)")
    samples = [r["seconds"] for r in loads]
    rss = [r["peak_kib"] / 1024 for r in loads]
    base_rss = [r["peak_kib"] / 1024 for r in jsons]
    value = p50(samples)
    entry = figure(
        f"engine.load (read + parse + validate) of a {n}-step wide DAG, 1 -> {n - 2} noop -> 1, from a "
        f"{size_mb:.1f} MB JSON file, in a fresh process (imports and Engine() excluded); p50 of {reps}",
        value, "s", 2, samples=samples,
        baseline={"what": "reading the same file and json.loads of its text, in a fresh process",
                  "value": p50([r["seconds"] for r in jsons]), "unit": "s"},
    )
    peak = max(rss)
    entry["peak_rss"] = {
        "what": "peak RSS (VmHWM) of the process that loaded the definition, imports included",
        "value": rnd(peak), "unit": "MB", "target": 1024, "meets_target": peak <= 1024,
        "peak_before_load": rnd(max(r["peak_kib_before"] / 1024 for r in loads)),
        "baseline": {"what": "peak RSS of the json.loads process", "value": rnd(max(base_rss)), "unit": "MB"},
        "ratio": rnd(peak / max(base_rss)), "samples": [rnd(x) for x in rss],
    }
    entry["meets_target"] = bool(entry["meets_target"] and peak <= 1024)
    return entry


# -- 8. durable floor ------------------------------------------------------------------------

class CommitRecorder:
    """Wraps a store's ``commit`` to note what each commit held (rows per table), so the same rows
    can be committed again by bare sqlite3 (:func:`sqlite_floor`)."""

    def __init__(self, storage) -> None:
        self._held: list[tuple[int, list, int, bool]] = []
        inner = storage.commit

        async def commit(batch):
            self._held.append((len(batch.attempts), batch.events, len(batch.logs), batch.instance is not None))
            return await inner(batch)

        storage.commit = commit

    @property
    def batches(self) -> list[tuple[int, int, int, bool]]:
        """(attempt rows, event rows, log rows, instance row) of each commit, event rows as the SQL
        store writes them (a step's transitions in one commit share a row): counted after the run,
        so the measured run pays nothing for it."""
        from legato.plugins.sqlstore.store import event_rows

        return [(a, len(event_rows(events)), logs, inst) for a, events, logs, inst in self._held]


def sqlite_floor(db: Path, batches: list[tuple[int, int, int, bool]], work: Path) -> float:
    """Seconds for bare sqlite3 to commit the rows a Legato run wrote to ``db``, grouped into the
    same transactions, into a fresh file with the same schema, in the same durable mode (WAL,
    synchronous=NORMAL). Only the writes: no scheduling, no encoding, no thread hop."""
    import sqlite3

    src = sqlite3.connect(db)
    schema = [r[0] for r in src.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name LIKE "
                                        "'legato_%' AND type IN ('table', 'index')")]
    attempts = src.execute("SELECT * FROM legato_attempts").fetchall()
    events = src.execute("SELECT instance_id, step_id, attempt, status, message, ts FROM legato_events").fetchall()
    instance = src.execute("SELECT * FROM legato_instances").fetchone()
    src.close()
    path = work / "floor.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    for sql in schema:
        conn.execute(sql)
    conn.execute(f"INSERT INTO legato_instances VALUES ({', '.join('?' * len(instance))})", instance)
    up = (f"INSERT INTO legato_attempts VALUES ({', '.join('?' * 12)}) ON CONFLICT (instance_id, step_id, attempt) "
          "DO UPDATE SET status = excluded.status, message = excluded.message, ended_at = excluded.ended_at")
    ev = "INSERT INTO legato_events (instance_id, step_id, attempt, status, message, ts) VALUES (?, ?, ?, ?, ?, ?)"
    ai = ei = 0
    t0 = perf()
    for n_att, n_ev, _logs, inst in batches:
        conn.execute("BEGIN IMMEDIATE")
        if n_att:
            conn.executemany(up, [attempts[(ai + k) % len(attempts)] for k in range(n_att)])
            ai += n_att
        if n_ev:
            conn.executemany(ev, [events[(ei + k) % len(events)] for k in range(n_ev)])
            ei += n_ev
        if inst:
            conn.execute("UPDATE legato_instances SET status = ?, ended_at = ? WHERE instance_id = ?",
                         (instance[3], time.time(), instance[0]))
        conn.execute("COMMIT")
    dt = perf() - t0
    conn.close()
    return dt


def add_floor(entry: dict, floors: list[float], n: int, unit: str, per_step: bool, batches) -> None:
    """Put the bare-sqlite3 floor beside a durable figure (``per_step``: ms per step, else steps/s)."""
    if not floors:
        return
    value = p50(floors) / n * 1e3 if per_step else n / p50(floors)
    rows = sum(b[0] + b[1] for b in batches)
    entry["durable_floor"] = {
        "what": f"bare sqlite3 committing the same {rows} rows in the same {len(batches)} transactions "
                "(WAL, synchronous=NORMAL, same schema), measured in this run",
        "value": rnd(value), "unit": unit,
        "ratio": rnd(entry["value"] / value if per_step else value / entry["value"]),
        "commits": len(batches), "rows": rows,
    }


# -- 9. cold start ---------------------------------------------------------------------------

# A fresh process that runs one workflow and reports, from the moment the engine is ready (imports,
# store opened, Engine built), when its first step was RUNNING and when it ended; then the same
# workflow again (warm), and the process's peak RSS.
_RUN_CHILD = r"""
import json, sys, time
t_exec = time.perf_counter()
path, store, ws, repeat = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import trio
from legato.engine import Engine
from legato.storage import open_storage

def status_kib(field="VmHWM:"):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])

def peak_kib():
    return status_kib()

async def main():
    out = {}
    async with open_storage(store) as storage:
        engine = Engine(storage, workspace=ws)
        d = engine.load(path)
        n = len(d.steps)
        for i in range(repeat):
            mark, rss, ended = [], [], [0]
            def observer(event):
                if event.step_id is None:
                    return
                if event.status == "RUNNING" and not mark:
                    mark.append(time.perf_counter())
                elif event.status == "SUCCEEDED":  # RSS (VmRSS) as each tenth of the steps has ended
                    ended[0] += 1
                    if ended[0] * 10 // n > len(rss) and i == 0:
                        rss.append(status_kib("VmRSS:"))
            t0 = time.perf_counter()
            inst, _ = await engine.start(d)
            inst = await engine.run(d, inst, observer=observer)
            t1 = time.perf_counter()
            assert inst.status.value == "SUCCEEDED", inst.message
            out.setdefault("first_running_ms", []).append((mark[0] - t0) * 1e3)
            out.setdefault("seconds", []).append(t1 - t0)
            if i == 0:
                out["ready_after_ms"] = (t0 - t_exec) * 1e3
                out["rss_kib"] = rss
    out["peak_kib"] = peak_kib()
    out["steps"] = len(d.steps)
    return out

print(json.dumps(trio.run(main)))
"""


def run_child(b: Bench, doc_path: Path, repeat: int = 1) -> dict:
    out = subprocess.run([sys.executable, "-c", _RUN_CHILD, str(doc_path), b.sqlite_url(), str(b.fresh_dir("ws")),
                          str(repeat)], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"run child failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout)


def write_doc(b: Bench, doc: dict, name: str) -> Path:
    path = b.fresh_dir("doc") / f"{name}.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def legato_run_ms(b: Bench, doc_path: Path, store: str) -> float:
    """`legato run FILE` as a user types it, timed from outside (ms)."""
    return timed_run([legato_script(), "run", str(doc_path), "--store", store,
                      "--workspace", str(b.fresh_dir("ws"))]) * 1e3


def bench_cold_start(b: Bench) -> dict:
    reps = 2 if b.quick else 7
    doc_path = write_doc(b, {"workflow": {"id": "one", "steps": [{"step": {"id": "only", "type": "noop"}}]}}, "one")
    store = b.sqlite_url()
    new_store = legato_run_ms(b, doc_path, store)  # the first run ever: the store is created
    base_cmd = [sys.executable, "-c", "pass"]
    runs, base, inproc = [], [], []
    for _ in range(reps):
        base.append(timed_run(base_cmd) * 1e3)
        runs.append(legato_run_ms(b, doc_path, store))
        inproc.append(run_child(b, doc_path, repeat=2))
    ready_to_done = [r["seconds"][0] * 1e3 for r in inproc]
    ready_to_running = [r["first_running_ms"][0] for r in inproc]
    log(f"cold_start: legato run p50 {p50(runs):.0f} ms (python -c pass {p50(base):.0f} ms), first workflow "
        f"{p50(ready_to_done):.1f} ms after the engine is ready")
    entry = figure(
        f"one-step noop workflow in a fresh process: the first workflow's start -> done, timed from the moment "
        f"the engine is ready (imports done, SQLite store opened, Engine built, definition loaded); p50 of {reps} "
        f"fresh processes",
        p50(ready_to_done), "ms", 50, samples=ready_to_done,
        baseline={"what": "the same workflow run again in the same process (warm), p50",
                  "value": p50([r["seconds"][1] * 1e3 for r in inproc]), "unit": "ms"},
        first_step_running_ms=rnd(p50(ready_to_running)),
        engine_ready_after_ms={"value": rnd(p50([r["ready_after_ms"] for r in inproc])),
                               "what": "from the child's first line to the engine ready (imports, open, load)"},
    )
    entry["legato_run"] = {
        "what": f"`legato run one.json --store sqlite:///…` as typed, wall time from outside, existing store; "
                f"p50 of {reps}",
        "value": rnd(p50(runs)), "unit": "ms", "samples": [rnd(x) for x in runs],
        "new_store_ms": rnd(new_store),
        "baseline": {"what": "`python -c pass`", "value": rnd(p50(base)), "unit": "ms"},
        "ratio": rnd(p50(runs) / p50(base)),
    }
    return entry


# -- 10. scaling -----------------------------------------------------------------------------

def bench_scaling(b: Bench) -> dict:
    sizes = [100, 1000] if b.quick else [100, 1000, 10_000]
    if b.args.full:
        sizes.append(100_000)
    out: dict[str, Any] = {}
    for kind in ("chain", "fan"):
        rows = []
        for n in sizes:
            doc = chain_doc(n) if kind == "chain" else fan_doc(n - 2)
            res = run_child(b, write_doc(b, doc, f"{kind}{n}"))
            secs = res["seconds"][0]
            rss = res["rss_kib"]
            # Growth of RSS while the run goes on: from when a tenth of the steps has ended to the
            # end, per 10,000 steps (flat: ~0; the definition's load is paid before and not counted).
            growth = (rss[-1] - rss[0]) / 1024 / (0.9 * n) * 10_000 if len(rss) >= 2 else 0.0
            rows.append({"steps": n, "per_step_ms": rnd(secs / n * 1e3), "steps_per_s": rnd(n / secs),
                         "seconds": rnd(secs), "peak_rss_mb": rnd(res["peak_kib"] / 1024),
                         "rss_mb_from_10_to_100_pct": [rnd(rss[0] / 1024), rnd(rss[-1] / 1024)] if rss else None,
                         "rss_growth_mb_per_10k_steps": rnd(growth, 3)})
            log(f"scaling {kind} {n}: {secs / n * 1e3:.4f} ms/step, peak {res['peak_kib'] / 1024:.0f} MB, "
                f"RSS growth {growth:.2f} MB per 10k steps")
        out[kind] = rows
    big = out["chain"][-1]
    return {
        "workload": "chain (1 -> 2 -> … -> n) and fan-out (1 -> n-2 -> 1) of noop steps at each size, each in a "
                    "fresh process on SQLite (engine.execute wall time; peak RSS = VmHWM, imports included)",
        "value": big["per_step_ms"], "unit": "ms/step", "target": 0.5, "target_is": "max",
        # Past the process's one-off costs (the smallest size pays them): per step within target.
        "meets_target": all(r["per_step_ms"] <= 0.5 for r in out["chain"] if r["steps"] >= 1000)
        and big["peak_rss_mb"] <= 1024,
        "baseline": {"what": f"the chain at {out['chain'][0]['steps']} steps (per step)",
                     "value": out["chain"][0]["per_step_ms"], "unit": "ms/step"},
        "ratio": rnd(big["per_step_ms"] / out["chain"][0]["per_step_ms"]),
        "sizes": sizes, **out,
        "knob": "--full adds 100,000 steps",
    }


def foreach_doc(n: int, concurrency: int, wid: str = "foreach") -> dict:
    """A foreach over ``n`` integers, ``concurrency`` at once, each iteration one noop step."""
    return {"workflow": {"id": wid, "steps": [{"foreach": {
        "id": "loop", "concurrency": concurrency,
        "params": {"loop_params": {"type": "MAP", "value": {
            "i": {"type": "LONG_ARRAY", "expression": f"intsBetween(0, {n}, 1)"}}}},
        "steps": [{"step": {"id": "body", "type": "noop"}}]}}]}}


def bench_foreach(b: Bench) -> dict:
    n = 10_000 if b.quick else 100_000
    concurrency = 100
    res = run_child(b, write_doc(b, foreach_doc(n, concurrency), f"foreach{n}"))
    secs = res["seconds"][0]
    # The baseline: the same number of noop steps as a fan-out, in a fresh process on SQLite.
    base = run_child(b, write_doc(b, fan_doc(n - 2), f"fan{n}"))
    base_secs = base["seconds"][0]
    per = secs / n * 1e3
    rss = res["peak_kib"] / 1024
    log(f"foreach {n}: {per:.4f} ms/iteration, peak {rss:.0f} MB (fan-out of {n} steps: "
        f"{base_secs / n * 1e3:.4f} ms/step, peak {base['peak_kib'] / 1024:.0f} MB)")
    entry = figure(
        f"foreach over {n:,} integers (intsBetween), concurrency {concurrency}, each iteration one noop step, "
        "in a fresh process on SQLite; wall time of engine.execute / iterations (peak RSS = VmHWM)",
        per, "ms/iteration", 0.2, samples=[per],
        baseline={"what": f"a 1 -> {n - 2:,} -> 1 fan-out of noop steps in a fresh process on SQLite (per step)",
                  "value": rnd(base_secs / n * 1e3), "unit": "ms/step", "peak_rss_mb": rnd(base["peak_kib"] / 1024)},
    )
    entry["peak_rss_mb"] = rnd(rss)
    entry["meets_target"] = entry["meets_target"] and rss <= 1024
    entry["knob"] = "--quick runs 10,000 iterations"
    return entry


# -- 11. beside the fastest peer -------------------------------------------------------------

# Luigi's local scheduler, in memory: tasks that complete when they have run (no targets on disk).
_LUIGI_CHILD = r"""
import json, sys, time
t_exec = time.perf_counter()
kind, n = sys.argv[1], int(sys.argv[2])
import logging
import luigi
logging.getLogger("luigi").setLevel(logging.ERROR)
logging.getLogger("luigi-interface").setLevel(logging.ERROR)
done = set()

class Noop(luigi.Task):
    tag = luigi.Parameter()
    i = luigi.IntParameter()
    role = luigi.Parameter(default="")

    def requires(self):
        if kind == "chain":
            return [Noop(tag=self.tag, i=self.i - 1)] if self.i > 0 else []
        if self.role == "end":
            return [Noop(tag=self.tag, i=k, role="mid") for k in range(n - 2)]
        if self.role == "mid":
            return [Noop(tag=self.tag, i=0, role="start")]
        return []

    def complete(self):
        return self.task_id in done

    def run(self):
        done.add(self.task_id)

def one(tag):
    root = Noop(tag=tag, i=n - 1) if kind == "chain" else Noop(tag=tag, i=0, role="end")
    t0 = time.perf_counter()
    ok = luigi.build([root], local_scheduler=True, workers=1, log_level="ERROR", no_lock=True,
                     detailed_summary=False)
    assert ok, "luigi build failed"
    return time.perf_counter() - t0

first = one("a")
warm = one("b")
assert len(done) == 2 * n, len(done)
print(json.dumps({"first": first, "warm": warm}))
"""


def bench_peer(b: Bench) -> dict:
    import importlib.util

    if importlib.util.find_spec("luigi") is None:
        return {"skipped": "luigi is not installed (pip install -e '.[bench]')", "meets_target": True,
                "value": None, "unit": "", "baseline": {"value": None, "unit": "", "what": ""}}
    reps = 1 if b.quick else 5
    out: dict[str, Any] = {}
    meets = True
    for kind, n in (("chain", 100), ("fan", 500)):
        doc = chain_doc(n) if kind == "chain" else fan_doc(n - 2)
        doc_path = write_doc(b, doc, f"{kind}{n}")
        store = b.sqlite_url()
        legato_run_ms(b, doc_path, store)  # discarded: creates the store
        cold, warm, lcold, lwarm = [], [], [], []
        for _ in range(reps):  # interleaved
            t0 = perf()
            proc = subprocess.run([sys.executable, "-c", _LUIGI_CHILD, kind, str(n)], capture_output=True, text=True)
            wall = perf() - t0
            if proc.returncode:
                raise RuntimeError(f"luigi child failed: {proc.stderr[-3000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            lcold.append(wall * 1e3 / n)
            lwarm.append(res["warm"] * 1e3 / n)
            cold.append(legato_run_ms(b, doc_path, store) / n)
            warm.append(run_child(b, doc_path, repeat=2)["seconds"][1] * 1e3 / n)
        row = {
            "steps": n,
            "cold": {"what": "fresh process, wall time from outside / tasks: `legato run FILE` (SQLite, durable) vs "
                             "`python` running luigi.build(local_scheduler=True) (in memory)",
                     "legato_ms_per_task": rnd(p50(cold)), "luigi_ms_per_task": rnd(p50(lcold)),
                     "ratio": rnd(p50(cold) / p50(lcold))},
            "warm": {"what": "the second workflow of a process (engine.execute vs luigi.build) / tasks",
                     "legato_ms_per_task": rnd(p50(warm)), "luigi_ms_per_task": rnd(p50(lwarm)),
                     "ratio": rnd(p50(warm) / p50(lwarm))},
        }
        meets = meets and p50(cold) < p50(lcold) and p50(warm) < p50(lwarm)
        log(f"peer {kind}-{n}: cold legato {p50(cold):.2f} vs luigi {p50(lcold):.2f} ms/task; "
            f"warm {p50(warm):.3f} vs {p50(lwarm):.3f}")
        out[f"{kind}_{n}"] = row
    first = out["chain_100"]["cold"]
    return {
        "workload": f"chain-100 and fan-out-500 (1 -> 498 -> 1) of no-op tasks, Legato durable on SQLite vs Luigi's "
                    f"in-memory local scheduler (workers=1), interleaved; p50 of {reps}",
        "value": first["legato_ms_per_task"], "unit": "ms/task", "target": None, "target_is": "faster than luigi",
        "meets_target": bool(meets),
        "baseline": {"what": "Luigi, chain-100 cold", "value": first["luigi_ms_per_task"], "unit": "ms/task"},
        "ratio": first["ratio"], **out,
    }


# -- main ------------------------------------------------------------------------------------

def _engine_bench(script: str, runs: int, target: float | None, **fields: Any):
    """Run one of the engine-backed benchmark scripts (Docker, papermill) as a child process and
    return its figure; when the engine is not there, say so instead of a number."""
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name(script)), "--runs", str(runs)],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not proc.stdout.strip():
        reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"skipped": reason, "meets_target": True, "baseline": {"value": None, "unit": "", "what": ""},
                "value": None, "unit": ""}
    entry = json.loads(proc.stdout.strip().splitlines()[-1])
    entry.setdefault("target", target)
    entry.update(fields)
    if "meets_target" not in entry:
        entry["meets_target"] = target is None or entry["ratio"] <= target
    return entry


def bench_docker_step(b: "Bench") -> dict:
    return _engine_bench("docker_bench.py", 3 if b.quick else 10, None)


def bench_notebook_step(b: "Bench") -> dict:
    return _engine_bench("notebook_bench.py", 2 if b.quick else 5, None, target_note="report the ratio (no target)")


# -- trigger lag ---------------------------------------------------------------------------------

def bench_trigger_lag(b: "Bench") -> dict:
    """Scheduled time -> the trigger's instance created (durable), for an INTERVAL trigger every
    0.2 s hosted by a TriggerHost on SQLite (the wall clock; wall seconds = samples / 5)."""
    from legato.trigger_host import TriggerHost

    n, interval = (15 if b.quick else 50), 0.2
    doc = {"workflow": {"id": "ticking", "time_triggers": [{"type": "INTERVAL", "interval": interval}],
                        "steps": [{"step": {"id": "only", "type": "noop"}}]}}
    url = b.sqlite_url()

    async def legato() -> list[float]:
        lags: list[float] = []
        done = trio.Event()

        class TimedHost(TriggerHost):
            async def _start(self, ctx, request_id, params, run_ts, initiator):
                out = await super()._start(ctx, request_id, params, run_ts, initiator)
                lags.append((time.time() - run_ts) * 1e3)
                if len(lags) >= n + 2:
                    done.set()
                return out

        async with open_storage(url) as storage:
            engine = Engine(storage, workspace=b.fresh_dir("ws"))
            await storage.push_definition("ticking", doc)
            async with trio.open_nursery() as nursery:
                await nursery.start(TimedHost(engine, poll=0.1).run)
                await done.wait()
                nursery.cancel_scope.cancel()
        return lags[2:]  # the first two pay for first-use imports

    async def bare() -> list[float]:
        out = []
        for _ in range(n):
            due = time.time() + interval
            await trio.sleep_until(trio.current_time() + (due - time.time()))
            out.append((time.time() - due) * 1e3)
        return out

    gc.collect()
    base = trio.run(bare)
    samples = trio.run(legato)
    log(f"trigger_lag: p50 {p50(samples):.3f} ms (trio.sleep_until lateness {p50(base):.3f} ms)")
    return figure(
        f"an INTERVAL trigger every {interval:g} s hosted by a TriggerHost on SQLite: wall time from each tick's "
        f"scheduled time to its instance created (the store's idempotent start returned); p50 of {n} ticks "
        "after 2 warm-ups",
        p50(samples), "ms", 20, samples=samples, store=url,
        baseline={"what": f"lateness of trio.sleep_until waking at a wall-clock instant (p50 of {n})",
                  "value": max(p50(base), 1e-3), "unit": "ms"},
        p90=rnd(statistics.quantiles(samples, n=10)[-1]),
    )


# Figures that measure the engine on a store run once per --store; the others once.
STORE_FIGURES = {"step_overhead", "throughput", "start_overhead", "bash_steps"}
DEFAULT_STORES = ["sqlite:///{tmp}/bench.db", "memory://"]

FIGURES: dict[str, Callable[[Bench], dict]] = {
    "step_overhead": bench_step_overhead,
    "throughput": bench_throughput,
    "start_overhead": bench_start_overhead,
    "bash_steps": bench_bash_steps,
    "import": bench_import,
    "memory": bench_memory,
    "validate_100k": bench_validate_100k,
    "cold_start": bench_cold_start,
    "scaling": bench_scaling,
    "foreach": bench_foreach,
    "peer": bench_peer,
    "docker_step": bench_docker_step,
    "notebook_step": bench_notebook_step,
    "trigger_lag": bench_trigger_lag,
}


def dumps(obj: Any) -> str:
    """Indented JSON with each list of numbers on one line (the samples stay readable)."""
    text = json.dumps(obj, indent=2)
    return re.sub(r"\[\s*(-?[\d.e+-]+(?:,\s*-?[\d.e+-]+)*)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    return {
        "nproc": nproc, "cpu": cpu, "python": platform.python_version(),
        "implementation": platform.python_implementation(), "platform": platform.platform(),
        "trio": trio.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (CI smoke, < 60 s)")
    parser.add_argument("--full", action="store_true", help="also the 100,000-step sizes of `scaling` (minutes)")
    parser.add_argument("--store", action="append", default=None,
                        help="storage URL (repeatable), opened afresh per measurement; {tmp} becomes a new "
                             f"directory [default: {' and '.join(DEFAULT_STORES)}]")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(FIGURES)}")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(FIGURES)
    service = not args.only or "service" in names  # `legato serve` through its API: benchmarks/api_bench.py
    names = [n for n in names if n != "service"]
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; known: {', '.join(FIGURES)}")

    stores = args.store or DEFAULT_STORES
    for url in stores:
        try:
            open_storage(url.replace("{tmp}", tempfile.gettempdir()))  # fail fast on an unknown scheme
        except StorageError as exc:
            parser.error(str(exc))

    started = perf()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="legato-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        for name in names:
            for i, url in enumerate(stores if name in STORE_FIGURES else [None]):
                key = name if i == 0 or url is None else f"{name}@{url.split(':')[0]}"
                bench.store = url or "memory://"
                log(f"{key} ...")
                t0 = perf()
                figures[key] = FIGURES[name](bench)
                if url is not None:
                    figures[key]["store"] = url
                figures[key]["bench_seconds"] = round(perf() - t0, 2)
    result = {
        "machine": machine(),
        "stores": stores,
        "quick": args.quick,
        "seconds": round(perf() - started, 1),
        "all_meet_targets": all(f["meets_target"] for f in figures.values()),
        "figures": figures,
    }
    if service:
        from api_bench import run as service_bench

        result["service"] = service_bench(quick=args.quick)
    sys.stdout.write(dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
