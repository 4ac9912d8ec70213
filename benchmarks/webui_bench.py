"""The web UI in a real headless Chromium against a real `legato serve` (issue 15), each figure beside
a baseline from the same run.

    python benchmarks/webui_bench.py [--steps 10000] [--repeat 3]

Starts `legato serve --port 0 --no-auth` on a fresh SQLite store, runs two 10,000-step instances to
their end (a fan-out ``start → 10,000 parallel noop → end`` and a 10,000-iteration ``foreach`` of one
noop), then opens each one's instance page in Chromium (Debian's chromium + chromedriver, selenium):

- ``instance_page_fan`` / ``instance_page_foreach``: from navigation start to the page drawn (its DAG
  laid out and painted, timeline read: ``window.__legatoPage.painted_ms``), cold (the first visit)
  then warm (the median of ``--repeat`` more). Target: < 2,000 ms. Baseline: the same browser
  fetching the same instance as JSON (``GET …/instances/{id}``, the API's answer with every step)
  and parsing it: what any client pays to read the instance at all.
- ``live_update``: a step's state change on an open page: from the SUCCEEDED event's timestamp
  (as the store holds it) to the page's node showing SUCCEEDED (a MutationObserver's clock; the
  same machine's clock), median of ``--repeat``. Target: < 200 ms. Baseline: the same event seen
  by a plain HTTP client of the event stream (httpx), in the same run.
- ``running_page``: the fan-out run again with its page open: the longest gap between the page's
  timer ticks (every 50 ms) while it runs: how long the page ever stopped answering.

Prints one JSON object (progress on stderr). Skips saying why without Chromium. With
$LEGATO_ARTIFACTS set, saves each 10,000-step page's screenshot under it (``webui/``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

LEGATO = str(Path(sys.executable).parent / "legato")
W = "/api/v3/workflows"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fan(n: int) -> dict:
    return {"properties": {"run_strategy": "parallel"}, "workflow": {"id": "fan", "steps": [
        {"step": {"id": "start", "type": "noop", "transition": {"successors": {f"s{i}": "true" for i in range(n)}}}},
        *[{"step": {"id": f"s{i}", "type": "noop", "transition": {"successors": {"end": "true"}}}} for i in range(n)],
        {"step": {"id": "end", "type": "noop"}}]}}


def foreach(n: int) -> dict:
    return {"properties": {"run_strategy": "parallel"}, "workflow": {"id": "loop", "steps": [
        {"foreach": {"id": "each", "concurrency": 100, "params": {"loop_params": {"type": "MAP", "value": {
            "i": {"type": "LONG_ARRAY", "value": list(range(n))}}}},
            "steps": [{"step": {"id": "job", "type": "noop"}}]}}]}}


def gated(tmp: Path) -> dict:
    return {"properties": {"run_strategy": "parallel"}, "workflow": {"id": "gated", "steps": [
        {"step": {"id": "work", "type": "bash", "params": {
            "script": f'touch {tmp}/started.$LEGATO_INSTANCE_ID; while [ ! -e {tmp}/release.$LEGATO_INSTANCE_ID ]; '
                      'do sleep 0.005; done'}}}]}}


class Serve:
    def __init__(self, tmp: Path) -> None:
        import httpx

        self.out = tmp / "serve.log"
        env = {**os.environ, "LEGATO_STORE": f"sqlite:///{tmp / 'ui.db'}"}
        self.proc = subprocess.Popen([LEGATO, "serve", "--port", "0", "--no-auth", "--workspace", str(tmp / "runs")],
                                     cwd=tmp, env=env, stdout=self.out.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while "listening on " not in self.out.read_text():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.out.read_text()
            time.sleep(0.05)
        self.url = self.out.read_text().split("listening on ")[1].split()[0]
        self.http = httpx.Client(base_url=self.url, timeout=600)

    def push_and_run(self, doc: dict) -> str:
        wid = doc["workflow"]["id"]
        r = self.http.post(W, json=doc)
        assert r.status_code in (200, 201), r.text
        return self.http.post(f"{W}/{wid}/versions/active/actions/start", json={}).json()["instance_id"]

    def wait_ended(self, wid: str, iid: str) -> dict:
        deadline = time.monotonic() + 900
        while True:
            got = self.http.get(f"{W}/{wid}/instances/{iid}", params={"view": "summary"}).json()
            if got["status"] in ("SUCCEEDED", "FAILED", "STOPPED", "TIMED_OUT"):
                return got
            assert time.monotonic() < deadline, got
            time.sleep(0.1)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.http.close()


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in FLAGS + [f"--user-data-dir={tempfile.mkdtemp(prefix='legato-bench-chromium-')}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)


def open_instance(driver, url: str, wid: str, iid: str) -> dict:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get("about:blank")
    driver.get(f"{url}/#/w/{wid}/i/{iid}")
    WebDriverWait(driver, 120, poll_frequency=0.01).until(lambda d: d.execute_script(
        "return document.querySelector('main').dataset.ready === location.hash && window.__legatoPage "
        "&& window.__legatoPage.painted_ms"))
    return driver.execute_script("return window.__legatoPage")


def fetch_json(driver, path: str) -> float:
    """Milliseconds the page takes to fetch ``path`` and parse its JSON."""
    return driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const t = performance.now();
        fetch(arguments[0], {cache: "no-store"}).then(r => r.json()).then(() => done(performance.now() - t));
    """, path)


