"""Matcher benchmark: ingest rate through a real Mosquitto broker, assignment latency and the
index's recall@1 against exact search, by gallery size, store (SQLite, PostgreSQL) and
number of matcher instances, on embeddings like a trained model's
(:mod:`hybreid.bench.sightings`).

For each gallery size the gallery is pre-filled with that many identities, then a
publisher sends tracklet messages through the broker: half are sightings of a known
identity at a cosine drawn from the model's genuine scores, half are new people. The
matcher runs with the model's 0.1 % false-match thresholds and its index searches deep
enough for a sighting at the lowest of them. Ingest rate = messages stored per second end
to end. One instance runs in this process, so each batch is timed (assignment time per
message = a batch's validation + assignment + commit over its size); several instances are
``hybreid matcher run`` processes in one MQTT v5 shared-subscription group over one
PostgreSQL gallery, timed by their ingest alone. PostgreSQL is a throwaway server started
for the run (Debian's package). After each run the index's recall@1 against exact search
is measured per band of genuine cosine, on sightings drawn uniformly in each band. A table,
JSON and a PNG of ingest rate by gallery size.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hybreid.bench.sightings import EmbeddingGeometry, SightingModel
from hybreid.lab.mosquitto import Mosquitto
from hybreid.lab.postgres_server import PostgresServer
from hybreid.matcher.assignment import Matcher
from hybreid.matcher.gallery import Gallery
from hybreid.matcher.index import default_threads, limit_threads
from hybreid.matcher.policy import MatchPolicy
from hybreid.matcher.service import MatcherService
from hybreid.mqtt import BrokerConfig
from hybreid.protocol import FeatureMessage, encode_feature
from hybreid.tables import format_table

BAND_EDGES = (0.70, 0.75, 0.80, 0.90, 0.95, 1.0)  # and the operating threshold
BAND_QUERIES = 400


def _prefill(gallery: Gallery, identities: int, sightings: SightingModel) -> np.ndarray:
    """Insert ``identities`` identities directly (one sighting each), in bulk."""
    vectors = np.concatenate([sightings.prototypes(min(50_000, identities - start))
                              for start in range(0, identities, 50_000)])
    with gallery.lock:
        gallery.store.bulk_load_prototypes(
            vectors, site="bench", model="bench@0",
            progress=lambda chunks: tqdm(chunks, desc=f"filling the {gallery.store.dialect} gallery", unit="chunk",
                                         leave=False))
    gallery.rebuild_index()
    return vectors


def _stream(known: np.ndarray, messages: int, sightings: SightingModel) -> tuple[list[tuple[str, bytes]], np.ndarray]:
    """Messages: even ones a sighting of a known identity at a genuine cosine, odd ones a new person."""
    picked = sightings.rng.integers(len(known), size=(messages + 1) // 2)
    seen = sightings.sightings(known[picked], sightings.genuine_cosines(len(picked)))
    new = sightings.prototypes(messages // 2)
    vectors = np.empty((messages, known.shape[1]), dtype=np.float32)
    vectors[0::2], vectors[1::2] = seen, new
    payloads = []
    for seq, vector in enumerate(vectors):
        message = FeatureMessage(site="bench", camera_id=f"cam{seq % 8}", modality="visible",
                                 ts=1000.0 + seq, seq=seq // 8, track_id=seq, box=(0, 0, 40, 100),
                                 score=0.9, model_name="bench", model_hash="0",
                                 embedding=vector, first_ts=999.0 + seq)
        payloads.append((message.topic, encode_feature(message)))
    return payloads, vectors


def recall_by_band(gallery: Gallery, sightings: SightingModel, known: int, edges: list[float]) -> list[dict]:
    """Per band of genuine cosine: recall@1 of the index against exact search, and how often
    exact search itself ranks the sighting's own identity first (what the data allows)."""
    index = gallery.index
    rows = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        ids = sightings.rng.integers(1, known + 1, size=BAND_QUERIES)
        prototypes = np.stack([index.prototypes[int(i)] for i in ids])
        queries = sightings.sightings(prototypes, sightings.rng.uniform(low, high, size=BAND_QUERIES))
        exact = index.exact_top(queries)
        rows.append({"band": [round(low, 3), round(high, 3)], "queries": BAND_QUERIES,
                     "recall_at_1": index.measure_recall(queries, exact),
                     "own_identity_first": float(np.mean(np.asarray(exact) == ids))})
    return rows


