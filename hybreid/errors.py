"""Errors a user can cause, reported by the CLI as one sentence (no traceback)."""


class UserError(ValueError):
    """A wrong name, option, file or layout: the message says what to do."""
