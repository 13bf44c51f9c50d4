"""The machine a figure was measured on, and the code that measured it: every result
folder of ``hybreid bench`` (and of the other commands that write results) gets a
``provenance.json`` with the commit, the processor and the command line."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path


def cpu_model_name() -> str:
    """The processor's name, as /proc/cpuinfo gives it (or the platform's answer elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit() -> str | None:
    """The source checkout's commit (``+dirty`` with uncommitted changes), or None outside one."""
    source = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def provenance() -> dict:
    """The code and the machine, as they are when a measurement starts."""
    from hybreid import __version__

    return {"hybreid": __version__, "commit": commit(), "cpu": cpu_model_name(), "cores": os.cpu_count(),
            "machine": platform.machine(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
