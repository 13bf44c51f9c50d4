"""Broker isolation from the site files: a Mosquitto password file and ACL.

Each camera box (the MQTT user of its site file, ``broker.username``, else its
``box_id``) may write only its own cameras' ``features`` and ``status`` topics at its own
site, and read nothing. The matcher may read every feature and status and write the
sites' events; readers (dashboards) may read events and statuses. Nobody else writes
events. Topics are listed one by one: a ``%u`` pattern would let a box named like a
topic level (``events``) write there, and a ``+`` site would let it write at any site.

Mosquitto's password file stores PBKDF2-SHA512 hashes in its own ``$7$`` format; no
maintained Python library writes that format, so it is built here from hashlib.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from hybreid import protocol
from hybreid.config import load_yaml
from hybreid.errors import UserError

USER = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default for $7$ hashes


@dataclass
class BoxAccess:
    user: str
    site: str
    cameras: list[str]
    source: Path


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    """A password hash in the format of Mosquitto's password file (``$7$``: PBKDF2-SHA512)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    return f"$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def box_access(site_file: str | Path) -> BoxAccess:
    from hybreid.edge_runtime.site import validate_site

    path = Path(site_file)
    site = validate_site(load_yaml(path), f"site file {path}")
    user = site.broker.username or site.box_id
    _check_user(user, f"site file {path}")
    return BoxAccess(user, site.site, [camera.id for camera in site.cameras], path)


def _check_user(user: str, where: str) -> None:
    if not USER.match(user):
        raise UserError(f"{where}: MQTT user {user!r} must match [A-Za-z0-9_.-]{{1,64}}")
    if user in protocol.RESERVED_CAMERA_IDS:
        raise UserError(f"{where}: MQTT user {user!r} is reserved (it names a topic level)")


def acl_text(boxes: list[BoxAccess], matcher_user: str, readers: list[str]) -> str:
    sites = sorted({box.site for box in boxes})
    lines = ["# Written by `hybreid site broker-acl` from the site files; regenerate rather than edit.", ""]
    for box in boxes:
        lines += [f"# {box.source.name}: site {box.site}", f"user {box.user}"]
        for camera in box.cameras:
            lines += [f"topic write {protocol.features_topic(box.site, camera)}",
                      f"topic write {protocol.status_topic(box.site, camera)}"]
        lines.append("")
    lines += ["# the matcher: every feature and status in, the sites' events out", f"user {matcher_user}",
              f"topic read {protocol.features_subscription()}", f"topic read {protocol.TOPIC_ROOT}/+/+/status"]
    lines += [f"topic write {protocol.events_topic(site)}" for site in sites]
    lines.append("")
    for reader in readers:
        lines += [f"user {reader}", f"topic read {protocol.TOPIC_ROOT}/+/events",
                  f"topic read {protocol.TOPIC_ROOT}/+/+/status", ""]
    return "\n".join(lines)


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def write_broker_files(site_files: list[str | Path], out: str | Path, matcher_user: str = "matcher",
                       readers: tuple[str, ...] = (), overwrite: bool = False) -> dict[str, Path]:
    """Write ``acl``, ``passwd``, ``mosquitto.conf`` (the lines to include) and one password
    file per user (``passwords/<user>``, mode 0600) into ``out``; returns their paths."""
    if not site_files:
        raise UserError("give at least one site file")
    boxes = [box_access(path) for path in site_files]
    for user in (matcher_user, *readers):
        _check_user(user, "--matcher-user/--reader")
    users = [box.user for box in boxes] + [matcher_user, *readers]
    repeated = sorted({user for user in users if users.count(user) > 1})
    if repeated:
        raise UserError(f"MQTT user(s) {', '.join(repeated)} appear more than once: give each box its own "
                        "broker.username (or box_id), distinct from the matcher's and the readers'")
    cameras = [(box.site, camera) for box in boxes for camera in box.cameras]
    shared = sorted({f"{site}/{camera}" for site, camera in cameras if cameras.count((site, camera)) > 1})
    if shared:
        raise UserError(f"camera(s) {', '.join(shared)} belong to more than one box; a camera has one box")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} is not empty; choose a new folder or pass --overwrite")
    (out / "passwords").mkdir(parents=True, exist_ok=True)
    passwords = {user: secrets.token_urlsafe(24) for user in users}
    paths = {"acl": out / "acl", "passwd": out / "passwd", "conf": out / "mosquitto.conf"}
    paths["acl"].write_text(acl_text(boxes, matcher_user, list(readers)))
    _write_private(paths["passwd"], "".join(f"{user}:{mosquitto_hash(password)}\n"
                                            for user, password in passwords.items()))
    for user, password in passwords.items():
        _write_private(out / "passwords" / user, password + "\n")
    paths["conf"].write_text(f"# include in the listener's configuration\nallow_anonymous false\n"
                             f"password_file {paths['passwd'].resolve()}\nacl_file {paths['acl'].resolve()}\n")
    return paths
