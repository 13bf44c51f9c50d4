"""Result tables printed by every command (and by the benchmarks)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tabulate import tabulate


def format_table(header: Sequence[str], rows: Sequence[Sequence], title: str = "",
                 floatfmt: str | Sequence[str] = ".3f") -> str:
    """A GitHub-style table; ``floatfmt`` is one format, or one per column."""
    table = tabulate(rows, headers=list(header), tablefmt="github", floatfmt=floatfmt)
    return f"{title}\n{table}" if title else table


def save_json(payload, path: str | Path) -> Path:
    """Results as indented JSON, the folder created as needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    return path
