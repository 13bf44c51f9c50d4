"""The identities' prototype index: exact search while the gallery is small, IVF (or HNSW)
above a size, with the search depth set so that recall@1 against exact search reaches
0.99 for every sighting the thresholds accept: measured when the index is built, on
sightings drawn from the gallery itself at cosines from the lowest threshold up to 1
(:meth:`PrototypeIndex._calibrate`), not assumed.

``auto`` takes IVF, not HNSW, for large galleries: half of a busy matcher's messages add
an identity, and an HNSW insertion at 1024-d costs about as much as a search where an IVF
one (the nearest of its lists, then an append) costs a small part of it (measured in
docs/benchmarks.md, "Edge pipeline and matcher"). Its lists grow with the gallery (about
``4 sqrt(n)``, :func:`ivf_lists`), and the index is trained again once the gallery has
grown fourfold since. The lists hold 8-bit scalar-quantised vectors (FAISS's
``IndexIVFScalarQuantizer``): a list scan, bound by memory, reads a quarter of the bytes,
and FAISS holds a quarter of the float gallery. The quantisation only chooses candidates: each is scored against its
float prototype. Where the prototypes span few directions, as a trained model's do, IVF
searches their projection on the leading ones (:func:`projection_for`).

FAISS provides the search structures; this module keeps them current as prototypes move
(every sighting moves its identity's prototype a little) at O(d) per update:

- the exact index's vectors are rewritten in place (removing and re-adding an id in a
  flat index compacts the whole array, O(gallery));
- HNSW and IVF cannot rewrite a vector, so a prototype that moved away from its indexed
  vector (cosine below ``REINDEX_BELOW``) is added again and the old entry is left stale,
  skipped by search; the index is rebuilt once stale entries pass a fifth of it. A small
  move (most updates: a prototype moves by at most ``1/n`` of a sighting) keeps its entry,
  which still finds the identity, and costs no insertion (an HNSW insertion at 1024-d
  costs about as much as a search).

Every candidate is re-scored exactly against the current prototype, so an approximate
index only decides which identities are looked at, never their similarity.
"""

from __future__ import annotations

import os

# FAISS searches a batch on every core with OpenMP, whose idle threads spin by default. A
# matcher shares its host with its database and often with other instances, whose cores
# spinning threads take (docs/benchmarks.md, "Several instances"). Read once, when FAISS
# loads OpenMP; an operator's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # noqa: E402  (after the setting above)
import numpy as np

from hybreid.errors import UserError
from hybreid.matcher.index_tuning import PROJECTION_SAMPLE, calibration_queries, cosine_between, projection_for
from hybreid.matcher.prototype_table import PrototypeTable

KINDS = ("auto", "flat", "hnsw", "ivf")
AUTO_EXACT_BELOW = 5_000  # identities; below this exact search takes about a millisecond at 1024-d
# The recall@1 the calibration sample must show in every band for the index to reach 0.99 on
# every sighting, not only on the sample: 0.99 on 250 sightings a band left a band at 0.985.
CALIBRATION_RECALL = 0.995
DEPTHS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)  # nprobe (IVF) or efSearch (HNSW), in order
HNSW_MIN_DEPTH = 16
IVF_MIN_LISTS = 64
IVF_POINTS_PER_LIST = 39  # FAISS's minimum training points per list
IVF_TRAIN_POINTS_PER_LIST = 128  # a sample: k-means on every point of 10^6 would take many minutes
IVF_TRAIN_ITERATIONS = 10
IVF_RETRAIN_GROWTH = 4  # train again once the gallery is this many times the trained size
STALE_SHARE = 0.2
EXACT_SLICE = 65_536  # identities per slice of an exact search over the whole gallery
REINDEX_BELOW = 0.995  # cosine between a prototype and its indexed vector
SHORTLIST = 32  # candidates an approximate index returns, scored exactly
# How far from its prototype a sighting may be and still be found: a trained ReID model's
# sightings of one person score about 0.8-0.95 against that person's prototype, and its
# 0.1 % false-match thresholds sit near 0.84 (the tiny HAResformer's: 0.848 / 0.837). The
# weakest true matches decide identities, so the depth is set for them; the matcher passes
# its policy's lowest threshold.
DEFAULT_QUERY_COSINE = 0.8


