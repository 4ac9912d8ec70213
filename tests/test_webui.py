"""The web UI of `legato serve`, in a real headless Chromium (Debian's `chromium` and
`chromium-driver`, driven with selenium) against a real `legato serve --port 0` subprocess.

Without Chromium every test skips saying why (under CI, LEGATO_REQUIRE_COMPONENTS=1, they fail:
`bash scripts/engines install` provides it). Waiting is on what the page shows (WebDriverWait
reads the DOM) or on files the steps touch, bounded by HANG as a failure guard, never a sleep.

Screenshots of every page, light and dark, are saved under $LEGATO_ARTIFACTS/webui (else the
test's temporary directory, printed) for people to look at.

Maestro has no web UI in its open-source release; the actions follow its controllers as the API
does (WorkflowInstanceActionController.restart, StepInstanceActionController), see test_serve.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from .conftest import require_component
from .test_serve import HANG, W, Server, bash

selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service as ChromeService  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000"]


def chromium_problem() -> str | None:
    for path in (CHROMIUM, DRIVER):
        if not (os.path.exists(path) or shutil.which(os.path.basename(path))):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser():
    require_component("Chromium", chromium_problem())
    profile = tempfile.mkdtemp(prefix="legato-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=ChromeService(shutil.which("chromedriver") or DRIVER), options=options)
    driver.set_page_load_timeout(HANG)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("webui"))
    yield s
    s.kill()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    root = Path(os.environ["LEGATO_ARTIFACTS"]) if os.environ.get("LEGATO_ARTIFACTS") else tmp_path_factory.mktemp("art")
    where = root / "webui"
    where.mkdir(parents=True, exist_ok=True)
    print(f"web UI screenshots: {where}")
    return where


def wait(driver, what: str, condition):
    """What ``condition(driver)`` returns once truthy; fails naming ``what`` after HANG."""
    try:
        return WebDriverWait(driver, HANG, poll_frequency=0.02).until(condition)
    except Exception as exc:  # noqa: BLE001 - a timeout says what never showed
        raise AssertionError(f"the page never showed {what}; it shows:\n"
                             + driver.execute_script("return document.body.innerText")[:3000]) from exc


def open_page(driver, server, fragment: str) -> None:
    """Open ``#fragment`` and wait until the page rendered it (main[data-ready])."""
    driver.get(f"{server.url}/#{fragment}")
    wait(driver, f"page {fragment}", lambda d: d.execute_script(
        "return document.querySelector('main').dataset.ready === location.hash"))


def node_state(driver, step: str) -> str | None:
    return driver.execute_script(
        "const n = document.querySelector(`#dag [data-step=\"${arguments[0]}\"]`);"
        "return n ? n.getAttribute('aria-label') : null", step)


def offered(driver, box: str) -> set[str]:
    """The actions the page offers in ``#box`` (read at once: the page may redraw them)."""
    return set(driver.execute_script(
        "return [...document.querySelectorAll(`#${arguments[0]} button`)].map(b => b.dataset.action)", box))


def text(driver, element_id: str) -> str:
    return driver.execute_script("const e = document.getElementById(arguments[0]); return e ? e.innerText : ''",
                                 element_id)


def press(driver, css: str, key: str) -> None:
    """Focus the element ``css`` names (as Tab would) and press ``key`` on the keyboard."""
    wait(driver, f"{css} focused", lambda d: d.execute_script(
        "const e = document.querySelector(arguments[0]); if (!e) return false; e.focus();"
        "return document.activeElement === e", css))
    ActionChains(driver).send_keys(key).perform()


