"""The identities' prototype index: exact search while the gallery is small, HNSW (or IVF)
above a size, with the search depth set so that recall@1 against exact search reaches
0.99 on the gallery itself: measured when the index is built, not assumed.

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

import faiss
import numpy as np

from hybreid.errors import UserError

KINDS = ("auto", "flat", "hnsw", "ivf")
AUTO_EXACT_BELOW = 5_000  # identities; below this exact search takes about a millisecond at 1024-d
TARGET_RECALL = 0.99
DEPTHS = (16, 32, 64, 128, 256, 512, 1024, 2048)  # efSearch (HNSW) or nprobe (IVF), tried in order
IVF_LISTS = 64
STALE_SHARE = 0.2
REINDEX_BELOW = 0.995  # cosine between a prototype and its indexed vector


class PrototypeIndex:
    def __init__(self, kind: str = "flat", seed: int = 0):
        if kind not in KINDS:
            raise UserError(f"index must be one of {', '.join(KINDS)}, got {kind!r}")
        self.kind, self.seed = kind, seed
        self.prototypes: dict[int, np.ndarray] = {}
        self.structure = "flat"  # what is built now: flat, hnsw or ivf
        self.depth: int | None = None
        self.recall_at_1: float | None = None  # measured on the gallery at the last build (approximate only)
        self._index: faiss.Index | None = None
        self._quantizer: faiss.Index | None = None
        self._row_ids: list[int] = []  # row -> identity
        self._row_of: dict[int, int] = {}  # identity -> its current row
        self._stale = 0

    @property
    def dim(self) -> int | None:
        return next(iter(self.prototypes.values())).size if self.prototypes else None

    def _structure_for(self, count: int) -> str:
        wanted = ("flat" if count < AUTO_EXACT_BELOW else "hnsw") if self.kind == "auto" else self.kind
        if wanted == "ivf" and count < IVF_LISTS * 39:  # too few vectors to train IVF's lists
            return "flat"
        return wanted

    def rebuild(self, prototypes: dict[int, np.ndarray]) -> None:
        self.prototypes = {identity: np.asarray(v, dtype=np.float32) for identity, v in prototypes.items()}
        self._row_ids, self._row_of, self._stale = [], {}, 0
        self.depth = self.recall_at_1 = None
        if not self.prototypes:
            self._index, self.structure = None, "flat"
            return
        ids = list(self.prototypes)
        matrix = np.stack([self.prototypes[i] for i in ids])
        self.structure = self._structure_for(len(ids))
        dim = matrix.shape[1]
        if self.structure == "flat":
            self._index = faiss.IndexFlatIP(dim)
        elif self.structure == "hnsw":
            self._index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
            self._index.hnsw.efConstruction = 80
        else:
            self._quantizer = faiss.IndexFlatIP(dim)  # held here: the IVF index does not own it
            self._index = faiss.IndexIVFFlat(self._quantizer, dim, IVF_LISTS, faiss.METRIC_INNER_PRODUCT)
            self._index.train(matrix)
        self._index.add(matrix)
        if self.structure == "ivf":
            self._index.make_direct_map()  # reconstruct(row): how far a prototype moved from its entry
        self._row_ids = ids
        self._row_of = {identity: row for row, identity in enumerate(ids)}
        if self.structure != "flat":
            self._calibrate(matrix)

    def upsert(self, identity: int, vector: np.ndarray) -> None:
        vector = np.asarray(vector, dtype=np.float32)
        if self._index is None:
            self.rebuild({**self.prototypes, identity: vector})
            return
        self.prototypes[identity] = vector
        row = self._row_of.get(identity)
        if row is not None and self.structure == "flat":
            stored = faiss.rev_swig_ptr(self._index.get_xb(), self._index.ntotal * self._index.d)
            stored.reshape(self._index.ntotal, self._index.d)[row] = vector
            return
        if row is not None:
            if float(self._index.reconstruct(row) @ vector) >= REINDEX_BELOW:
                return
            self._stale += 1
        self._index.add(vector[None])
        self._row_of[identity] = len(self._row_ids)
        self._row_ids.append(identity)
        outgrown = self.structure == "flat" and self._structure_for(len(self.prototypes)) != "flat"
        if self._stale > STALE_SHARE * len(self._row_ids) or outgrown:
            self.rebuild(self.prototypes)

    def search(self, vector: np.ndarray, k: int = 5) -> list[tuple[int, float]]:
        """Top-k ``(identity, cosine)``, scored exactly against the current prototypes."""
        (found,) = self.candidates(np.asarray(vector, dtype=np.float32)[None], k)
        return self.rank(vector, found, k)

    def candidates(self, vectors: np.ndarray, k: int = 5) -> list[list[int]]:
        """For each vector, the identities :meth:`search` would score (one FAISS call for all:
        a batch is searched on every core at once)."""
        if self._index is None or self._index.ntotal == 0 or len(vectors) == 0:
            return [[] for _ in range(len(vectors))]
        # Stale entries of one identity crowd the candidates of an approximate index: ask for more.
        wanted = min(self._index.ntotal, k if self.structure == "flat" else 4 * k)
        _, rows = self._index.search(np.ascontiguousarray(vectors, dtype=np.float32), wanted)
        current = self._row_of
        return [list(dict.fromkeys(self._row_ids[r] for r in found if r >= 0 and current.get(self._row_ids[r]) == r))
                for found in rows]

    def rank(self, vector: np.ndarray, identities, k: int = 5) -> list[tuple[int, float]]:
        """Top-k of ``identities`` by exact cosine with their current prototypes."""
        vector = np.asarray(vector, dtype=np.float32)
        scored = [(identity, float(self.prototypes[identity] @ vector))
                  for identity in dict.fromkeys(identities) if identity in self.prototypes]
        return sorted(scored, key=lambda pair: -pair[1])[:k]

    def exact_top(self, queries: np.ndarray) -> list[int]:
        """Each query's top identity by exact search over the current prototypes."""
        ids = list(self.prototypes)
        matrix = np.stack([self.prototypes[i] for i in ids])
        return [ids[row] for row in np.argmax(np.asarray(queries, dtype=np.float32) @ matrix.T, axis=1)]

    def measure_recall(self, queries: np.ndarray, exact: list[int]) -> float:
        """Share of queries whose top identity from this index is ``exact``'s (:meth:`exact_top`)."""
        found = [self.search(query, 1) for query in queries]
        return float(np.mean([bool(f) and f[0][0] == e for f, e in zip(found, exact, strict=True)]))

    def _calibrate(self, matrix: np.ndarray, queries: int = 200) -> None:
        """The smallest search depth whose recall@1 against exact search reaches the target,
        on queries like real ones: a known identity's prototype plus the noise of a new sighting."""
        rng = np.random.default_rng(self.seed)
        picked = matrix[rng.choice(len(matrix), size=min(queries, len(matrix)), replace=False)]
        noisy = picked + rng.standard_normal(picked.shape).astype(np.float32) * (0.5 / np.sqrt(matrix.shape[1]))
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        exact = self.exact_top(noisy)
        for depth in DEPTHS:
            self._set_depth(depth)
            self.depth, self.recall_at_1 = depth, self.measure_recall(noisy, exact)
            if self.recall_at_1 >= TARGET_RECALL:
                return

    def _set_depth(self, depth: int) -> None:
        if self.structure == "hnsw":
            self._index.hnsw.efSearch = depth
        else:
            self._index.nprobe = min(depth, IVF_LISTS)
