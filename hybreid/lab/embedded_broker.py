"""An MQTT 3.1.1 broker inside the demo process, so ``hybreid demo`` needs nothing installed.

amqtt (an asyncio broker) runs on its own event loop in a background thread, bound to
127.0.0.1 only. It keeps sessions in memory and speaks MQTT 3.1.1 only, which is why the
demo's clients use 3.1.1 and why production sites use Mosquitto or EMQX (``--broker``).
"""

from __future__ import annotations

import asyncio
import logging
import threading

from hybreid.errors import UserError
from hybreid.lab.mosquitto import free_port


class EmbeddedBroker:
    """``with EmbeddedBroker() as broker: ... broker.url``"""

    def __init__(self, port: int | None = None, start_timeout: float = 10.0):
        self.port = port or free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self._timeout = start_timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="embedded-broker", daemon=True)
        self._broker = None

    def _config(self) -> dict:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

    async def _start(self) -> None:
        from amqtt.broker import Broker

        self._broker = Broker(self._config())
        await self._broker.start()

    def start(self) -> EmbeddedBroker:
        # amqtt logs every connection at INFO; the demo prints its own progress.
        logging.getLogger("amqtt").setLevel(logging.WARNING)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(self._timeout)
        except Exception as exc:  # amqtt raises several types for a port it cannot bind
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise UserError(f"cannot start the embedded MQTT broker on 127.0.0.1:{self.port} ({exc}); "
                            f"give --broker mqtt://host:port to use a running broker") from exc
        return self

    def stop(self) -> None:
        if self._broker is not None:
            asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(self._timeout)
            self._broker = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self._timeout)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
