"""MQTT protocol v1: round trip and every rejection reason."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from hybreid import protocol
from hybreid.protocol import FeatureMessage, ProtocolError, decode_feature, encode_feature


def message(**changes) -> FeatureMessage:
    fields = dict(site="lobby", camera_id="cam-01", modality="infrared", ts=1763772000.125, seq=42, track_id=7,
                  box=(412, 96, 88, 231), score=0.91, model_name="haresformer_tiny", model_hash="3f9c0a7d1e22b410",
                  embedding=np.arange(1, 9, dtype=np.float32), quality=0.8, frames=14, first_ts=1763771998.5)
    fields.update(changes)
    return FeatureMessage(**fields)


def tamper(**changes) -> bytes:
    payload = json.loads(encode_feature(message()))
    payload.update(changes)
    return json.dumps(payload).encode()


def test_round_trip_normalises_the_embedding_and_keeps_every_field():
    original = message()
    decoded = decode_feature(encode_feature(original), topic="hybreid/v1/lobby/cam-01/features")
    assert (decoded.site, decoded.camera_id, decoded.modality, decoded.seq, decoded.track_id) == (
        "lobby", "cam-01", "infrared", 42, 7)
    assert decoded.box == (412.0, 96.0, 88.0, 231.0) and decoded.frames == 14 and decoded.first_ts == 1763771998.5
    assert decoded.model_identity == "haresformer_tiny@3f9c0a7d1e22b410"
    expected = original.embedding / np.linalg.norm(original.embedding)
    assert np.allclose(decoded.embedding, expected)


def test_payload_is_plain_json_with_base64_little_endian_values():
    payload = json.loads(encode_feature(message(dtype="float16")))
    assert payload["v"] == 1 and payload["dim"] == 8 and payload["dtype"] == "float16"
    values = np.frombuffer(base64.b64decode(payload["embedding"]), dtype="<f2")
    assert values.tolist() == list(range(1, 9))


def test_topics():
    assert protocol.features_topic("lobby", "cam-01") == "hybreid/v1/lobby/cam-01/features"
    assert protocol.status_topic("lobby", "cam-01") == "hybreid/v1/lobby/cam-01/status"
    assert protocol.events_topic("lobby") == "hybreid/v1/lobby/events"
    assert protocol.features_subscription() == "hybreid/v1/+/+/features"


@pytest.mark.parametrize(("data", "topic", "reason"), [
    (b"x" * (protocol.MAX_PAYLOAD_BYTES + 1), None, "too_large"),
    (b"\xff\xfe{}", None, "not_utf8"),
    (b'{"v": 1, "site": ', None, "invalid_json"),
    (b"[1, 2]", None, "schema"),
    (tamper(v=2), None, "version"),
    (tamper(camera_id="cam 01"), None, "schema"),
    (tamper(modality="thermal"), None, "schema"),
    (tamper(seq="42"), None, "schema"),
    (tamper(seq=True), None, "schema"),
    (tamper(box=[1, 2, 3]), None, "schema"),
    (tamper(model={"name": "m"}), None, "schema"),
    (tamper(dim=9), None, "dimension"),
    (tamper(dim=0), None, "dimension"),
    (tamper(embedding="not base64!"), None, "schema"),
    (tamper(embedding=base64.b64encode(np.array([np.nan] * 8, "<f4").tobytes()).decode()), None, "non_finite"),
    (tamper(embedding=base64.b64encode(np.zeros(8, "<f4").tobytes()).decode()), None, "non_finite"),
    (encode_feature(message()), "hybreid/v1/lobby/cam-02/features", "topic_mismatch"),
])
def test_rejections_name_their_reason(data, topic, reason):
    with pytest.raises(ProtocolError) as error:
        decode_feature(data, topic=topic)
    assert error.value.reason == reason


def test_infinite_timestamp_is_rejected():
    data = encode_feature(message()).replace(b'"ts":1763772000.125', b'"ts":1e999')
    with pytest.raises(ProtocolError) as error:
        decode_feature(data)
    assert error.value.reason == "non_finite"


def test_encoder_refuses_names_outside_the_topic_alphabet():
    with pytest.raises(ValueError, match="camera_id"):
        encode_feature(message(camera_id="cam/01"))


class TestEvents:
    """The events a consumer of ``hybreid/v1/{site}/events`` decodes, by their schema."""

    def test_every_kind_round_trips_through_its_schema(self):
        sent = [protocol.event(type="cross_modality_match", identity=3, site="lobby", camera_id="cam-01", seq=9,
                               track_id=4, modality="infrared", ts=1763772000.5, similarity=0.81),
                protocol.event(type="reassign", site="lobby", camera_id="cam-01", track_id=4, identity=5,
                               ts=1763772010.0, **{"from": 3}),
                protocol.event(type="merge", site="lobby", into=5, ts=1763772010.0, **{"from": 3})]
        decoded = [protocol.decode_event(protocol.encode_event(event)) for event in sent]
        assert [type(e).__name__ for e in decoded] == ["DecisionEvent", "ReassignEvent", "MergeEvent"]
        assert decoded[0].similarity == 0.81 and decoded[0].modality == "infrared"
        assert (decoded[1].from_identity, decoded[1].identity) == (3, 5)
        assert json.loads(protocol.encode_event(sent[2])) == {"v": 1, "site": "lobby", "ts": 1763772010.0,
                                                              "type": "merge", "from": 3, "into": 5}

    @pytest.mark.parametrize("payload,reason", [
        (b'{"v": 1, "type": "merge", "site": "lobby", "ts": 1.0, "from": 3}', "schema"),  # no "into"
        (b'{"v": 2, "type": "merge", "site": "lobby", "ts": 1.0, "from": 3, "into": 5}', "version"),
        (b'{"v": 1, "type": "teleport", "site": "lobby", "ts": 1.0}', "schema"),
        (b'{"v": 1, "type": "merge", "site": "<script>", "ts": 1.0, "from": 3, "into": 5}', "schema"),
        (b'{"v": 1, "type": "merge", "site": "lobby", "ts": 1.0, "from": 3, "into": 5, "x": 1}', "schema"),
        (b'{"v": 1, "type": "match", "identity": 1, "site": "l", "camera_id": "c", "seq": 1, "track_id": 1, '
         b'"modality": "visible", "ts": 1.0, "similarity": NaN}', "non_finite"),
        (b"{" + b" " * 5000 + b"}", "too_large"),
    ])
    def test_a_malformed_event_is_refused_with_its_reason(self, payload, reason):
        with pytest.raises(ProtocolError) as refused:
            protocol.decode_event(payload)
        assert refused.value.reason == reason

    def test_the_matcher_cannot_send_an_event_outside_the_schema(self):
        with pytest.raises(ProtocolError, match="similarity"):
            protocol.event(type="match", identity=1, site="lobby", camera_id="cam-01", seq=1, track_id=1,
                           modality="visible", ts=1.0, similarity=float("nan"))