def errors(driver) -> list[str]:
    """The browser console's errors since the last call (a script error is a failed test)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def wait_file(path: Path) -> None:
    deadline = time.monotonic() + HANG
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def gated(wid: str, tmp: Path, line: str) -> dict:
    """``work`` prints ``line``, touches ``started``, runs until ``release`` exists; then ``after``."""
    return {"properties": {"run_strategy": "parallel"}, "workflow": {"id": wid, "steps": [
        bash("prepare", "echo ready", then="work"),
        bash("work", f'echo "{line}"; touch {tmp}/started; while [ ! -e {tmp}/release ]; do sleep 0.02; done; '
                     'echo "rows=42" >> "$LEGATO_OUTPUT"', then="after"),
        bash("after", "true")]}}


def test_a_step_goes_running_to_succeeded_on_the_open_page_with_its_live_log(server, browser, tmp_path, artifacts):
    """The instance page of a running workflow shows ``work`` RUNNING, then SUCCEEDED once it ends,
    with no reload (a marker set on the window survives); the step page shows the line the step
    printed while it still runs; only the actions valid for a running instance are offered."""
    line = f"live line {uuid.uuid4().hex[:8]}"
    server.push(gated("live", tmp_path, line))
    iid = server.start("live")["instance_id"]
    wait_file(tmp_path / "started")

    open_page(browser, server, f"/w/live/i/{iid}/s/work")
    wait(browser, "the live log line", lambda d: line in text(d, "log"))
    assert "RUNNING" in text(browser, "step-status")
    assert offered(browser, "actions-box") == {"skip", "stop", "kill"}
    browser.save_screenshot(str(artifacts / "step-running-light.png"))

    open_page(browser, server, f"/w/live/i/{iid}")
    browser.execute_script("window.__notReloaded = true")
    assert "RUNNING" in node_state(browser, "work") and "SUCCEEDED" in node_state(browser, "prepare")
    assert offered(browser, "instance-actions") == {"stop", "kill"}
    browser.save_screenshot(str(artifacts / "instance-running-light.png"))
    (tmp_path / "release").touch()
    wait(browser, "work SUCCEEDED", lambda d: "SUCCEEDED" in (node_state(d, "work") or ""))
    wait(browser, "the instance SUCCEEDED", lambda d: "SUCCEEDED" in text(d, "instance-status"))
    assert browser.execute_script("return window.__notReloaded === true"), "the page reloaded"
    timeline = text(browser, "timeline")
    assert "work" in timeline and "SUCCEEDED" in timeline
    assert errors(browser) == []


def test_restart_a_failed_instance_from_the_page(server, browser, tmp_path):
    """The page of a FAILED instance offers restarts (not stop or kill); Restart from incomplete asks
    for a confirmation, then for the token (once: it is kept in sessionStorage), and the instance
    runs again as run 2 to SUCCEEDED, shown on the same page; the action is listed with who asked."""
    flag = tmp_path / "fixed"
    server.push({"properties": {"run_strategy": "parallel"}, "workflow": {"id": "flaky", "steps": [
        bash("ok", "true", then="fragile"),
        {"step": {"id": "fragile", "type": "bash", "params": {"script": f"test -e {flag}"},
                  "retry_policy": {"error_retry_limit": 0}}}]}})
    iid = server.start("flaky")["instance_id"]
    deadline = time.monotonic() + HANG
    while server.http.get(f"{W}/flaky/instances/{iid}").json()["status"] != "FAILED":
        assert time.monotonic() < deadline
        time.sleep(0.02)

    open_page(browser, server, f"/w/flaky/i/{iid}")
    browser.execute_script("sessionStorage.clear(); window.__notReloaded = true")
    assert "FATALLY_FAILED" in node_state(browser, "fragile")
    assert offered(browser, "instance-actions") == {"restart", "restart-beginning"}
    wait(browser, "the stream's end (the instance has ended)", lambda d: d.execute_script(
        "return document.querySelector('main').dataset.live === 'ended'"))
    flag.touch()
    browser.find_element(By.CSS_SELECTOR, '#instance-actions [data-action="restart"]').click()
    wait(browser, "the confirmation", lambda d: d.find_element(By.ID, "confirm").get_attribute("open") is not None)
    assert "incomplete" in text(browser, "confirm-text")
    browser.find_element(By.ID, "confirm-ok").click()
    wait(browser, "the token dialog", lambda d: d.find_element(By.ID, "token-dialog").get_attribute("open") is not None)
    browser.find_element(By.ID, "token-input").send_keys(server.token)
    browser.find_element(By.ID, "token-ok").click()
    wait(browser, "fragile SUCCEEDED", lambda d: "SUCCEEDED" in (node_state(d, "fragile") or ""))
    wait(browser, "run 2 SUCCEEDED", lambda d: "SUCCEEDED" in text(d, "instance-status") and text(d, "run-id") == "2")
    assert browser.execute_script("return window.__notReloaded === true"), "the page reloaded"
    assert browser.execute_script("return sessionStorage.getItem('legato-api-token')") == server.token
    wait(browser, "the action with who asked", lambda d: "via api" in text(d, "actions-list"))
    got = server.http.get(f"{W}/flaky/instances/{iid}").json()
    assert (got["status"], got["run_id"]) == ("SUCCEEDED", 2)
    assert errors(browser) == []


def test_every_page_in_light_and_dark_with_keyboard_navigation(server, browser, tmp_path, artifacts):
    """Workflows (dots with shapes and names), a workflow (versions, a diff of two, instances with a
    state filter; Unblock only for a STRICT_SEQUENTIAL one), an instance (DAG: a foreach collapsed
    to one node with its iterations counted; a fan-out of parallel steps grouped, opened to list
    them; a subworkflow linked to its child instance), a loop's body, a step, and the signals stub:
    each renders without a script error, in the light and the dark theme (the toggle), and is
    saved as a screenshot. Arrow keys move between DAG nodes and Enter opens one."""
    server.push({"workflow": {"id": "tour-child", "steps": [bash("hello", 'echo "hello from the child"')]}})
    server.push({"properties": {"run_strategy": "strict_sequential"}, "workflow": {"id": "tour-strict", "steps": [
        bash("only", "true")]}})
    server.push({"workflow": {"id": "tour-cron", "time_triggers": [{"type": "cron", "cron": "0 6 * * *",
                                                                    "timezone": "UTC"}],
                              "steps": [bash("nightly", "true")]}})
    doc = {"properties": {"run_strategy": "parallel"}, "workflow": {"id": "tour", "params": {
        "region": {"type": "STRING", "value": "eu"}}, "steps": [
        bash("extract", 'echo "extracting $region"; echo "rows=1200" >> "$LEGATO_OUTPUT"', then="fan"),
        {"step": {"id": "fan", "type": "noop", "transition": {"successors": {f"shard{i}": "true" for i in range(8)}}}},
        *[{"step": {"id": f"shard{i}", "type": "noop", "transition": {"successors": {"each": "true"}}}} for i in range(8)],
        {"foreach": {"id": "each", "params": {"loop_params": {"value": {"day": {"type": "LONG_ARRAY", "value": [1, 2, 3, 4, 5]}}, "type": "MAP"}},
                     "steps": [bash("day_job", 'echo "day $day"')], "transition": {"successors": {"child": "true"}}}},
        {"step": {"id": "child", "type": "subworkflow", "params": {"subworkflow_id": "tour-child"}}}]}}
    server.push(doc)
    v2 = {**doc, "workflow": {**doc["workflow"], "description": "second version"}}
    server.push(v2)
    iid = server.start("tour")["instance_id"]
    final = server.wait_status("tour", iid, {"SUCCEEDED"})
    assert final["steps"]["each"]["status"] == "SUCCEEDED"

    pages = {"workflows": "/", "workflow": "/w/tour", "instance": f"/w/tour/i/{iid}",
             "loop": f"/w/tour/i/{iid}/loop/each", "step": f"/w/tour/i/{iid}/s/extract", "signals": "/signals"}
    for theme in ("light", "dark"):
        for name, fragment in pages.items():
            open_page(browser, server, fragment)
            if browser.execute_script("return document.documentElement.dataset.theme || 'light'") != theme:
                browser.find_element(By.ID, "theme-button").click()
            assert browser.execute_script("return getComputedStyle(document.body).colorScheme") == theme
            browser.save_screenshot(str(artifacts / f"{name}-{theme}.png"))
            assert errors(browser) == [], name

    open_page(browser, server, "/")
    cell = browser.find_element(By.CSS_SELECTOR, '[data-next-trigger="tour-cron"] span')  # GET /api/v3/triggers
    assert cell.text.endswith("(cron)") and "2" in cell.text, cell.text  # a date, then the type
    assert cell.get_attribute("title") == "cron CRON 0 6 * * * UTC", cell.get_attribute("title")
    assert browser.find_element(By.CSS_SELECTOR, '[data-next-trigger="tour"]').text == "none"
    dots = browser.find_elements(By.CSS_SELECTOR, "#main .dot")
    assert dots and all(d.get_attribute("aria-label").startswith("SUCCEEDED") and d.text == "✓" for d in dots)
    open_page(browser, server, "/w/tour")
    wait(browser, "the diff", lambda d: "second version" in text(d, "diff"))
    assert browser.find_elements(By.CSS_SELECTOR, "#diff .add")
    assert iid[:12] in text(browser, "instances")
    assert offered(browser, "main") == set()  # no Unblock: tour is PARALLEL
    Select(browser.find_element(By.ID, "status-filter")).select_by_value("FAILED")
    wait(browser, "the FAILED filter", lambda d: "No FAILED instance" in text(d, "main"))
    open_page(browser, server, "/w/tour-strict")
    assert offered(browser, "main") == {"unblock"}


    open_page(browser, server, f"/w/tour/i/{iid}")
    each = node_state(browser, "each")
    assert each.startswith("each: foreach, foreach 5/5"), each
    groups = browser.find_elements(By.CSS_SELECTOR, "#dag .node.group")
    assert len(groups) == 1 and "8 parallel steps" in groups[0].text  # the fan-out, one node
    press(browser, '#dag [data-step="extract"]', Keys.ARROW_RIGHT)
    assert browser.execute_script("return document.activeElement.dataset.step") == "fan"
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    wait(browser, "the step page of fan", lambda d: d.execute_script(
        "return location.hash.endsWith('/s/fan') && document.querySelector('main').dataset.ready === location.hash"))

    open_page(browser, server, f"/w/tour/i/{iid}")
    press(browser, "#dag .node.group", Keys.ENTER)
    wait(browser, "the group's steps", lambda d: all(f"shard{i}" in text(d, "drill") for i in range(8)))
    child = node_state(browser, "child")
    assert "subworkflow" in child and "SUCCEEDED" in child
    press(browser, '#dag [data-step="child"]', Keys.ENTER)
    kid = final["steps"]["child"]["outputs"]["subworkflow_instance_id"]
    wait(browser, "the child instance's page", lambda d: d.execute_script(
        "return location.hash") == f"#/w/tour-child/i/{kid}" and "hello" in (node_state(d, "hello") or ""))

    open_page(browser, server, f"/w/tour/i/{iid}/loop/each")
    assert "day_job" in text(browser, "dag")
    assert browser.find_element(By.CSS_SELECTOR, "#main").text.count("SUCCEEDED") >= 5  # its iterations
    open_page(browser, server, f"/w/tour/i/{iid}/s/extract")
    assert "extracting eu" in text(browser, "log")
    assert '"rows": "1200"' in text(browser, "step-outputs")
    assert "extracting $region" in text(browser, "step-params")


def test_a_loop_inside_a_loops_body_is_drilled_into_from_the_page(server, browser):
    """A foreach inside a foreach: the outer loop's page lists its iterations; one of them shows
    the inner loop as one node, which Enter opens to the inner loop's own iterations, and one of
    those to its body."""
    leaf = {"step": {"id": "leaf", "type": "noop"}}
    server.push({"workflow": {"id": "nest", "steps": [
        {"foreach": {"id": "outer", "params": {"loop_params": {"type": "MAP", "value": {
            "k": {"type": "LONG_ARRAY", "value": [1, 2]}}}}, "steps": [
            {"foreach": {"id": "inner", "params": {"loop_params": {"type": "MAP", "value": {
                "m": {"type": "LONG_ARRAY", "value": [1, 2, 3]}}}}, "steps": [leaf]}}]}}]}})
    iid = server.start("nest")["instance_id"]
    server.wait_status("nest", iid, {"SUCCEEDED"})
    open_page(browser, server, f"/w/nest/i/{iid}/loop/outer%2F2")
    inner = node_state(browser, "inner")
    assert inner and inner.startswith("inner: foreach") and "3/3" in inner, inner
    press(browser, '#dag [data-step="inner"]', Keys.ENTER)
    wait(browser, "the inner loop's page", lambda d: d.execute_script(
        "return decodeURIComponent(location.hash).endsWith('/loop/outer/2/inner')"
        " && document.querySelector('main').dataset.ready === location.hash"))
    wait(browser, "the inner loop's three iterations", lambda d: "Iterations (3)" in d.find_element(By.ID, "main").text)
    assert errors(browser) == []
