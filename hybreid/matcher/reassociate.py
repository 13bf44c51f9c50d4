"""Re-association: the matcher revisits its online decisions over a window of recent tracklets.

The online assignment decides each tracklet once, as it arrives, against the identities
known at that moment; a person whose first sighting was ambiguous gets a second identity,
and later evidence that links the two is never used. Every ``reassociate_every_s`` the
matcher therefore clusters the tracklets of the last ``window_s`` seconds again (all
updates of one camera track are one tracklet: must-link) and maps the clusters back onto
identities:

- clusters grow by average linkage, the closest pair first, while their mean cosine
  reaches the same-modality threshold; a pair of clusters with no modality in common
  (visible only against infrared only) must reach the cross-modality threshold *and* be
  each other's nearest such cluster (mutual nearest neighbours: a relative criterion
  across the visible/infrared gap, where one absolute threshold merges the wrong people
  as the gallery grows);
- cannot-link: two tracklets of different cameras that overlap in time (one person is
  not in two places at once), of one camera that overlap in time (two people in one
  frame), or whose gap is shorter than the least walk between their cameras along the
  camera graph's links (:class:`~hybreid.matcher.camera_graph.Walks`, as the online
  decisions use it);
- a plausible transit (connected cameras, the gap within the link's walking time) adds
  ``transit_bonus`` to the pair's cosine: appearance and where-and-when fused, as
  spatio-temporal re-identification does. On the default synthetic site, of the tracklet
  pairs above cosine 0.8, 26 of 31 with a plausible transit were one person and 22 of 66
  without;
- each identity stays with the cluster that holds most of its sightings (ties: the
  cluster of its first sighting); a cluster whose identities all stayed elsewhere gets a
  new identity; an identity left without sightings is merged into the one that took them.

A guard keeps the online identities wherever the clustering explains their tracklets
worse than they do (:func:`guard`, :func:`partition_score`): greedy agglomeration can
chain people through one ambiguous tracklet, and a re-association that loses against the
decisions it revisits must not replace them.

scipy's and scikit-learn's agglomerative clustering take no cannot-link constraints, so
the agglomeration is written here; a window holds tens to hundreds of tracklets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hybreid.matcher.camera_graph import Walks


@dataclass
class Tracklet:
    key: tuple[str, str, int]  # site, camera, track
    identity: int
    modality: str
    first_ts: float
    last_ts: float
    embedding: np.ndarray  # L2-normalised mean of its sightings
    sightings: int = 1
    modalities: set[str] = field(default_factory=set)

    @property
    def camera(self) -> tuple[str, str]:
        return self.key[0], self.key[1]


def _gap(a: Tracklet, b: Tracklet) -> float | None:
    """Seconds between two tracklets of one site on different cameras (that do not overlap in
    time: :func:`relation` ruled that out); None for other pairs."""
    if a.camera == b.camera or a.key[0] != b.key[0]:
        return None
    return b.first_ts - a.last_ts if a.last_ts <= b.first_ts else a.first_ts - b.last_ts


def relation(a: Tracklet, b: Tracklet, walks: Walks | None = None) -> tuple[bool, bool]:
    """(cannot link, plausible transit) of two tracklets."""
    if a.first_ts < b.last_ts and b.first_ts < a.last_ts:
        return True, False  # different cameras: two places at once; one camera: two people in one frame
    gap = _gap(a, b)
    if walks is None or gap is None:
        return False, False
    site, camera_a, camera_b = a.key[0], a.key[1], b.key[1]
    if gap < walks.least(site, camera_a, camera_b):
        return True, False
    link = walks.link(site, camera_a, camera_b)
    return False, link is not None and link[0] <= gap and (link[1] is None or gap <= link[1])


def cannot_link(a: Tracklet, b: Tracklet, walks: Walks | None = None) -> bool:
    return relation(a, b, walks)[0]


def plausible_transit(a: Tracklet, b: Tracklet, walks: Walks | None) -> bool:
    """Connected cameras, and the gap between the tracklets within their link's walking time."""
    return relation(a, b, walks)[1]


