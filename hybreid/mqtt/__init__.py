"""MQTT plumbing shared by the edge, the matcher, the demo, the benchmarks and the tests:
the client (:mod:`.client`), a throwaway Mosquitto (:mod:`.mosquitto`) and the demo's
in-process broker (:mod:`.embedded`)."""

from hybreid.mqtt.client import BrokerConfig, make_client

__all__ = ["BrokerConfig", "make_client"]
