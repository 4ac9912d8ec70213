"""A throwaway PostgreSQL cluster for the tests (imports nothing of Legato).

:func:`start` runs ``initdb`` into a fresh temporary directory and ``pg_ctl start`` on a unix
socket in it (no TCP port: nothing to collide with), as the user ``nobody`` when the tests run as
root (PostgreSQL refuses to run as root; the directory is made theirs). :meth:`Cluster.database`
creates an empty database and returns its URL; :meth:`Cluster.stop` stops the server and removes
the directory. :func:`problem` says why no cluster can be started here (None when one can).

Binaries are looked for in ``LEGATO_PG_BIN``, then Debian's /usr/lib/postgresql/<major>/bin
(newest first), then the PATH. ``bash scripts/engines install`` installs Debian's ``postgresql``.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SUPERUSER = "legato"
# Settings of a throwaway cluster: nothing in it needs to survive a crash of the machine.
SETTINGS = {"listen_addresses": "''", "fsync": "off", "full_page_writes": "off", "max_connections": "200",
            "shared_buffers": "32MB", "unix_socket_permissions": "0777"}


def bin_dir() -> Path | None:
    """The directory holding initdb and pg_ctl, or None."""
    candidates = []
    if os.environ.get("LEGATO_PG_BIN"):
        candidates.append(os.environ["LEGATO_PG_BIN"])
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                         if Path(p).parent.name.isdigit() else 0, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for candidate in candidates:
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


def _as_user() -> list[str]:
    """The prefix that runs a command as a user PostgreSQL accepts (``nobody`` when we are root)."""
    if os.geteuid() != 0:
        return []
    return [shutil.which("runuser") or "runuser", "-u", "nobody", "--"]


def problem() -> str | None:
    """Why a cluster cannot be started here, or None."""
    if bin_dir() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin or on the PATH"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser (PostgreSQL refuses to run as root)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg driver is not installed (pip install 'legato[postgres]')"
    return None


class Cluster:
    """A running throwaway cluster (see the module docstring)."""

    def __init__(self, base: Path, bindir: Path) -> None:
        self.base = base
        self.bindir = bindir
        self.data = base / "data"
        self.socket_dir = base / "run"
        self._names = itertools.count(1)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@/{database}?host={self.socket_dir}"

    def connect(self, database: str = "postgres"):
        import psycopg

        return psycopg.connect(host=str(self.socket_dir), user=SUPERUSER, dbname=database, autocommit=True)

    def database(self, prefix: str = "t") -> str:
        """A new empty database; its URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def pg_ctl(self, *args: str) -> None:
        """Run ``pg_ctl`` on this cluster (``stop``, ``start``: a server going away and coming back)."""
        options = " ".join(f"-c {k}={v}" for k, v in {**SETTINGS, "unix_socket_directories": str(self.socket_dir)}.items())
        proc = subprocess.run([*_as_user(), str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                               str(self.base / "server.log"), "-o", options, "-w", "-t", "60", *args],
                              capture_output=True, text=True, timeout=120, cwd=self.base)
        if proc.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {proc.stderr.strip()}")

    def terminate_backends(self, database: str) -> int:
        """Cut every connection to ``database`` (what a network cut or a failover does); how many."""
        with self.connect() as conn:
            rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                                "AND pid <> pg_backend_pid()", (database,)).fetchall()
        return len(rows)

    def stop(self) -> None:
        subprocess.run([*_as_user(), str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                        "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)


def start() -> Cluster:
    """Start a cluster (raises RuntimeError saying what failed)."""
    bindir = bin_dir()
    if bindir is None:
        raise RuntimeError(problem())
    base = Path(tempfile.mkdtemp(prefix="legato-pg-"))
    cluster = Cluster(base, bindir)
    cluster.socket_dir.mkdir()
    as_user = _as_user()
    if as_user:
        os.chmod(base, 0o755)
        for path in (base, cluster.socket_dir):
            os.chown(path, 65534, 65534)

    def run(*argv: str) -> None:
        proc = subprocess.run([*as_user, *argv], capture_output=True, text=True, timeout=120, cwd=base)
        if proc.returncode != 0:
            log = (base / "server.log").read_text() if (base / "server.log").exists() else ""
            shutil.rmtree(base, ignore_errors=True)
            raise RuntimeError(f"{Path(argv[0]).name} failed ({proc.returncode}): {proc.stderr.strip()} {log[-2000:]}")

    run(str(bindir / "initdb"), "-D", str(cluster.data), "-U", SUPERUSER, "--auth=trust", "--no-sync",
        "-E", "UTF8", "--locale=C")
    try:
        cluster.pg_ctl("start")
    except RuntimeError:
        log = (base / "server.log").read_text() if (base / "server.log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"the server did not start: {log[-2000:]}") from None
    return cluster
