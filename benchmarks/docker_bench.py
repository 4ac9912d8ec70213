"""The ``docker`` step type's overhead over the Docker SDK run bare.

    python benchmarks/docker_bench.py [--runs 10]

Prints one JSON object: the wall time of a one-step workflow running ``true`` in the test image
(``legato-test/busybox:1``, made by ``bash scripts/engines start``) through ``engine.execute``
(memory store; p50 of ``--runs``) beside ``client.containers.run`` of the same image and command
with ``remove=True`` (p50 of ``--runs``), their ratio, and whether the target (at most 1.05 times
the bare run plus 5 ms) is met. Both sides keep one client (and one engine) for all their runs, as
a worker would; one discarded warm-up run of each precedes the samples, and the two are
interleaved so drift hits both alike. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

IMAGE = "legato-test/busybox:1"
COMMAND = ["true"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()

    import docker

    try:
        client = docker.from_env()
        client.images.get(IMAGE)
    except Exception as exc:  # noqa: BLE001
        raise SystemExit(f"no Docker engine with {IMAGE} here ({exc}): run `bash scripts/engines install`")

    from legato.engine import Engine
    from legato.storage import open_storage

    doc = {"workflow": {"id": "bench", "steps": [{"step": {
        "id": "s", "type": "docker", "params": {"image": IMAGE, "command": COMMAND, "pull": "never"},
        "retry_policy": {"error_retry_limit": 0, "platform_retry_limit": 0}}}]}}

    def bare() -> float:
        start = time.perf_counter()
        client.containers.run(IMAGE, COMMAND, remove=True, network_mode="none")
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory(prefix="legato-docker-bench-") as tmp:
        engine = Engine(open_storage("memory://"), workspace=Path(tmp) / "runs")
        definition = engine.load(doc)

        async def one() -> float:
            start = time.perf_counter()
            instance = await engine.execute(definition)
            took = time.perf_counter() - start
            if instance.status.value != "SUCCEEDED":
                attempts = await engine.storage.get_attempts(instance.instance_id)
                raise SystemExit(f"the docker step failed: {[a.message for a in attempts]}")
            return took

        legato, baseline = [], []
        for n in range(args.runs + 1):  # run 0 is the warm-up
            b = bare()
            s = trio.run(one)
            print(f"run {n}{' (warm-up)' if n == 0 else ''}: legato {s * 1000:.1f} ms, bare SDK {b * 1000:.1f} ms",
                  file=sys.stderr)
            if n:
                legato.append(s)
                baseline.append(b)

    value, base = statistics.median(legato), statistics.median(baseline)
    target = 1.05 * base + 0.005
    print(json.dumps({
        "workload": f"one docker step running {' '.join(COMMAND)!r} in {IMAGE} through engine.execute, memory "
                    f"store; p50 of {args.runs}",
        "value": round(value, 4), "unit": "s",
        "baseline": {"what": f"docker SDK client.containers.run(remove=True) of the same image and command; p50 of "
                             f"{args.runs}", "value": round(base, 4), "unit": "s"},
        "ratio": round(value / base, 3),
        "target": "value <= 1.05 * baseline + 5 ms", "target_value": round(target, 4),
        "meets_target": value <= target,
        "samples": [round(x, 4) for x in legato],
        "baseline_samples": [round(x, 4) for x in baseline],
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "trio": trio.__version__,
                    "docker_sdk": docker.__version__, "engine": client.version().get("Version"),
                    "storage_driver": client.info().get("Driver")},
    }))


if __name__ == "__main__":
    main()
