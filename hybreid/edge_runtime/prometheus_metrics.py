"""The edge box's Prometheus metrics (`edge run --metrics-port`), read from the runtime's own
counters when Prometheus scrapes (a custom collector: nothing is counted twice). Frames a
second are ``rate(hybreid_edge_frames_total[1m])``; the embedder's mean latency is
``rate(hybreid_edge_embed_seconds_total[1m]) / rate(hybreid_edge_embed_batches_total[1m])``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from hybreid.edge_runtime.runtime import EdgeRuntime


class EdgeMetrics(Collector):
    def __init__(self, runtime: EdgeRuntime):
        self.runtime = runtime
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def collect(self):
        runtime = self.runtime
        metrics, worker, publisher, outbox = runtime.metrics, runtime.worker, runtime.publisher, runtime.outbox

        def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"hybreid_edge_{name}", documentation, value=value)

        def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"hybreid_edge_{name}", documentation, value=value)

        frames = CounterMetricFamily("hybreid_edge_frames", "Frames read from the camera", labels=["camera"])
        dropped = CounterMetricFamily("hybreid_edge_frames_dropped", "Frames dropped: read while the last was "
                                      "still waiting to be processed", labels=["camera"])
        reconnects = CounterMetricFamily("hybreid_edge_camera_reconnects", "Times the camera's stream was opened "
                                         "again", labels=["camera"])
        up = GaugeMetricFamily("hybreid_edge_camera_up", "1 while the camera delivers frames", labels=["camera"])
        quiet_after, now = runtime.settings.metrics.no_frames_after_s, time.monotonic()
        for capture in runtime.captures:
            camera = [capture.config.id]
            frames.add_metric(camera, capture.frames_read)
            dropped.add_metric(camera, capture.frames_dropped)
            reconnects.add_metric(camera, capture.reconnects)
            delivering = capture.last_frame_at is not None and now - capture.last_frame_at < quiet_after
            up.add_metric(camera, float(delivering and not capture.done))
        yield from (frames, dropped, reconnects, up)
        yield counter("frames_processed", "Frames detected and tracked, all cameras", metrics.frames)
        yield counter("detections", "Person boxes detected, all cameras", metrics.detections)
        yield counter("detect_seconds", "Time spent detecting", metrics.seconds["detect"])
        yield counter("track_seconds", "Time spent tracking", metrics.seconds["track"])
        yield counter("crops", "Person crops sent to the embedder", metrics.crops)
        yield counter("embed_batches", "Batches the embedder ran", worker.batches)
        yield counter("embed_seconds", "Time spent embedding", worker.embed_seconds)
        yield counter("tracklets_published", "Tracklet features stored for publishing", metrics.tracklets)
        yield counter("mqtt_published", "Feature messages sent to the broker", publisher.published)
        yield counter("mqtt_acknowledged", "Feature messages the broker acknowledged", publisher.acknowledged)
        yield counter("mqtt_refused", "Feature messages the broker refused (MQTT 5 reason code)", publisher.refused)
        yield counter("mqtt_disconnects", "Connections to the broker lost", publisher.disconnects)
        yield gauge("broker_connected", "1 while connected to the broker", float(publisher.connected))
        if outbox.closed:  # the runtime has stopped; what it counted is still served
            return
        yield gauge("outbox_records", "Records waiting in the outbox for the broker's acknowledgement",
                    outbox.depth())
        oldest = outbox.oldest_created()
        yield gauge("outbox_oldest_age_seconds", "Age of the oldest record waiting in the outbox (0: none waits)",
                    0.0 if oldest is None else max(time.time() - oldest, 0.0))

    def alive(self) -> str | None:
        if self.runtime.worker.error is not None:
            return f"the embedder stopped ({self.runtime.worker.error})"
        return None

    def ready(self) -> str | None:
        problem = self.alive()
        if problem is None and not self.runtime.publisher.connected:
            problem = f"no connection to the broker at {self.runtime.config.broker.url}"
        return problem
