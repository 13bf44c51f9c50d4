"""How fast the console answers on a large gallery: ``identities`` identities (the matcher
benchmark's bulk load), then a real matcher decides ``sightings`` tracklets from eight
cameras over an hour, and every page and API call is timed over HTTP against a console
served by uvicorn in this process. A table and a JSON of each answer's median and 95th
percentile in milliseconds.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import uvicorn
from tqdm import tqdm

from hybreid.bench.sightings import EmbeddingGeometry, SightingModel
from hybreid.console.app import create_app
from hybreid.console.reads import ConsoleReads
from hybreid.lab.mosquitto import free_port
from hybreid.matcher.assignment import Matcher
from hybreid.matcher.gallery import Gallery
from hybreid.matcher.policy import MatchPolicy
from hybreid.protocol import FeatureMessage, encode_feature
from hybreid.tables import format_table

CAMERAS = 8
START = 1_765_000_000.0  # the site's first hour
PATHS = ("/", "/identities", "/identities?page=1000", "/identities/{known}", "/api/overview",
         "/api/identities?page=500", "/api/identities/{known}", "/api/counts?camera=cam3",
         "/api/counts?camera=cam3&since=2025-12-06T05:50:00Z&until=2025-12-06T06:10:00Z",
         "/api/sightings?camera=cam5&since=2025-12-06T06:00:00Z", "/api/merges")


def _fill(gallery: Gallery, identities: int, sightings: int, dim: int) -> int:
    """Returns an identity seen by several cameras (the identity page's subject)."""
    geometry = EmbeddingGeometry.load()
    model = SightingModel(geometry, dim, np.random.default_rng(0))
    prototypes = np.concatenate([model.prototypes(min(50_000, identities - start))
                                 for start in range(0, identities, 50_000)])
    with gallery.lock:
        gallery.store.bulk_load_prototypes(prototypes, site="bench", model="bench@0")
    gallery.rebuild_index()
    matcher = Matcher(gallery, MatchPolicy.checked(same_modality=geometry.same_modality_threshold,
                                                   cross_modality=geometry.cross_modality_threshold))
    rng = np.random.default_rng(1)
    people = rng.integers(len(prototypes), size=sightings)
    vectors = model.sightings(prototypes[people], model.genuine_cosines(sightings))
    batch = []
    for seq, vector in enumerate(tqdm(vectors, desc="deciding the sightings", unit="message")):
        ts = START + 3600.0 * seq / sightings
        message = FeatureMessage(site="bench", camera_id=f"cam{seq % CAMERAS}", modality="visible", ts=ts, seq=seq,
                                 track_id=seq, box=(0, 0, 40, 100), score=0.9, model_name="bench", model_hash="0",
                                 embedding=vector, first_ts=ts - 4.0)
        batch.append((message.topic, encode_feature(message)))
        if len(batch) == 200:
            matcher.handle_batch(batch)
            batch = []
    if batch:
        matcher.handle_batch(batch)
    counts = gallery.store.cameras_by_identity(sorted({int(i) + 1 for i in people[:200]}))
    return max(counts, key=lambda identity: len(counts[identity]))


def run(identities: int, sightings: int, out: str | Path, repeats: int = 20, dim: int = 1024) -> list[dict]:
    from urllib.request import urlopen

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "gallery.sqlite"
        gallery = Gallery(path)
        known = _fill(gallery, identities, sightings, dim)
        gallery.close()
        reads = ConsoleReads(path)
        server = uvicorn.Server(uvicorn.Config(create_app(reads), host="127.0.0.1", port=free_port(),
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        try:
            base = f"http://127.0.0.1:{server.config.port}"
            for path_template in tqdm(PATHS, desc="timing the console", unit="page"):
                url = base + path_template.format(known=known)
                times = []
                for _ in range(repeats + 1):  # the first warms the store's cache, untimed
                    started = time.perf_counter()
                    with urlopen(url, timeout=60) as response:
                        size = len(response.read())
                        status = response.status
                    times.append(time.perf_counter() - started)
                milliseconds = 1000 * np.array(times[1:])
                rows.append({"path": path_template.format(known=known), "status": status, "bytes": size,
                             "p50_ms": float(np.percentile(milliseconds, 50)),
                             "p95_ms": float(np.percentile(milliseconds, 95))})
        finally:
            server.should_exit = True
            thread.join()
            reads.close()
    print(format_table(["path", "status", "bytes", "p50 ms", "p95 ms"], [list(r.values()) for r in rows],
                       f"the console on a gallery of {identities} identities and {identities + sightings} sightings "
                       f"({repeats} requests a page)", floatfmt=".1f"))
    (out / "console.json").write_text(json.dumps({"identities": identities, "sightings": identities + sightings,
                                                  "repeats": repeats, "pages": rows}, indent=2))
    print(f"saved {out / 'console.json'}")
    return rows