class _Publisher:
    """The cameras: a process of its own that publishes the stream (QoS 1, at most 100 in
    flight), so its MQTT client does not share the matcher's interpreter (and lock), as no
    camera does. It connects first and publishes when told to, so the clock starts with the
    first message, not with the process."""

    CODE = """
import pickle, sys
import paho.mqtt.client as mqtt
payloads = pickle.load(open(sys.argv[2], "rb"))
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-publisher")
client.max_inflight_messages_set(100)
client.connect("127.0.0.1", int(sys.argv[1]))
client.loop_start()
print("connected", flush=True)
sys.stdin.readline()
infos = [client.publish(topic, payload, qos=1) for topic, payload in payloads]
for info in infos:
    info.wait_for_publish(600)
client.disconnect()
client.loop_stop()
"""

    def __init__(self, port: int, payloads: list[tuple[str, bytes]], work: Path):
        stream = work / "stream.pickle"
        stream.write_bytes(pickle.dumps(payloads))
        self.process = subprocess.Popen([sys.executable, "-c", self.CODE, str(port), str(stream)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.process.stdout.readline().strip() != "connected":
            raise RuntimeError("the benchmark's publisher could not connect to the broker")

    def go(self) -> None:
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def _in_process(gallery: Gallery, broker: Mosquitto, payloads: list, work: Path, policy: MatchPolicy) -> dict:
    """One matcher service in this process, each batch timed."""
    matcher = Matcher(gallery, policy)
    latencies: list[float] = []  # per message: its batch's time over the batch's size
    batches: list[int] = []
    handle_batch = matcher.handle_batch

    def timed(messages):
        start = time.perf_counter()
        events = handle_batch(messages)
        latencies.extend([(time.perf_counter() - start) / len(messages)] * len(messages))
        batches.append(len(messages))
        return events

    matcher.handle_batch = timed
    service = MatcherService(matcher, BrokerConfig(url=broker.url, client_id="bench-matcher"), site="bench")
    service.start()
    service.wait_until_subscribed()
    publisher = _Publisher(broker.port, payloads, work)
    start = time.perf_counter()
    publisher.go()
    deadline = time.monotonic() + 900
    while matcher.accepted < len(payloads) and time.monotonic() < deadline:
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    publisher.stop()
    service.stop()
    lat = np.array(latencies) * 1000
    return {"messages": matcher.accepted, "seconds": elapsed, "assign_p50_ms": float(np.percentile(lat, 50)),
            "assign_p99_ms": float(np.percentile(lat, 99)), "mean_batch": float(np.mean(batches)),
            "locked_share": gallery.locked_seconds / (lat.sum() / 1000),
            "decided_again": matcher.decided_again / max(matcher.accepted, 1)}


def _processes(gallery: Gallery, broker: Mosquitto, payloads: list, instances: int, index: str,
               prefilled: int, work: Path, thresholds: Path) -> dict:
    """``instances`` ``hybreid matcher run`` processes in one shared-subscription group."""
    # The host's cores shared out, as an operator would (`matcher run --threads`).
    threads = max(1, (os.cpu_count() or 1) // instances)
    command = [sys.executable, "-m", "hybreid.cli", "matcher", "run", "--broker", broker.url, "--db",
               gallery.store.db.url, "--site", "bench", "--shared-group", "bench", "--protocol", "5", "--index", index,
               "--reassociate-every", "0", "--report-every", "3600", "--threads", str(threads),
               "--thresholds", str(thresholds)]
    processes = [subprocess.Popen([*command, "--client-id", f"bench-matcher-{i}"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for i in range(instances)]
    counters: list[dict] = []  # each instance's, logged as it stops
    readers: list[threading.Thread] = []
    try:
        for process in processes:  # all subscribed before the first message: a shared group keeps no backlog
            _wait_subscribed(process)
            counters.append({})
            readers.append(threading.Thread(target=_keep_counters, args=(process.stderr, counters[-1]), daemon=True))
            readers[-1].start()

        def stored() -> int:
            return gallery.store.counts()[0] - prefilled

        publisher = _Publisher(broker.port, payloads, work)
        start = time.perf_counter()
        publisher.go()
        deadline = time.monotonic() + 900
        while stored() < len(payloads) and time.monotonic() < deadline:
            time.sleep(0.02)
        elapsed = time.perf_counter() - start
        publisher.stop()
        measured = {"messages": stored(), "seconds": elapsed}
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(60)
        for reader in readers:
            reader.join(10)
    if len(counters) == instances and all(counters):
        total = {key: sum(c[key] for c in counters) for key in ("accepted", "duplicates", "decided_again", "batches",
                                                                  "busy_seconds", "locked_seconds")}
        measured["mean_batch"] = (total["accepted"] + total["duplicates"]) / max(total["batches"], 1)
        measured["locked_share"] = total["locked_seconds"] / max(total["busy_seconds"], 1e-9)
        measured["decided_again"] = total["decided_again"] / max(total["accepted"], 1)
    return measured


def _wait_subscribed(process: subprocess.Popen, timeout: float = 600) -> None:
    """Until the process logs its subscription (it loads its index first)."""
    deadline = time.monotonic() + timeout
    for line in process.stderr:
        if "subscribed to" in line:
            return
        if time.monotonic() > deadline:
            break
    raise RuntimeError("a matcher process did not subscribe; run it by hand to see why")


def _keep_counters(log, counters: dict) -> None:
    """Drain a matcher process's log (a full pipe would stop it), keeping the counters it logs
    as it stops."""
    for line in log:
        if "matcher stopped: " in line:
            counters.update(json.loads(line.split("matcher stopped: ", 1)[1]))


def run(sizes: list[int], out: str | Path, messages: int = 2000, dim: int = 1024, index: str = "auto",
        stores: tuple[str, ...] = ("sqlite",), instances: tuple[int, ...] = (1,),
        geometry: EmbeddingGeometry | None = None) -> list[dict]:
    """``instances``: with PostgreSQL, also this many ``matcher run`` processes (1 runs in-process
    too, for its assignment latency). ``geometry``: how the embeddings spread (by default the
    one measured on the tiny HAResformer, :mod:`hybreid.bench.sightings`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    limit_threads(default_threads())  # the in-process instance computes as `matcher run` does by default
    geometry = geometry or EmbeddingGeometry.load()
    sightings = SightingModel(geometry, dim, np.random.default_rng(0))
    results = []
    with tempfile.TemporaryDirectory() as work, \
            (PostgresServer(Path(work) / "postgres") if "postgresql" in stores else nullcontext()) as server:
        for size in sizes:
            for store in stores:
                modes = [("in-process", 1)]
                if store == "postgresql":
                    modes += [("processes", n) for n in instances]
                for mode, count in modes:
                    results.append(_one_run(work, server, store, size, mode, count, messages, index, sightings))
    _print_and_save(results, out, dim, geometry)
    return results


def _one_run(work: str, server, store: str, size: int, mode: str, count: int, messages: int, index: str,
             sightings: SightingModel) -> dict:
    geometry = sightings.geometry
    policy = MatchPolicy.checked(same_modality=geometry.same_modality_threshold,
                                 cross_modality=geometry.cross_modality_threshold)
    run_dir = Path(tempfile.mkdtemp(dir=work))
    thresholds = run_dir / "thresholds.json"
    thresholds.write_text(json.dumps({"same_modality": {"threshold": policy.same_modality},
                                      "cross_modality": {"threshold": policy.cross_modality}}))
    location = server.new_database() if store == "postgresql" else run_dir / "gallery.sqlite"
    with Mosquitto(run_dir / "broker") as broker:
        gallery = Gallery(location, index=index, query_cosine=geometry.operating_cosine)
        known = _prefill(gallery, size, sightings)
        payloads, vectors = _stream(known, messages, sightings)
        if mode == "in-process":
            measured = _in_process(gallery, broker, payloads, run_dir, policy)
        else:
            measured = _processes(gallery, broker, payloads, count, index, size, run_dir, thresholds)
        gallery.refresh()
        stats = gallery.stats()
        queries = vectors[:500]
        recall = gallery.index.measure_recall(queries, gallery.index.exact_top(queries))
        edges = sorted({*BAND_EDGES, round(geometry.operating_cosine, 3)})
        bands = recall_by_band(gallery, sightings, size, edges)
        gallery.close()
    at_threshold = [b for b in bands if b["band"][0] >= round(geometry.operating_cosine, 3)]
    return {"store": store, "instances": count, "mode": mode, "identities": size, "index": index,
            "structure": stats["index"]["structure"], "search_depth": stats["index"]["search_depth"],
            **measured, "ingest_per_s": measured["messages"] / measured["seconds"], "recall_at_1": recall,
            "recall_at_or_above_threshold": min(b["recall_at_1"] for b in at_threshold),
            "recall_by_band": bands, "operating_cosine": geometry.operating_cosine,
            "new_identities": stats["identities"] - size}


def _print_and_save(results: list[dict], out: Path, dim: int, geometry: EmbeddingGeometry) -> None:
    def index_label(r: dict) -> str:
        depth = "" if r["search_depth"] is None else f", depth {r['search_depth']}"
        return f"{r['index']} ({r['structure']}{depth})"

    rows = [[r["store"], f"{r['instances']} ({r['mode']})", r["identities"], index_label(r), r["messages"],
             r["ingest_per_s"], r.get("mean_batch", float("nan")), r.get("assign_p50_ms", float("nan")),
             r.get("assign_p99_ms", float("nan")), r.get("locked_share", float("nan")),
             r.get("decided_again", float("nan")), r["recall_at_1"], r["recall_at_or_above_threshold"],
             r["new_identities"]] for r in results]
    print(format_table(["store", "instances", "identities", "index", "messages", "ingest msg/s", "mean batch",
                        "assign ms/msg p50", "assign ms/msg p99", "share locked", "decided again",
                        "recall@1 vs exact", "recall@1 >= threshold", "new identities"], rows,
                       floatfmt=".3f", title=f"matcher through Mosquitto, {dim}-d embeddings spread like "
                                         f"{geometry.model}'s, thresholds {geometry.same_modality_threshold} / "
                                         f"{geometry.cross_modality_threshold}"))
    bands = [[r["store"], f"{r['instances']} ({r['mode']})", r["identities"], index_label(r),
              f"{b['band'][0]:.3f}-{b['band'][1]:.3f}", b["recall_at_1"], b["own_identity_first"]]
             for r in results for b in r["recall_by_band"]]
    print(format_table(["store", "instances", "identities", "index", "genuine cosine", "recall@1 vs exact",
                        "own identity first (exact)"], bands, floatfmt=".3f",
                       title="recall@1 by genuine cosine (sightings drawn uniformly in each band)"))
    (out / "matcher.json").write_text(json.dumps({"geometry": geometry.model_dump(), "runs": results}, indent=2))
    _plot(results, out / "matcher.png")
    print(f"saved {out / 'matcher.json'} and {out / 'matcher.png'}")


def _plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[tuple[int, float]]] = {}
    for r in results:
        series.setdefault(f"{r['store']}, {r['instances']} ({r['mode']})", []).append(
            (r["identities"], r["ingest_per_s"]))
    for label, points in series.items():
        points.sort()
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    axis.set(xscale="log", xlabel="identities in the gallery", ylabel="ingest, messages/s",
             title="matcher ingest through Mosquitto", ylim=(0, None))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
