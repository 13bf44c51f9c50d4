"""Re-association's reads and writes of the gallery: the recent tracklets it clusters again,
and the moves and merges it decides, committed with the events that announce them."""

from __future__ import annotations

from hybreid.matcher.gallery import Gallery
from hybreid.matcher.reassociate import Plan, Tracklet, tracklets_of


def recent_tracklets(gallery: Gallery, window_s: float) -> tuple[list[Tracklet], dict[int, int]]:
    """The tracklets with a sighting in the last ``window_s`` seconds (of message time),
    and each of their identities' sightings outside those tracklets."""
    with gallery.lock:
        tracklets = tracklets_of(gallery.store.recent_sightings(window_s))
        identities = sorted({t.identity for t in tracklets})
        totals = gallery.store.sighting_counts(identities)
    inside = {i: sum(t.sightings for t in tracklets if t.identity == i) for i in identities}
    return tracklets, {i: totals.get(i, 0) - inside[i] for i in identities}


def apply_reassociation(gallery: Gallery, plan: Plan, ts: float, events_of=None
                        ) -> tuple[dict[int, int], dict[tuple[str, str, int], int]]:
    """Move tracklets, create the new identities and record the merges in one transaction;
    returns (merged: old -> surviving, moved: tracklet -> identity). ``events_of(merged, moved)``
    gives the events that announce it, stored in the same transaction until the broker
    acknowledges them (a merge committed is a merge announced, whatever fails after)."""
    store = gallery.store
    moved: dict[tuple[str, str, int], int] = {}
    with gallery.rewriting_identities():
        for group in plan.new_groups:
            moved.update(dict.fromkeys(group, store.create_empty_identity(ts)))
        moved.update({key: target for key, target in plan.moves.items() if target is not None})
        touched = set(moved.values())
        for (site, camera, track), target in moved.items():
            touched |= store.move_track(site, camera, track, target)
        for old, survivor in plan.merged.items():
            store.record_merge(old, survivor, ts)
        for identity in touched:
            store.recompute_identity(identity)
        if events_of is not None:
            store.store_events(events_of(dict(plan.merged), moved), ts)
    return dict(plan.merged), moved
