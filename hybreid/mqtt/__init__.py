"""MQTT plumbing shared by the edge and the matcher: the client (:mod:`.client`). Brokers
for benchmarks, the demo and the tests are the lab's (:mod:`hybreid.lab`)."""

from hybreid.mqtt.client import BrokerConfig, make_client

__all__ = ["BrokerConfig", "make_client"]
