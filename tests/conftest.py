"""Shared fixtures: an engine on the memory store with the test-only ``scripted`` step type."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from legato.engine import Engine
from legato.plugin_manager import Plugins

from . import scripted

ROOT = Path(__file__).resolve().parent.parent
LEGATO = str(Path(sys.executable).parent / "legato")


@pytest.fixture(scope="session", autouse=True)
def _cli_store(tmp_path_factory):
    """The CLI's default store is .legato/ in the working directory: keep tests out of the repo's."""
    path = tmp_path_factory.mktemp("store") / "legato.db"
    os.environ["LEGATO_STORE"] = f"sqlite:///{path}"
    yield
    os.environ.pop("LEGATO_STORE", None)


@pytest.fixture(scope="session")
def plugins() -> Plugins:
    return Plugins(extra=[scripted])


@pytest.fixture
def engine(plugins, tmp_path) -> Engine:
    from legato.plugins.memory import MemoryStorage

    scripted.calls.clear()
    scripted.active.update(now=0, peak=0)
    return Engine(MemoryStorage(), plugins=plugins, workspace=tmp_path / "runs")


class Finished:
    """A finished instance with its attempts, indexed for assertions."""

    def __init__(self, instance, attempts, timeline, logs) -> None:
        self.instance = instance
        self.status = instance.status.value
        self.attempts = attempts
        self.timeline = timeline
        self.logs = logs
        self.last = {}
        for a in attempts:
            self.last[a.step_id] = a

    def statuses(self) -> dict[str, str]:
        return {sid: a.status.value for sid, a in self.last.items()}

    def tries(self, step_id: str) -> list[str]:
        return [a.status.value for a in self.attempts if a.step_id == step_id]

    def log(self, step_id: str) -> str:
        return "".join(c.text for c in self.logs if c.step_id == step_id)


def fatal_as(attempt, failure: str) -> bool:
    """The attempt ended FATALLY_FAILED as a ``failure`` (USER_FAILED, PLATFORM_FAILED) with no retry
    of that class left: the engine names the class in the message (legato.states.next_status)."""
    return attempt.status.value == "FATALLY_FAILED" and f"({failure}, no " in attempt.message


@pytest.fixture
def run_doc(engine):
    async def run(doc, params=None, **kwargs) -> Finished:
        definition = engine.load(doc)
        instance = await engine.execute(definition, params, **kwargs)
        storage = engine.storage
        return Finished(
            instance,
            await storage.get_attempts(instance.instance_id),
            await storage.get_timeline(instance.instance_id),
            await storage.get_logs(instance.instance_id),
        )

    return run


def legato_cli(*args, cwd=None, timeout=60, env_extra=None, **kwargs) -> subprocess.CompletedProcess:
    """Run the installed ``legato`` console script as a user would (``env_extra`` added to the environment)."""
    env = {**os.environ, "COLUMNS": "200", **(env_extra or {})}
    return subprocess.run([LEGATO, *args], cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)


def have(binary: str) -> bool:
    return shutil.which(binary) is not None


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


REQUIRE_COMPONENTS = os.environ.get("LEGATO_REQUIRE_COMPONENTS") == "1"


def require_component(name: str, problem: str | None) -> None:
    """Skip a test whose system component (Docker, a Jupyter kernel, PostgreSQL) is missing, saying
    why; under CI (LEGATO_REQUIRE_COMPONENTS=1, set by .ci/run) fail instead: CI provisions them."""
    if problem is None:
        return
    message = f"{name} is not available here: {problem} (bash scripts/engines installs and starts it)"
    if REQUIRE_COMPONENTS:
        pytest.fail(f"required in CI: {message}")
    pytest.skip(message)


IMAGE = "legato-test/busybox:1"  # built locally by scripts/engines (no registry is reachable)


@functools.lru_cache(maxsize=1)
def docker_problem() -> str | None:
    """None when an engine answers and the test image is there, else why not."""
    try:
        import docker
    except ImportError:
        return "the Docker SDK for Python is not installed (pip install docker)"
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as exc:  # noqa: BLE001
        return f"no Docker engine answers ({exc})"
    try:
        client.images.get(IMAGE)
    except Exception:  # noqa: BLE001
        return f"the test image {IMAGE} is missing"
    return None


@functools.lru_cache(maxsize=1)
def kernel_problem() -> str | None:
    """Why notebooks cannot run here, or None."""
    if importlib.util.find_spec("papermill") is None:
        return "papermill is not installed (pip install 'legato[notebook]')"
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        KernelSpecManager().get_kernel_spec("python3")
    except Exception as exc:  # noqa: BLE001 - any reason is a reason to skip
        return f"no python3 Jupyter kernel ({type(exc).__name__}: {exc})"
    return None


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster for the session (tests/pgserver.py), started when a test first
    asks for it and stopped at the end; ``postgres.database()`` makes an empty database and returns
    its URL. Skips, saying why, where no server can be started (fails under CI)."""
    from . import pgserver

    require_component("PostgreSQL", pgserver.problem())
    try:
        cluster = pgserver.start()
    except RuntimeError as exc:
        require_component("PostgreSQL", f"the throwaway cluster did not start: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(postgres) -> str:
    """The URL of an empty PostgreSQL database of its own for the test."""
    return postgres.database()
