"""Scoring the matcher's identities against ground truth (synthetic scenes).

Each sighting (one published tracklet) has a ground-truth person: the majority identity
of its tracked boxes. Scores over sightings:

- **purity**: for each matcher identity, the share of its sightings that belong to its
  majority person, weighted by sightings;
- **pairwise precision / recall / F1** (an ID-F1 style score): over all pairs of
  sightings, precision = of the pairs the matcher put in one identity, the share that
  are one person; recall = of the pairs that are one person, the share the matcher put
  in one identity;
- the same pairwise scores restricted to **cross-modality** pairs (one visible and one
  infrared sighting): how well the visible/infrared gap is bridged.
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations


def _pairwise(items: list[tuple[int, int, str]], cross_only: bool) -> dict:
    same_pred = same_true = both = 0
    for (id_a, pid_a, mod_a), (id_b, pid_b, mod_b) in combinations(items, 2):
        if cross_only and mod_a == mod_b:
            continue
        predicted, actual = id_a == id_b, pid_a == pid_b
        same_pred += predicted
        same_true += actual
        both += predicted and actual
    precision = both / same_pred if same_pred else 0.0
    recall = both / same_true if same_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "true_links": same_true, "predicted_links": same_pred}


def score_identities(sightings: list[dict], truth: dict[tuple[str, int], int]) -> dict:
    """``sightings``: dicts with camera_id, track_id, identity_id, modality; ``truth``:
    (camera_id, track_id) -> ground-truth person (negative: matches no person)."""
    items = [(s["identity_id"], truth.get((s["camera_id"], s["track_id"]), -1), s["modality"]) for s in sightings]
    items = [item for item in items if item[1] >= 0]
    by_identity: dict[int, Counter] = {}
    for identity, pid, _ in items:
        by_identity.setdefault(identity, Counter())[pid] += 1
    pure = sum(counter.most_common(1)[0][1] for counter in by_identity.values())
    return {
        "sightings": len(items),
        "identities": len(by_identity),
        "people": len({pid for _, pid, _ in items}),
        "purity": pure / len(items) if items else 0.0,
        "pairwise": _pairwise(items, cross_only=False),
        "cross_modality": _pairwise(items, cross_only=True),
    }
