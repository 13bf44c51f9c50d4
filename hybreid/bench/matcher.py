"""Matcher benchmark: ingest rate through a real Mosquitto broker, and assignment latency
at 10^3, 10^4 and 10^5 identities (synthetic unit vectors), and the index's recall@1
against exact search.

For each gallery size the gallery is pre-filled with that many identities, then a
publisher sends tracklet messages (half of them near an existing identity) through the
broker to the matcher service; ingest rate = messages processed per second end to end,
assignment time per message = a batch's validation + assignment + commit over its size.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

from hybreid.matcher.gallery import Gallery
from hybreid.matcher.service import Matcher, MatcherService, MatchPolicy
from hybreid.mqtt import BrokerConfig
from hybreid.mqtt.mosquitto import Mosquitto
from hybreid.protocol import FeatureMessage, encode_feature
from hybreid.tables import format_table


def _prefill(gallery: Gallery, identities: int, dim: int, rng) -> np.ndarray:
    """Insert ``identities`` identities directly (one sighting each), in bulk."""
    vectors = rng.standard_normal((identities, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with gallery.lock:
        gallery.db.execute("BEGIN")
        gallery.db.executemany(
            "INSERT INTO identities (id, created, last_seen, sightings, modalities, prototype) "
            "VALUES (?, 0, 0, 1, 'visible', ?)", [(i + 1, v.tobytes()) for i, v in enumerate(vectors)])
        gallery.db.executemany(
            "INSERT INTO sightings VALUES (?, ?, 'bench', ?, 'visible', 0, 0, '[0,0,1,1]', 1, 1, 1, 1, ?, 1, ?, "
            "'new')",
            [("prefill", i, i, i + 1, v.tobytes()) for i, v in enumerate(vectors)])
        gallery.db.execute("INSERT OR REPLACE INTO meta VALUES ('model', 'bench@0')")
        gallery.db.execute("COMMIT")
    gallery.rebuild_index()
    return vectors


def run(sizes: list[int], out: str | Path, messages: int = 2000, dim: int = 1024, index: str = "auto") -> list[dict]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    results = []
    for size in sizes:
        with tempfile.TemporaryDirectory() as work, Mosquitto(Path(work) / "broker") as broker:
            gallery = Gallery(Path(work) / "gallery.sqlite", index=index)
            known = _prefill(gallery, size, dim, rng)
            matcher = Matcher(gallery, MatchPolicy())
            latencies: list[float] = []  # per message: its batch's time over the batch's size
            batches: list[int] = []
            handle_batch = matcher.handle_batch

            def timed(messages, handle_batch=handle_batch, latencies=latencies, batches=batches):
                start = time.perf_counter()
                events = handle_batch(messages)
                latencies.extend([(time.perf_counter() - start) / len(messages)] * len(messages))
                batches.append(len(messages))
                return events

            matcher.handle_batch = timed
            service = MatcherService(matcher, BrokerConfig(url=broker.url, client_id="bench-matcher"), site="bench")
            service.start()
            service.wait_until_subscribed()
            payloads, vectors = [], []
            for seq in range(messages):
                base = known[rng.integers(size)] if seq % 2 == 0 else rng.standard_normal(dim)
                vector = base + 0.3 * rng.standard_normal(dim) / np.sqrt(dim)
                message = FeatureMessage(site="bench", camera_id=f"cam{seq % 8}", modality="visible",
                                         ts=1000.0 + seq, seq=seq // 8, track_id=seq, box=(0, 0, 40, 100),
                                         score=0.9, model_name="bench", model_hash="0",
                                         embedding=vector.astype(np.float32), first_ts=999.0 + seq)
                payloads.append((message.topic, encode_feature(message)))
                vectors.append(vector / np.linalg.norm(vector))
            publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-publisher")
            publisher.max_inflight_messages_set(100)
            publisher.connect("127.0.0.1", broker.port)
            publisher.loop_start()
            start = time.perf_counter()
            for topic, payload in payloads:
                publisher.publish(topic, payload, qos=1)
            deadline = time.monotonic() + 600
            while matcher.accepted < messages and time.monotonic() < deadline:
                time.sleep(0.01)
            elapsed = time.perf_counter() - start
            publisher.disconnect()
            publisher.loop_stop()
            service.stop()
            stats = gallery.stats()
            queries = np.stack(vectors[:500])
            recall = gallery.index.measure_recall(queries, gallery.index.exact_top(queries))
            gallery.close()
        lat = np.array(latencies) * 1000
        results.append({"identities": size, "index": index, "structure": stats["index"]["structure"],
                        "search_depth": stats["index"]["search_depth"], "messages": matcher.accepted,
                        "seconds": elapsed, "ingest_per_s": matcher.accepted / elapsed,
                        "assign_p50_ms": float(np.percentile(lat, 50)), "assign_p99_ms": float(np.percentile(lat, 99)),
                        "recall_at_1": recall, "mean_batch": float(np.mean(batches)),
                        "new_identities": stats["identities"] - size})
    rows = [[r["identities"], f"{r['index']} ({r['structure']}{'' if r['search_depth'] is None else ', depth '}"
             f"{'' if r['search_depth'] is None else r['search_depth']})", r["messages"], r["ingest_per_s"],
             r["mean_batch"], r["assign_p50_ms"], r["assign_p99_ms"], r["recall_at_1"], r["new_identities"]]
            for r in results]
    print(format_table(["identities", "index", "messages", "ingest msg/s", "mean batch", "assign ms/msg p50",
                        "assign ms/msg p99", "recall@1 vs exact", "new identities"], rows, floatfmt=".3f",
                       title=f"matcher through Mosquitto, {dim}-d embeddings"))
    (out / "matcher.json").write_text(json.dumps(results, indent=2))
    print(f"saved {out / 'matcher.json'}")
    return results
