"""A throwaway PostgreSQL server in a folder, on a free loopback port, for benchmarks and tests.

Debian's ``postgresql`` package provides the programs (``make test`` installs it as root).
PostgreSQL refuses to run as root, so as root the server runs as the package's
``postgres`` user, in a folder of its own under the temporary directory.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from hybreid.errors import UserError
from hybreid.lab.mosquitto import free_port


def postgres_programs() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``, or None where PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


class PostgresServer:
    """A PostgreSQL cluster that can be stopped (or killed) and started again on the same port."""

    def __init__(self, folder: str | Path):
        programs = postgres_programs()
        if programs is None:
            raise UserError("PostgreSQL is not installed: apt-get install postgresql (make test does it as root)")
        self.programs, self.port = programs, free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            # the postgres user cannot enter a root-only folder (pytest's are): a folder of its own
            self.folder = Path(tempfile.mkdtemp(prefix="hybreid-postgres-"))
            shutil.chown(self.folder, "postgres", "postgres")
        else:
            self.folder = Path(folder)
            self.folder.mkdir(parents=True, exist_ok=True)
        self.data = self.folder / "data"
        self._run([str(programs / "initdb"), "-D", str(self.data), "-U", "hybreid", "--auth=trust",
                   "--encoding=UTF8", "--no-sync"])
        with open(self.data / "postgresql.conf", "a") as conf:
            # fsync off: a test server's data need not survive a power cut, and syncs would time the disk
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.folder}'\nfsync = off\nmax_connections = 50\n")
        self.url = f"postgresql://hybreid@127.0.0.1:{self.port}/postgres"
        self._databases = 0

    def _run(self, command: list[str], wait: bool = True):
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        if not wait:
            return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{Path(command[-1]).name}: {result.stderr.strip()[-500:]}")
        return result

    def start(self) -> None:
        self._run([str(self.programs / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "server.log"),
                   "-w", "-t", "60", "start"])

    def stop(self) -> None:
        self._run([str(self.programs / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def new_database(self) -> str:
        """The URL of a new, empty database on this server."""
        import psycopg

        self._databases += 1
        name = f"gallery_{self._databases}"
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def kill(self) -> None:
        """SIGKILL the postmaster and its children: the database goes away mid-stream."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        subprocess.run(["pkill", "-KILL", "-P", str(pid)], check=False)
        os.kill(pid, 9)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass  # already stopped or killed
        if self._as_root:
            shutil.rmtree(self.folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