def page_figure(driver, serve: Serve, wid: str, iid: str, steps: int, repeat: int) -> dict:
    cold = open_instance(driver, serve.url, wid, iid)
    if os.environ.get("LEGATO_ARTIFACTS"):  # what a 10,000-step page looks like, for people
        where = Path(os.environ["LEGATO_ARTIFACTS"]) / "webui"
        where.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(where / f"instance-{wid}-{steps}.png"))
    warm = [open_instance(driver, serve.url, wid, iid) for _ in range(repeat)]
    base = [fetch_json(driver, f"{W}/{wid}/instances/{iid}") for _ in range(repeat + 1)]
    value = statistics.median(p["painted_ms"] for p in warm)
    baseline = statistics.median(base)
    return {"workload": f"the instance page of {steps:,} steps ({wid}), navigation start → drawn", "unit": "ms",
            "value": round(value, 1), "cold": round(cold["painted_ms"], 1), "target": 2000, "target_is": "max",
            "meets_target": max(value, cold["painted_ms"]) < 2000,
            "drawn_nodes": cold["drawn"], "steps": cold["steps"], "layout_ms": round(cold["layout_ms"], 1),
            "samples": [round(p["painted_ms"], 1) for p in warm],
            "baseline": {"what": "the same browser fetching GET …/instances/{id} (every step) and parsing it",
                         "value": round(baseline, 1), "unit": "ms", "samples": [round(b, 1) for b in base]},
            "ratio": round(value / baseline, 2) if baseline else None}


def live_figure(driver, serve: Serve, tmp: Path, repeat: int) -> dict:
    import threading

    from selenium.webdriver.support.ui import WebDriverWait

    serve.http.post(W, json=gated(tmp))
    page, plain = [], []
    for _ in range(repeat):
        iid = serve.http.post(f"{W}/gated/versions/active/actions/start", json={}).json()["instance_id"]
        deadline = time.monotonic() + 60
        while not (tmp / f"started.{iid}").exists():
            assert time.monotonic() < deadline
            time.sleep(0.005)
        open_instance(driver, serve.url, "gated", iid)
        driver.execute_script("""
            window.__seen = null;
            const node = document.querySelector('#dag [data-step="work"]');
            new MutationObserver(() => { if (!window.__seen && node.getAttribute('aria-label').includes('SUCCEEDED'))
                window.__seen = Date.now(); }).observe(node, {attributes: true});""")
        heard: list[float] = []

        def listen() -> None:  # the baseline: a plain client of the same stream
            with serve.http.stream("GET", f"{W}/gated/instances/{iid}/events") as r:
                for line in r.iter_lines():
                    if line.startswith("data:") and '"step_id":"work"' in line and '"SUCCEEDED"' in line:
                        heard.append(time.time() * 1000)
                        return

        listener = threading.Thread(target=listen)
        listener.start()
        time.sleep(0.3)  # the benchmark, not a test: let both subscribe before the change
        (tmp / f"release.{iid}").touch()
        WebDriverWait(driver, 60, poll_frequency=0.01).until(lambda d: d.execute_script("return window.__seen"))
        listener.join(60)
        seen = driver.execute_script("return window.__seen")
        events = serve.http.get(f"{W}/gated/instances/{iid}/timeline").json()["events"]
        ts = next(datetime.fromisoformat(e["ts"]).timestamp() * 1000 for e in events
                  if e["step_id"] == "work" and e["status"] == "SUCCEEDED")
        page.append(seen - ts)
        plain.append(heard[0] - ts if heard else float("nan"))
    value, baseline = statistics.median(page), statistics.median(plain)
    return {"workload": "a step's SUCCEEDED event (its store timestamp) → the open instance page showing it",
            "unit": "ms", "value": round(value, 1), "target": 200, "target_is": "max", "meets_target": value < 200,
            "samples": [round(x, 1) for x in page],
            "baseline": {"what": "the same event read by a plain httpx client of GET …/events", "unit": "ms",
                         "value": round(baseline, 1), "samples": [round(x, 1) for x in plain]},
            "ratio": round(value / baseline, 2) if baseline else None}


