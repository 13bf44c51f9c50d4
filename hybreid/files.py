"""Small files a user names (password, thresholds, CA, YAML configs), read defensively.

A path on a command line or in a config can name anything: ``/dev/zero`` (endless), a FIFO
(a read that blocks forever), a directory, a file of gigabytes. Such a file is refused in
one sentence before anything is read from it: only a regular file of a bounded size is
read, and the open itself never blocks.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hybreid.errors import UserError

KIB = 1024
MIB = 1024 * KIB
MAX_PASSWORD_BYTES = 4 * KIB


def read_regular_file(path: str | Path, what: str, max_bytes: int) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``max_bytes``; otherwise
    one :class:`UserError` naming ``what`` (e.g. ``"password file"``)."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read ({exc.strerror})") from None
    status = os.fstat(descriptor)
    if not stat.S_ISREG(status.st_mode):
        os.close(descriptor)
        raise UserError(f"{what} {path} is not a regular file (a directory, device or pipe); give a file")
    with os.fdopen(descriptor, "rb") as handle:
        if status.st_size > max_bytes:
            raise UserError(f"{what} {path} holds {status.st_size} bytes, more than the {max_bytes} such a file "
                            "may hold; is it the right file?")
        try:
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise UserError(f"{what} {path} cannot be read ({exc.strerror})") from None
    if len(data) > max_bytes:  # grew while it was read
        raise UserError(f"{what} {path} holds more than the {max_bytes} bytes such a file may hold")
    return data


def read_text_file(path: str | Path, what: str, max_bytes: int) -> str:
    """:func:`read_regular_file` decoded as UTF-8 (one sentence if it is not)."""
    try:
        return read_regular_file(path, what, max_bytes).decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not UTF-8 text") from None


def check_ca_file(path: str | Path, what: str = "CA certificate file") -> None:
    """A PEM file of CA certificates, as TLS will load it: refused in one sentence where it is
    not a small regular file or holds no certificate (the SSL error would be a traceback)."""
    import ssl

    text = read_text_file(path, what, MIB)
    try:
        ssl.create_default_context(cadata=text)
    except (ssl.SSLError, ValueError) as exc:
        raise UserError(f"{what} {path} holds no PEM certificate TLS can load ({exc.__class__.__name__}); give "
                        "the broker's CA certificate") from None