class _Rows:
    """Each FAISS row's identity, and whether it is its identity's current entry (one per
    identity; a moved prototype's old entry is stale), as arrays: a batch's candidates are
    read for every result of every query at once, which cost a fifth of a busy matcher's
    time row by row."""

    def __init__(self, ids: list[int]):
        self.count = len(ids)
        self.identity = np.zeros(max(self.count, 1024), dtype=np.int64)
        self.identity[: self.count] = ids
        self.current = np.zeros(len(self.identity), dtype=bool)
        self.current[: self.count] = True

    def append(self, identity: int) -> int:
        if self.count == len(self.identity):
            self.identity = np.concatenate([self.identity, np.zeros_like(self.identity)])
            self.current = np.concatenate([self.current, np.zeros_like(self.current)])
        row, self.count = self.count, self.count + 1
        self.identity[row], self.current[row] = identity, True
        return row

    def identities(self, rows: np.ndarray) -> list[list[int]]:
        """Per query, the identities of its current rows, in the order found (-1: no row)."""
        found = np.where(rows >= 0, rows, 0)
        keep = (rows >= 0) & self.current[found]
        identities = self.identity[found]
        return [identities[query][keep[query]].tolist() for query in range(len(rows))]


class PrototypeIndex:
    def __init__(self, kind: str = "flat", seed: int = 0, query_cosine: float = DEFAULT_QUERY_COSINE):
        if kind not in KINDS:
            raise UserError(f"index must be one of {', '.join(KINDS)}, got {kind!r}")
        if not 0.0 < query_cosine < 1.0:
            raise UserError(f"the index's query cosine must lie in (0, 1), got {query_cosine}")
        self.kind, self.seed, self.query_cosine = kind, seed, query_cosine
        self.prototypes = PrototypeTable()
        self.structure = "flat"  # what is built now: flat, hnsw or ivf
        self.depth: int | None = None
        self.recall_at_1: float | None = None  # measured on the gallery at the last build (approximate only)
        self._index: faiss.Index | None = None
        self._quantizer: faiss.Index | None = None
        self._rows = _Rows([])
        self._row_of: dict[int, int] = {}  # identity -> its current row
        self._stale = 0
        self._trained_for = 0  # gallery size the IVF lists were trained on
        self._projection: np.ndarray | None = None  # d x k: what IVF searches in (projection_for)

    @property
    def dim(self) -> int | None:
        return self.prototypes.dim

    def _structure_for(self, count: int) -> str:
        wanted = ("flat" if count < AUTO_EXACT_BELOW else "ivf") if self.kind == "auto" else self.kind
        if wanted == "ivf" and count < IVF_MIN_LISTS * IVF_POINTS_PER_LIST:  # too few vectors to train IVF's lists
            return "flat"
        return wanted

    def rebuild(self, prototypes: dict[int, np.ndarray]) -> None:
        ids = list(prototypes)
        matrix = np.stack([prototypes[i] for i in ids]).astype(np.float32, copy=False) if ids else None
        self.rebuild_from(ids, matrix)

    def rebuild_from(self, ids: list[int], matrix: np.ndarray | None) -> None:
        """Rebuild over ``matrix`` (one row per identity of ``ids``), which the index takes as its
        own: updates are written into it, so a gallery is held once here (4 GiB for 10^6
        identities at 1024-d) and once by FAISS, not once per copy made on the way."""
        self.prototypes = PrototypeTable(ids, matrix)
        self._build()

    def _build(self) -> None:
        """The search structure over the current prototypes, from scratch."""
        self._rows, self._row_of, self._stale = _Rows([]), {}, 0
        self.depth = self.recall_at_1 = None
        if not self.prototypes:
            self._index, self.structure = None, "flat"
            return
        count = len(self.prototypes)
        rng = np.random.default_rng(self.seed)
        self.structure = self._structure_for(count)
        self._projection = (projection_for(self.prototypes.sample(PROJECTION_SAMPLE, rng))
                            if self.structure == "ivf" else None)
        dim = self.prototypes.dim if self._projection is None else self._projection.shape[1]
        if self.structure == "flat":
            self._index = faiss.IndexFlatIP(dim)
        elif self.structure == "hnsw":
            self._index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
            self._index.hnsw.efConstruction = 80
        else:
            lists = ivf_lists(count)
            self._quantizer = faiss.IndexFlatIP(dim)  # held here: the IVF index does not own it
            self._index = faiss.IndexIVFScalarQuantizer(self._quantizer, dim, lists, faiss.ScalarQuantizer.QT_8bit,
                                                        faiss.METRIC_INNER_PRODUCT)
            self._index.cp.seed = self.seed
            self._index.cp.niter = IVF_TRAIN_ITERATIONS
            self._index.train(self._project(self.prototypes.sample(lists * IVF_TRAIN_POINTS_PER_LIST, rng)))
            self._trained_for = count
        ids: list[int] = []
        for chunk_ids, rows in self.prototypes.chunks():  # FAISS's rows in the table's order
            self._index.add(self._project(rows))
            ids += chunk_ids
        if self.structure == "ivf":
            self._index.make_direct_map()  # reconstruct(row): how far a prototype moved from its entry
        self._rows = _Rows(ids)
        self._row_of = {identity: row for row, identity in enumerate(ids)}
        if self.structure != "flat":
            self._calibrate(rng)

    def upsert_many(self, identities: list[int], vectors: np.ndarray) -> None:
        """Set these identities' prototypes (copied into the table; the last of a repeated
        identity wins); the entries to add go to FAISS in one call (a batch's new identities,
        or another instance's: added one at a time, they took a fifth of an instance's CPU
        under cProfile)."""
        given = dict(zip(identities, range(len(identities)), strict=True))
        ids = list(given)
        vectors = np.asarray(vectors, dtype=np.float32)[list(given.values())]
        self.prototypes.set_many(ids, vectors)
        if self._index is None:
            self._build()
            return
        projected = self._project(vectors)
        added: list[int] = []
        for position, identity in enumerate(ids):
            row = self._row_of.get(identity)
            if row is not None and self.structure == "flat":
                stored = faiss.rev_swig_ptr(self._index.get_xb(), self._index.ntotal * self._index.d)
                stored.reshape(self._index.ntotal, self._index.d)[row] = vectors[position]
                continue
            if row is not None:
                if cosine_between(self._index.reconstruct(row), projected[position]) >= REINDEX_BELOW:
                    continue
                self._stale += 1
                self._rows.current[row] = False
            added.append(position)
        if not added:
            return
        self._index.add(projected[added])
        for position in added:
            self._row_of[ids[position]] = self._rows.append(ids[position])
        outgrown = ((self.structure == "flat" and self._structure_for(len(self.prototypes)) != "flat")
                    or (self.structure == "ivf" and len(self.prototypes) > IVF_RETRAIN_GROWTH * self._trained_for))
        if self._stale > STALE_SHARE * self._rows.count or outgrown:
            self._build()

    def _project(self, vectors: np.ndarray) -> np.ndarray:
        projected = vectors if self._projection is None else vectors @ self._projection
        return np.ascontiguousarray(projected, dtype=np.float32)

    def search(self, vector: np.ndarray, k: int = 5) -> list[tuple[int, float]]:
        """Top-k ``(identity, cosine)``, scored exactly against the current prototypes."""
        (found,) = self.candidates(np.asarray(vector, dtype=np.float32)[None], k)
        return self.rank(vector, found, k)

    def candidates(self, vectors: np.ndarray, k: int = 5) -> list[list[int]]:
        """For each vector, the identities :meth:`search` would score (one FAISS call for all:
        a batch is searched on every core at once)."""
        if self._index is None or self._index.ntotal == 0 or len(vectors) == 0:
            return [[] for _ in range(len(vectors))]
        # An approximate index ranks its candidates by 8-bit codes of a projection (IVF) or walks a
        # graph (HNSW), and stale entries of one identity crowd them: it is asked for a shortlist,
        # scored exactly. Where people crowd a cone (a trained model's prototypes at cosines of 0.9
        # to each other), a shortlist of 4 k lost a twentieth of the exact top matches.
        wanted = min(self._index.ntotal, k if self.structure == "flat" else max(4 * k, SHORTLIST))
        _, rows = self._index.search(self._project(np.asarray(vectors, dtype=np.float32)), wanted)
        return self._rows.identities(rows)

    def rank(self, vector: np.ndarray, identities, k: int = 5,
             overrides: dict[int, np.ndarray] | None = None) -> list[tuple[int, float]]:
        """Top-k of ``identities`` by exact cosine with their current prototypes (``overrides``'
        first: a batch's prototypes before it commits)."""
        vector = np.asarray(vector, dtype=np.float32)
        ids = list(dict.fromkeys(identities))
        if not ids:
            return []
        # One gather and one product for a message's candidates (those of the search, the nearest
        # of the identities its batch created, any another instance wrote).
        slots = self.prototypes.slots(ids)
        scores = np.full(len(ids), -np.inf, dtype=np.float32)
        stored = slots >= 0
        if stored.any():
            scores[stored] = self.prototypes.gather(slots[stored]) @ vector
        for position in [p for p, identity in enumerate(ids) if identity in overrides] if overrides else ():
            scores[position] = overrides[ids[position]] @ vector
        order = np.argsort(-scores, kind="stable")[:k]
        return [(ids[i], float(scores[i])) for i in order if scores[i] > -np.inf]

    def exact_top(self, queries: np.ndarray) -> list[int]:
        """Each query's top identity by exact search over the current prototypes, a slice of
        the table at a time (a product with all of it at once would take as much memory again)."""
        queries = np.asarray(queries, dtype=np.float32)
        best = np.full(len(queries), -np.inf, dtype=np.float32)
        best_id = np.zeros(len(queries), dtype=np.int64)
        for chunk_ids, rows in self.prototypes.chunks():
            for start in range(0, len(chunk_ids), EXACT_SLICE):
                scores = queries @ rows[start:start + EXACT_SLICE].T
                top = scores.argmax(axis=1)
                value = scores[np.arange(len(queries)), top]
                better = value > best  # strictly: on a tie the earlier identity stays, as one argmax keeps it
                best[better] = value[better]
                best_id[better] = np.asarray(chunk_ids[start:start + EXACT_SLICE])[top[better]]
        return best_id.tolist()

    def measure_recall(self, queries: np.ndarray, exact: list[int]) -> float:
        """Share of queries whose top identity from this index is ``exact``'s (:meth:`exact_top`)."""
        found = [self.search(query, 1) for query in queries]
        return float(np.mean([bool(f) and f[0][0] == e for f, e in zip(found, exact, strict=True)]))

    def _calibrate(self, rng: np.random.Generator, per_band: int = 400, bands: int = 4) -> None:
        """The smallest search depth whose recall@1 against exact search reaches the target in
        every band of cosine from the weakest match the thresholds accept up to 1
        (:func:`calibration_queries`): where people crowd a cone, the sightings closest to
        their own prototype were found least often, not the weakest."""
        matrix = self.prototypes.sample(PROJECTION_SAMPLE, rng)  # the sightings' people and their drift
        edges = np.linspace(self.query_cosine, 1.0, bands + 1)
        banded = [calibration_queries(matrix, rng.uniform(low, high, per_band), per_band, rng)
                  for low, high in zip(edges[:-1], edges[1:], strict=True)]
        exact = [self.exact_top(queries) for queries in banded]
        deepest = self._index.nlist if self.structure == "ivf" else DEPTHS[-1]
        for depth in [d for d in DEPTHS if d <= deepest and (self.structure == "ivf" or d >= HNSW_MIN_DEPTH)]:
            self._set_depth(depth)
            self.depth = depth
            self.recall_at_1 = min(self.measure_recall(queries, top) for queries, top in zip(banded, exact,
                                                                                            strict=True))
            if self.recall_at_1 >= CALIBRATION_RECALL:
                return

    def _set_depth(self, depth: int) -> None:
        if self.structure == "hnsw":
            self._index.hnsw.efSearch = depth
        else:
            self._index.nprobe = depth


def default_threads() -> int:
    """A matcher's compute threads unless told: every core but one, which its MQTT thread, its
    broker and its database need. On 2 cores one FAISS thread searched a batch of 200 in 140 µs
    a query against 171 µs with two, and ingest rose from about 1,850 to about 2,050 messages a
    second at 10^5 identities (docs/benchmarks.md)."""
    return max(1, (os.cpu_count() or 1) - 1)


def limit_threads(threads: int) -> None:
    """How many threads FAISS (OpenMP) and NumPy's BLAS compute with in this process. Both
    pools wait for work spinning: three instances on two cores with a pool per core each
    spent twice one instance's CPU a message."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)


def ivf_lists(count: int) -> int:
    """IVF lists for ``count`` vectors: the power of two nearest ``4 sqrt(count)``, with enough
    vectors per list to train it."""
    wanted = 2 ** round(np.log2(4 * np.sqrt(count)))
    most = 2 ** int(np.log2(max(count // IVF_POINTS_PER_LIST, 1)))
    return int(max(min(wanted, most), 1))