def _evidence(tracklets: list[Tracklet], walks: Walks | None,
              transit_bonus: float) -> tuple[np.ndarray, np.ndarray]:
    """Every pair's cosine (plus the transit bonus where the walk fits) and whether it may not link."""
    count = len(tracklets)
    vectors = np.stack([t.embedding for t in tracklets]).astype(np.float64)
    similarity = vectors @ vectors.T
    forbidden = np.zeros((count, count), dtype=bool)
    plausible = np.zeros((count, count), dtype=bool)
    for i in range(count):  # both relations are symmetric: each pair once, then mirrored
        for j in range(i + 1, count):
            forbidden[i, j], plausible[i, j] = relation(tracklets[i], tracklets[j], walks)
    forbidden |= forbidden.T
    return similarity + transit_bonus * (plausible | plausible.T), forbidden


# What one pair that may not link (two places at once) costs a partition: more than any
# pair's similarity can earn.
CANNOT_LINK_COST = 2.0


def partition_score(tracklets: list[Tracklet], clusters: list[list[int]], same_threshold: float,
                    cross_threshold: float, walks: Walks | None = None, transit_bonus: float = 0.0) -> float:
    """How well ``clusters`` explain the tracklets, by the evidence the matcher has (the
    correlation-clustering objective): every pair kept together earns its similarity above
    the threshold of its modalities (loses it below), and costs ``CANNOT_LINK_COST`` where it
    may not link."""
    if not tracklets:
        return 0.0
    similarity, forbidden = _evidence(tracklets, walks, transit_bonus)
    modality = [t.modality for t in tracklets]
    score = 0.0
    for members in clusters:
        for x, i in enumerate(members):
            for j in members[x + 1:]:
                threshold = same_threshold if modality[i] == modality[j] else cross_threshold
                score += -CANNOT_LINK_COST if forbidden[i, j] else similarity[i, j] - threshold
    return score


def online_clusters(tracklets: list[Tracklet]) -> list[list[int]]:
    """The online decisions as clusters: the tracklets of each identity."""
    groups: dict[int, list[int]] = {}
    for index, tracklet in enumerate(tracklets):
        groups.setdefault(tracklet.identity, []).append(index)
    return sorted(groups.values(), key=min)


