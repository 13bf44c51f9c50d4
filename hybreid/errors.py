"""Errors a user can cause, reported by the CLI as one sentence (no traceback)."""

from __future__ import annotations

import difflib


class UserError(ValueError):
    """A wrong name, option, file or layout: the message says what to do."""


def _field_names(model) -> set[str]:
    """Every field name of a pydantic model and of the models nested in it."""
    from typing import get_args

    from pydantic import BaseModel

    names, pending, seen = set(), [model], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        for name, field in current.model_fields.items():
            names.add(name)
            stack = [field.annotation]
            while stack:
                annotation = stack.pop()
                if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                    pending.append(annotation)
                stack.extend(get_args(annotation))
    return names


def validation_problem(exc, model=None) -> str:
    """The first complaint of a pydantic ``ValidationError`` as ``where: what``; an unknown
    key gets the nearest known name of ``model`` as a suggestion."""
    errors = exc.errors(include_url=False)
    # A typo of a key also makes that key "missing": the unknown key is the cause to name.
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    location = [str(part) for part in error["loc"]]
    where = ".".join(location) or "top level"
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(location[-1], sorted(_field_names(model)), n=1) if model else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown key {where!r}{hint}"
    return f"{where}: {error['msg']}"


def check_options(given, known, what: str) -> None:
    """Refuse option names not in ``known``, suggesting the nearest known one."""
    for name in given:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(known))}"
            raise UserError(f"unknown option {name!r} for the {what}{hint}")
