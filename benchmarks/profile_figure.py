"""Profile one benchmark workload under cProfile and print the top functions.

    python benchmarks/profile_figure.py chain|fan|start|bash|validate [--top 10] [--sort tottime|cumulative]
                                        [--store memory://|sqlite]

Only the measured part is profiled (engine.execute, or engine.load for ``validate``), on a
memory:// store (``--store sqlite``: a new SQLite store in a temporary directory, the default
store of the figures), after one unprofiled warm-up run. cProfile sees the event loop's thread
only: what the store does in its worker thread shows as the wait for it. For finding what is
slow, not for figures: cProfile roughly doubles the cost of Python-heavy code.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import tempfile
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import chain_doc, fan_doc  # noqa: E402

from legato.engine import Engine  # noqa: E402
from legato.storage import open_storage  # noqa: E402


def workload(name: str, tmp: Path):
    if name == "chain":
        return chain_doc(1000), 1
    if name == "fan":
        return fan_doc(10_000), 1
    if name == "start":
        return {"workflow": {"id": "one", "steps": [{"step": {"id": "only", "type": "noop"}}]}}, 200
    if name == "bash":
        return {"properties": {"step_concurrency": 8}, "workflow": {"id": "bash", "steps": [
            {"step": {"id": f"b{i}", "type": "bash", "params": {"script": "true"}}} for i in range(1000)]}}, 1
    if name == "validate":
        path = tmp / "wide.json"
        path.write_text(json.dumps(fan_doc(99_998, "wide")))
        return str(path), 1
    raise SystemExit(f"unknown workload {name!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=["chain", "fan", "start", "bash", "validate"])
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--sort", default="tottime", choices=["tottime", "cumulative"])
    parser.add_argument("--store", default="memory://",
                        help="a storage URL, or `sqlite` for a new SQLite store [default: memory://]")
    args = parser.parse_args()
    profiler = cProfile.Profile()

    with tempfile.TemporaryDirectory(prefix="legato-prof-") as tmp:
        doc, repeat = workload(args.workload, Path(tmp))
        url = f"sqlite:///{tmp}/profile.db" if args.store == "sqlite" else args.store

        async def main_task(profile: bool) -> None:
            async with open_storage(url) as storage:
                engine = Engine(storage, workspace=Path(tmp) / "ws")
                if args.workload == "validate":
                    if profile:
                        profiler.enable()
                    engine.load(doc)
                    profiler.disable()
                    return
                d = engine.load(doc)
                for _ in range(repeat):
                    if profile:
                        profiler.enable()
                    inst = await engine.execute(d)
                    profiler.disable()
                    assert inst.status.value == "SUCCEEDED", inst.message

        if args.workload != "validate":
            trio.run(main_task, False)
        trio.run(main_task, True)

    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats(args.sort).print_stats(args.top)
    print(out.getvalue())


if __name__ == "__main__":
    main()