def guard(tracklets: list[Tracklet], clusters: list[list[int]], same_threshold: float, cross_threshold: float,
          walks: Walks | None = None, transit_bonus: float = 0.0) -> tuple[list[list[int]], int]:
    """``clusters`` where they explain their tracklets better than the online decisions, the
    online decisions elsewhere; and how many parts kept the online decisions.

    A part is a set of tracklets that the clusters and the online identities both keep
    together (a connected component of "same cluster or same identity"): the two partitions
    differ inside parts only, so each part is scored on its own (:func:`partition_score`)."""
    parent = list(range(len(tracklets)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    online = online_clusters(tracklets)
    for group in clusters + online:
        for member in group[1:]:
            parent[root(member)] = root(group[0])
    parts: dict[int, tuple[list[list[int]], list[list[int]]]] = {}
    for group in clusters:
        parts.setdefault(root(group[0]), ([], []))[0].append(group)
    for group in online:
        parts.setdefault(root(group[0]), ([], []))[1].append(group)
    evidence = (same_threshold, cross_threshold, walks, transit_bonus)
    chosen, kept = [], 0
    for new, old in parts.values():
        if partition_score(tracklets, new, *evidence) >= partition_score(tracklets, old, *evidence):
            chosen += new
        else:
            chosen += old
            kept += 1
    return sorted(chosen, key=min), kept


def cluster(tracklets: list[Tracklet], same_threshold: float, cross_threshold: float,
            walks: Walks | None = None, transit_bonus: float = 0.0) -> list[list[int]]:
    """Constrained average-linkage clusters of tracklet indices."""
    count = len(tracklets)
    if count == 0:
        return []
    similarity, forbidden = _evidence(tracklets, walks, transit_bonus)
    clusters: dict[int, list[int]] = {i: [i] for i in range(count)}
    modalities = {i: {tracklets[i].modality} for i in range(count)}
    while True:
        ids = list(clusters)
        best: tuple[float, int, int] | None = None
        cross_candidates: dict[int, tuple[float, int]] = {}  # cluster -> its nearest cross-modality cluster
        for x, a in enumerate(ids):
            for b in ids[x + 1:]:
                members_a, members_b = clusters[a], clusters[b]
                if forbidden[np.ix_(members_a, members_b)].any():
                    continue
                score = float(similarity[np.ix_(members_a, members_b)].mean())
                if modalities[a] & modalities[b]:
                    if score >= same_threshold and (best is None or score > best[0]):
                        best = (score, a, b)
                else:
                    for one, other in ((a, b), (b, a)):
                        if score > cross_candidates.get(one, (-2.0, -1))[0]:
                            cross_candidates[one] = (score, other)
        for a, (score, b) in cross_candidates.items():
            mutual = cross_candidates.get(b, (None, None))[1] == a
            if mutual and a < b and score >= cross_threshold and (best is None or score > best[0]):
                best = (score, a, b)
        if best is None:
            break
        _, a, b = best
        clusters[a] += clusters.pop(b)
        modalities[a] |= modalities.pop(b)
    return sorted(clusters.values(), key=min)


@dataclass
class Plan:
    """What re-association changes: tracklets that move, identities merged away, clusters that need a
    new identity (keyed by an index into ``new_groups``)."""

    moves: dict[tuple[str, str, int], int | None]  # tracklet -> its new identity (None: a new one)
    new_groups: list[list[tuple[str, str, int]]]
    merged: dict[int, int]  # identity left without sightings -> the identity that took most of them


def plan(tracklets: list[Tracklet], clusters: list[list[int]], sightings_outside: dict[int, int]) -> Plan:
    """Map clusters back onto identities. ``sightings_outside``: each identity's sightings
    before the window (they stay with it, and keep it alive)."""
    held: dict[int, dict[int, int]] = {}  # identity -> cluster -> sightings
    first_seen: dict[int, tuple[float, int]] = {}  # identity -> (first ts, cluster)
    for index, members in enumerate(clusters):
        for member in members:
            tracklet = tracklets[member]
            held.setdefault(tracklet.identity, {}).setdefault(index, 0)
            held[tracklet.identity][index] += tracklet.sightings
            if tracklet.identity not in first_seen or tracklet.first_ts < first_seen[tracklet.identity][0]:
                first_seen[tracklet.identity] = (tracklet.first_ts, index)
    home = {identity: max(by_cluster, key=lambda c, i=identity: (by_cluster[c], c == first_seen[i][1], -c))
            for identity, by_cluster in held.items()}
    owner: dict[int, int] = {}  # cluster -> the identity it keeps (the oldest, i.e. smallest id, at home there)
    for identity in sorted(home):
        owner.setdefault(home[identity], identity)
    moves: dict[tuple[str, str, int], int | None] = {}
    new_groups = []
    for index, members in enumerate(clusters):
        target = owner.get(index)
        moving = [tracklets[m].key for m in members if tracklets[m].identity != target]
        if target is None:
            new_groups.append(moving)
        for key in moving:
            moves[key] = target
    # An identity none of whose sightings stay with it (none before the window, and its home
    # cluster kept an older identity) is merged into that identity; a home cluster always
    # has an owner, since the identity itself is at home there.
    merged = {identity: owner[home[identity]] for identity in held
              if not sightings_outside.get(identity, 0) and owner[home[identity]] != identity}
    return Plan(moves, new_groups, merged)


def tracklets_of(rows) -> list[Tracklet]:
    """Tracklets from sighting rows ``(site, camera_id, track_id, identity_id, modality, first_ts,
    ts, seq, embedding)`` in ``seq`` order: each track's mean embedding, time span and latest
    identity and modality."""
    grouped: dict[tuple[str, str, int], list] = {}
    for row in rows:
        grouped.setdefault((row[0], row[1], row[2]), []).append(row)
    tracklets = []
    for key, items in grouped.items():
        mean = np.mean([np.frombuffer(item[8], dtype=np.float32) for item in items], axis=0)
        tracklets.append(Tracklet(key, items[-1][3], items[-1][4], min(i[5] for i in items),
                                  max(i[6] for i in items), mean / max(np.linalg.norm(mean), 1e-12), len(items)))
    return tracklets
