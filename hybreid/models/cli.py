"""``hybreid models``."""

from __future__ import annotations

from hybreid.command_line import command


def _list(args) -> None:
    from hybreid.models import REGISTRY
    from hybreid.tables import format_table

    rows = [[name, entry.family, entry.description,
             f"{entry.paper.params_m} M, {entry.paper.gflops} G" if entry.paper else ""]
            for name, entry in sorted(REGISTRY.items())]
    print(format_table(["name", "family", "description", "paper params, GFLOPs"], rows))


def register(commands) -> None:
    command(commands, "models", "list the named model configurations", _list)