def running_figure(driver, serve: Serve, steps: int) -> dict:
    from selenium.webdriver.support.ui import WebDriverWait

    iid = serve.http.post(f"{W}/fan/versions/active/actions/start", json={}).json()["instance_id"]
    t0 = time.monotonic()
    open_instance(driver, serve.url, "fan", iid)
    driver.execute_script("""
        window.__gap = 0; let last = performance.now();
        window.__probe = setInterval(() => { const now = performance.now(); window.__gap = Math.max(window.__gap, now - last - 50);
            last = now; }, 50);""")
    WebDriverWait(driver, 900, poll_frequency=0.2).until(
        lambda d: "SUCCEEDED" in d.execute_script("return document.getElementById('instance-status').innerText"))
    took = time.monotonic() - t0
    gap = driver.execute_script("clearInterval(window.__probe); return window.__gap")
    shown = driver.execute_script("return document.querySelector('#dag .node.group').getAttribute('aria-label')")
    return {"workload": f"the fan-out of {steps:,} run again with its page open: the page's longest stall while it runs",
            "unit": "ms", "value": round(gap, 1), "run_s": round(took, 2), "group_shows": shown,
            "baseline": {"what": "the page's timer period (a page that never stalls)", "value": 50, "unit": "ms"},
            "ratio": round((gap + 50) / 50, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    report: dict = {"machine": {"nproc": os.cpu_count(), "python": sys.version.split()[0]}, "figures": {}}
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        report["skipped"] = "chromium and chromedriver are not installed (bash scripts/engines install)"
        print(json.dumps(report))
        return
    with tempfile.TemporaryDirectory(prefix="legato-webui-bench-") as name:
        tmp = Path(name)
        serve = Serve(tmp)
        driver = None
        try:
            log(f"running a fan-out of {args.steps:,} and a foreach of {args.steps:,} iterations…")
            fan_iid = serve.push_and_run(fan(args.steps))
            serve.wait_ended("fan", fan_iid)
            loop_iid = serve.push_and_run(foreach(args.steps))
            serve.wait_ended("loop", loop_iid)
            driver = browser()
            report["machine"]["chromium"] = driver.capabilities.get("browserVersion")
            log("instance pages…")
            report["figures"]["instance_page_fan"] = page_figure(driver, serve, "fan", fan_iid, args.steps + 2, args.repeat)
            report["figures"]["instance_page_foreach"] = page_figure(driver, serve, "loop", loop_iid, args.steps, args.repeat)
            log("live update latency…")
            report["figures"]["live_update"] = live_figure(driver, serve, tmp, args.repeat)
            log("a running fan-out with its page open…")
            report["figures"]["running_page"] = running_figure(driver, serve, args.steps)
        finally:
            if driver is not None:
                driver.quit()
            serve.close()
    report["all_meet_targets"] = all(f.get("meets_target", True) for f in report["figures"].values())
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
