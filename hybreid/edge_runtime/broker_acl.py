"""Broker isolation from the site files: a Mosquitto password file, ACL and the listener's
settings.

Each camera box (the MQTT user of its site file, ``broker.username``, else its
``box_id``) may write only its own cameras' ``features`` topics at its own site, and read
nothing; each of its cameras' status connections logs in as ``<user>.<camera>`` (same
password) and may write that camera's ``status`` topic only. The matchers may read every
feature and status and write the sites' events; readers (dashboards) may read events and
statuses. Nobody else writes events. Topics are listed one by one: a ``%u`` pattern would
let a box named like a topic level (``events``) write there, and a ``+`` site would let it
write at any site.

Client ids are bound to users (``use_username_as_clientid``): a session belongs to the
user that logged in, so a box that connects with the matcher's client id cannot take over
(and wipe) the matcher's session and the messages queued in it. Every connection therefore
logs in as its own user: one per matcher instance (``--matcher-user``, repeatable).

The matcher's queue at the broker must hold what every box may send while the matcher is
slow or away: ``max_queued_messages`` is the sum of the boxes' ``outbox.max_messages`` (with
Mosquitto's default of 1,000, a burst of 5,000 features lost 2,900 acknowledged records),
and the queue persists on disk (``persistence``, saved every ``AUTOSAVE_S`` seconds).

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
STATUS_AND_EVENT_SLACK = 10_000  # queued beside the features: statuses, and a reader's events
AUTOSAVE_S = 10  # a broker killed outright loses what was queued since its last save


@dataclass
class BoxAccess:
    user: str
    site: str
    cameras: list[str]
    source: Path
    outbox_messages: int  # the most the box holds unsent, so the most it may send in one burst

    @property
    def status_users(self) -> dict[str, str]:
        """Camera -> the user its status connection logs in as."""
        return {camera: protocol.status_login(self.user, camera) for camera in self.cameras}


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
    return BoxAccess(user, site.site, [camera.id for camera in site.cameras], path, site.outbox.max_messages)


def _check_user(user: str, where: str) -> None:
    if not USER.match(user):
        raise UserError(f"{where}: MQTT user {user!r} must match [A-Za-z0-9_.-]{{1,64}}")
    if user in protocol.RESERVED_CAMERA_IDS:
        raise UserError(f"{where}: MQTT user {user!r} is reserved (it names a topic level)")


def acl_text(boxes: list[BoxAccess], matcher_users: list[str], readers: list[str]) -> str:
    sites = sorted({box.site for box in boxes})
    lines = ["# Written by `hybreid site broker-acl` from the site files; regenerate rather than edit.", ""]
    for box in boxes:
        lines += [f"# {box.source.name}: site {box.site}", f"user {box.user}"]
        lines += [f"topic write {protocol.features_topic(box.site, camera)}" for camera in box.cameras]
        for camera, user in box.status_users.items():
            lines += [f"user {user}", f"topic write {protocol.status_topic(box.site, camera)}"]
        lines.append("")
    for user in matcher_users:
        lines += ["# a matcher: every feature and status in, the sites' events out", f"user {user}",
                  f"topic read {protocol.features_subscription()}", f"topic read {protocol.TOPIC_ROOT}/+/+/status"]
        lines += [f"topic write {protocol.events_topic(site)}" for site in sites]
        lines.append("")
    for reader in readers:
        lines += [f"user {reader}", f"topic read {protocol.TOPIC_ROOT}/+/events",
                  f"topic read {protocol.TOPIC_ROOT}/+/+/status", ""]
    return "\n".join(lines)


def _write_private(path: Path, text: str) -> None:
    """``text`` in a new file of mode 0600 that then replaces ``path``: whatever was there
    (a file left at 0644, a link to somewhere else) is replaced, never written through."""
    import tempfile

    descriptor, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def _passwords(folder: Path, users: list[str], keep: bool) -> dict[str, str]:
    """A password per user: with ``keep``, the one an earlier run wrote for it (a box keeps
    working after another is added), else a new one."""
    from hybreid.files import MAX_PASSWORD_BYTES, read_text_file

    passwords = {}
    for user in users:
        existing = folder / user
        if keep and existing.exists():
            passwords[user] = read_text_file(existing, "existing password file", MAX_PASSWORD_BYTES).strip()
        if not passwords.get(user):
            passwords[user] = secrets.token_urlsafe(24)
    return passwords


def mosquitto_settings(boxes: list[BoxAccess], paths: dict[str, Path], persistence_dir: str | Path) -> str:
    """The listener's lines: who may log in and do what, client ids bound to users, and a
    persistent queue as deep as every box's outbox together."""
    queued = sum(box.outbox_messages for box in boxes) + STATUS_AND_EVENT_SLACK
    return (f"# include in the listener's configuration (written by `hybreid site broker-acl`)\n"
            f"allow_anonymous false\npassword_file {paths['passwd'].resolve()}\nacl_file {paths['acl'].resolve()}\n"
            f"# a session belongs to the user that logged in: nobody takes over the matcher's queue\n"
            f"use_username_as_clientid true\n"
            f"# the boxes' outboxes together ({queued - STATUS_AND_EVENT_SLACK} records), kept on disk\n"
            f"max_queued_messages {queued}\nmax_queued_bytes 0\n"
            f"persistence true\npersistence_location {Path(persistence_dir).resolve()}/\n"
            f"autosave_interval {AUTOSAVE_S}\n")


def write_broker_files(site_files: list[str | Path], out: str | Path, matcher_users: tuple[str, ...] = ("matcher",),
                       readers: tuple[str, ...] = (), overwrite: bool = False, new_passwords: bool = False,
                       persistence_dir: str | Path = "/var/lib/mosquitto") -> dict[str, Path]:
    """Write ``acl``, ``passwd``, ``mosquitto.conf`` (the lines to include) and one password
    file per login (``passwords/<user>``, mode 0600; a box's cameras share its password) into
    ``out``; returns their paths. Over an earlier run (``overwrite``) the existing passwords are
    kept unless ``new_passwords``."""
    if not site_files:
        raise UserError("give at least one site file")
    boxes = [box_access(path) for path in site_files]
    for user in (*matcher_users, *readers):
        _check_user(user, "--matcher-user/--reader")
    logins = [box.user for box in boxes] + [*matcher_users, *readers]
    users = logins + [user for box in boxes for user in box.status_users.values()]
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
    passwords = _passwords(out / "passwords", logins, keep=not new_passwords)
    for box in boxes:
        passwords.update({user: passwords[box.user] for user in box.status_users.values()})
    paths = {"acl": out / "acl", "passwd": out / "passwd", "conf": out / "mosquitto.conf"}
    paths["acl"].write_text(acl_text(boxes, list(matcher_users), list(readers)))
    _write_private(paths["passwd"], "".join(f"{user}:{mosquitto_hash(password)}\n"
                                            for user, password in passwords.items()))
    for user in logins:
        _write_private(out / "passwords" / user, passwords[user] + "\n")
    paths["conf"].write_text(mosquitto_settings(boxes, paths, persistence_dir))
    return paths
