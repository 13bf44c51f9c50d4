"""Result tables printed by every command (and by the benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence

from tabulate import tabulate


def format_table(header: Sequence[str], rows: Sequence[Sequence], title: str = "",
                 floatfmt: str | Sequence[str] = ".3f") -> str:
    """A GitHub-style table; ``floatfmt`` is one format, or one per column."""
    table = tabulate(rows, headers=list(header), tablefmt="github", floatfmt=floatfmt)
    return f"{title}\n{table}" if title else table
