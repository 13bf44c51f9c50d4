"""The MQTT client both sides use: the edge's publisher and the matcher (paho-mqtt 2.x)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from hybreid.errors import UserError
from hybreid.files import MIB, check_ca_file, read_regular_file


@dataclass
class BrokerConfig:
    url: str = "mqtt://127.0.0.1:1883"
    client_id: str = "hybreid-edge"
    username: str | None = None
    password: str | None = None
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    protocol: str = "3.1.1"  # or "5"
    keepalive: int = 30

    def endpoint(self) -> tuple[str, int, bool]:
        parsed = urlparse(self.url)
        if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
            raise UserError(f"broker url must look like mqtt://host:1883 or mqtts://host:8883, got {self.url!r}")
        tls = parsed.scheme == "mqtts"
        return parsed.hostname, parsed.port or (8883 if tls else 1883), tls


def check_tls_files(config: BrokerConfig) -> None:
    """The TLS files, refused in one sentence where TLS would hang on them (a FIFO), read an
    endless device, or fail with an SSL traceback (a CA file holding no certificate)."""
    if config.ca_certs:
        check_ca_file(config.ca_certs)
    for what, path in (("client certificate file", config.certfile), ("client key file", config.keyfile)):
        if path:
            read_regular_file(path, what, MIB)


def make_client(config: BrokerConfig, will: tuple[str, bytes] | None = None,
                persistent_session: bool = False) -> mqtt.Client:
    """A paho 2.x client (VERSION2 callbacks). ``persistent_session`` keeps the broker-side
    session for MQTT 3.1.1 (clean_session=False); for MQTT 5 pass ``clean_start=False``
    and a session expiry when connecting."""
    version = mqtt.MQTTv5 if str(config.protocol) == "5" else mqtt.MQTTv311
    session = {"clean_session": not persistent_session} if version == mqtt.MQTTv311 else {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=config.client_id, protocol=version, **session)
    if config.username:
        client.username_pw_set(config.username, config.password)
    if config.endpoint()[2]:
        check_tls_files(config)
        client.tls_set(ca_certs=config.ca_certs, certfile=config.certfile, keyfile=config.keyfile)
    if will:
        client.will_set(will[0], will[1], qos=1, retain=True)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client
