"""A throwaway Mosquitto broker on a free loopback port, for benchmarks and tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from hybreid.errors import UserError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """A Mosquitto process that can be stopped and started again (same port, persistent state)."""

    def __init__(self, folder: str | Path, security: str | Path | None = None):
        """``security``: a file of the listener's configuration lines (password file, ACL, queue
        and persistence settings, as ``hybreid site broker-acl`` writes them) to include; without
        it anyone may connect anonymously, and the queue is deep and persistent here."""
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise UserError("mosquitto is not installed: apt-get install mosquitto (make test does it as root)")
        self.binary, self.folder, self.port = binary, Path(folder), free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config = self.folder / "mosquitto.conf"
        # Run as root, Mosquitto drops to user 'mosquitto' unless told otherwise, and then
        # cannot write its persistence file here.
        settings = Path(security).read_text() if security else (
            f"allow_anonymous true\npersistence true\npersistence_location {self.folder}/\n"
            "max_queued_messages 100000\n")
        self.config.write_text(f"listener {self.port} 127.0.0.1\n{settings}user root\n")
        self.process: subprocess.Popen | None = None
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
