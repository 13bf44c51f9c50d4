"""The matcher's Prometheus metrics (`matcher run --metrics-port`).

Counters and gauges are read from the service's own figures when Prometheus scrapes (a
custom collector: nothing is counted twice); the two latency histograms are fed by the
matcher after each batch. Names and units follow Prometheus's conventions: ``_total`` for
counters, seconds for time.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from hybreid.matcher.service import MatcherService

BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MESSAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5)


class MatcherMetrics(Collector):
    def __init__(self, service: MatcherService):
        self.service = service
        self.registry = CollectorRegistry()
        self.batch_seconds = Histogram("hybreid_matcher_batch_duration_seconds",
                                       "Time to decide and commit one batch of messages", buckets=BATCH_BUCKETS,
                                       registry=self.registry)
        self.message_seconds = Histogram("hybreid_matcher_assignment_duration_seconds",
                                         "Time to decide one message (its batch's time over the batch's size)",
                                         buckets=MESSAGE_BUCKETS, registry=self.registry)
        self.registry.register(self)
        service.matcher.on_batch = self._observe_batch

    def _observe_batch(self, seconds: float, messages: int) -> None:
        self.batch_seconds.observe(seconds)
        for _ in range(messages):
            self.message_seconds.observe(seconds / messages)

    def collect(self):
        service = self.service
        matcher = service.matcher

        def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"hybreid_matcher_{name}", documentation, value=value)

        def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"hybreid_matcher_{name}", documentation, value=value)

        yield counter("messages_accepted", "Feature messages decided and stored", matcher.accepted)
        yield counter("messages_duplicate", "Messages already stored (redelivered), answered again",
                      matcher.duplicates)
        rejected = CounterMetricFamily("hybreid_matcher_messages_rejected", "Messages refused, by reason",
                                       labels=["reason"])
        for reason, count in sorted(matcher.rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield counter("messages_decided_again", "Messages decided again after another instance's commit",
                      matcher.decided_again)
        yield counter("batches", "Batches decided", matcher.batches)
        yield counter("busy_seconds", "Time spent deciding batches", matcher.busy_seconds)
        yield counter("internal_errors", "Failures of the matcher's own code (a bug; see the log)",
                      service.internal_errors)
        yield counter("reassociations", "Re-association rounds", service.reassociations)
        yield counter("reassociation_seconds", "Time spent re-associating", service.reassociation_seconds)
        yield counter("identities_merged", "Identities merged into others by re-association",
                      service.identities_merged)
        yield gauge("identities", "Identities in this instance's index", len(matcher.gallery.prototypes))
        yield gauge("broker_connected", "1 while connected to the broker", float(service.connected.is_set()))
        yield gauge("store_up", "1 while the gallery's database answers", float(not service.store_unavailable))
        yield gauge("lag_seconds", "Capture time of the newest decided sighting, behind the clock",
                    float("nan") if matcher.lag_s is None else matcher.lag_s)
        yield gauge("inbox_messages", "Messages received and waiting to be decided", service.counters()["inbox"])

    def alive(self) -> str | None:
        return None if self.service.deciding else "the matcher's worker thread is not running"

    def ready(self) -> str | None:
        if not self.service.connected.is_set():
            return f"no connection to the broker at {self.service.broker.url}"
        if self.service.store_unavailable:
            return "the gallery's database does not answer"
        return None
