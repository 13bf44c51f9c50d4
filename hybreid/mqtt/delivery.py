"""QoS 1 delivery bookkeeping shared by the edge's publisher and the matcher's events: which
record each published message carries until the broker's PUBACK settles it.

- paho calls ``on_publish`` from its network thread, sometimes before ``publish()`` has
  returned the message id to the publishing thread: such an early PUBACK is kept until
  :meth:`Deliveries.sent` claims it; one nobody claims within ``stale_s`` is dropped (its
  message id will be reused).
- Under MQTT 5 a PUBACK's reason code tells a refused publish (the broker's ACL, a quota:
  Mosquitto answers "Not authorized", 0x87) from a delivered one; under MQTT 3.1.1 a refused
  publish gets a plain PUBACK and looks delivered.
- The lock is never held while calling paho, which holds its own lock when it calls
  ``on_publish`` (holding ours around ``publish()`` deadlocked), nor while settling.

Written here because paho offers only ``MQTTMessageInfo.wait_for_publish``, a blocking wait
per message that reports neither a refusal's reason code nor a PUBACK that came first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable

STALE_EARLY_ACK_S = 60.0


def is_refusal(reason_code) -> bool:
    """Whether a PUBACK's reason code (None under MQTT 3.1.1) says the broker refused the publish."""
    return reason_code is not None and reason_code.is_failure


class Deliveries:
    """``settle(record, refused, reason_code)`` is called once per record whose PUBACK came, in
    whichever thread saw both the message id and the PUBACK. A record of ``None`` is sent but
    settles nothing (its PUBACK is only absorbed)."""

    def __init__(self, settle: Callable[[Hashable, bool, object], None], stale_s: float = STALE_EARLY_ACK_S):
        self._settle, self._stale_s = settle, stale_s
        self._lock = threading.Lock()
        self._in_flight: dict[int, Hashable | None] = {}  # mid -> record
        self._early: dict[int, tuple[float, object]] = {}  # mid -> (when, reason code) of a PUBACK first

    def sent(self, mid: int, record: Hashable | None) -> None:
        """``publish()`` returned ``mid`` for ``record``; settles it now if its PUBACK came first."""
        with self._lock:
            early = self._early.pop(mid, None)
            if early is None:
                self._in_flight[mid] = record
            stale = time.monotonic() - self._stale_s
            for old in [m for m, (at, _) in self._early.items() if at < stale]:
                del self._early[old]
        if early is not None and record is not None:
            self._settle(record, is_refusal(early[1]), early[1])

    def acknowledged(self, mid: int, reason_code=None) -> None:
        """paho's ``on_publish``: the PUBACK of ``mid``."""
        with self._lock:
            if mid not in self._in_flight:
                self._early[mid] = (time.monotonic(), reason_code)
                return
            record = self._in_flight.pop(mid)
        if record is not None:
            self._settle(record, is_refusal(reason_code), reason_code)

    def forget(self) -> None:
        """After a disconnect whose in-flight records are sent again from their store anyway."""
        with self._lock:
            self._in_flight.clear()
            self._early.clear()

    def records(self) -> list:
        """The records whose PUBACK has not come."""
        with self._lock:
            return [record for record in self._in_flight.values() if record is not None]

    def __len__(self) -> int:
        with self._lock:
            return len(self._in_flight)
