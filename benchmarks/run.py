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

    def engine_run(self, body: Callable[[Engine], Any]) -> Any:
        """Run ``await body(engine)`` in a fresh trio run with a fresh store, engine and workspace."""
        gc.collect()

        async def main():
            storage = open_storage(self.store_url())
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

    b.engine_run(warm_up)  # discarded: first-use costs (lazy imports, step-type instances)
    samples, base = [], []
    for i in range(reps):
        gc.collect()
        base.append(trio.run(bare) / n * 1e3)
        samples.append(b.engine_run(legato) / n * 1e3)
        log(f"step_overhead {i + 1}/{reps}: {samples[-1]:.4f} ms/step (bare trio {base[-1]:.4f})")
    return figure(
        f"chain of {n} noop steps (transition.successors to the next); wall time of engine.execute "
        f"(start -> instance end) / {n}; {reps} runs after one discarded warm-up, fresh store and engine each",
        p50(samples), "ms/step", 0.5, samples=samples,
        baseline={"what": f"{n} trio tasks spawned one after another, each awaited via a trio.Event "
                          f"round trip (p50 of {reps})", "value": p50(base), "unit": "ms/step",
                  "samples": [rnd(x) for x in base]},
    )


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

    b.engine_run(warm_up)  # discarded: first-use costs (lazy imports, step-type instances)
    samples, base = [], []
    for i in range(reps):
        gc.collect()
        base.append(total / trio.run(bare))
        samples.append(total / b.engine_run(legato))
        log(f"throughput {i + 1}/{reps}: {samples[-1]:.0f} steps/s (bare trio {base[-1]:.0f} tasks/s)")
    return figure(
        f"1 -> {width} parallel noop -> 1 ({total} steps, no step_concurrency); {total} / wall time of "
        f"engine.execute (load excluded); p50 of {reps}",
        p50(samples), "steps/s", 5000, higher_is_better=True, samples=samples,
        baseline={"what": f"{total} bare trio tasks doing nothing, spawned in one nursery (p50 of {reps})",
                  "value": p50(base), "unit": "tasks/s", "samples": [rnd(x) for x in base]},
    )


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
    samples = b.engine_run(legato)
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

    async def legato(engine: Engine) -> float:
        d = engine.load(doc)
        t0 = perf()
        inst = await engine.execute(d)
        dt = perf() - t0
        check_succeeded(inst)
        return dt

    async def bare() -> float:
        limiter = trio.CapacityLimiter(conc)

        async def one() -> None:
            async with limiter:
                await trio.run_process([bash, "-c", "true"], stdin=subprocess.DEVNULL)

        t0 = perf()
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(one)
        return perf() - t0

    async def warm(engine: Engine) -> None:  # one-off costs: step-type instance, lazy imports, workspace
        small = {**doc, "workflow": {"id": "bash-warmup", "steps": doc["workflow"]["steps"][:conc]}}
        check_succeeded(await engine.execute(engine.load(small)))

    b.engine_run(warm)
    samples, base = [], []
    for i in range(reps):  # interleaved, so drift on the machine hits both alike
        gc.collect()
        base.append(trio.run(bare))
        samples.append(b.engine_run(legato))
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
    "docker_step": bench_docker_step,
    "notebook_step": bench_notebook_step,
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
    parser.add_argument("--store", action="append", default=None,
                        help="storage URL (repeatable), opened afresh per measurement; {tmp} becomes a new "
                             f"directory [default: {' and '.join(DEFAULT_STORES)}]")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(FIGURES)}")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(FIGURES)
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
    sys.stdout.write(dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
