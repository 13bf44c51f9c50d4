"""The QoS 1 bookkeeping the edge's publisher and the matcher's events share."""

from __future__ import annotations

import threading

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from hybreid.mqtt.delivery import Deliveries

NOT_AUTHORIZED = ReasonCode(PacketTypes.PUBACK, identifier=0x87)
SUCCESS = ReasonCode(PacketTypes.PUBACK, identifier=0)


def recorder():
    settled = []
    return settled, Deliveries(lambda record, refused, reason: settled.append((record, refused)))


def test_a_puback_settles_its_record_once_and_a_refusal_says_so():
    settled, deliveries = recorder()
    deliveries.sent(1, ("cam1", 7))
    deliveries.sent(2, ("cam1", 8))
    assert sorted(deliveries.records()) == [("cam1", 7), ("cam1", 8)] and len(deliveries) == 2
    deliveries.acknowledged(1, SUCCESS)
    deliveries.acknowledged(2, NOT_AUTHORIZED)
    deliveries.acknowledged(2, SUCCESS)  # a duplicate PUBACK settles nothing more
    assert settled == [(("cam1", 7), False), (("cam1", 8), True)]
    assert len(deliveries) == 0


def test_a_puback_that_beats_publish_is_kept_until_the_record_is_known():
    settled, deliveries = recorder()
    deliveries.acknowledged(5, None)  # MQTT 3.1.1: no reason code
    assert settled == []
    deliveries.sent(5, ("cam2", 1))
    assert settled == [(("cam2", 1), False)] and len(deliveries) == 0


def test_an_unclaimed_early_puback_goes_stale_and_cannot_settle_a_later_record():
    settled, deliveries = recorder()
    deliveries._stale_s = 0.0  # every early PUBACK is stale at the next send
    deliveries.acknowledged(9, SUCCESS)
    deliveries.sent(10, ("cam1", 1))  # prunes the stale one
    deliveries.sent(9, ("cam1", 2))  # mid 9 reused: its PUBACK has not come yet
    assert settled == [] and len(deliveries) == 2


def test_a_none_record_absorbs_its_puback_and_forget_drops_everything():
    settled, deliveries = recorder()
    deliveries.sent(3, None)
    deliveries.acknowledged(3, SUCCESS)
    deliveries.sent(4, ("cam1", 1))
    deliveries.forget()
    deliveries.acknowledged(4, SUCCESS)  # after a disconnect: the outbox sends it again anyway
    assert settled == [] and deliveries.records() == []


def test_pubacks_from_another_thread_settle_every_record_exactly_once():
    settled, deliveries = recorder()
    mids = list(range(1, 2001))
    acker = threading.Thread(target=lambda: [deliveries.acknowledged(mid, SUCCESS) for mid in mids])
    acker.start()
    for mid in mids:
        deliveries.sent(mid, ("cam", mid))
    acker.join()
    assert sorted(record for record, _ in settled) == [("cam", mid) for mid in mids]
