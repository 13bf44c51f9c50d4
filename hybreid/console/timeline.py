"""An identity's timeline across cameras as SVG geometry for the identity page: one lane a
camera, one bar a sighting (from its tracklet's first frame to its last), drawn by the
template so that every label goes through its escaping."""

from __future__ import annotations

from datetime import UTC, datetime

WIDTH, LEFT, LANE, TOP, TICKS = 900, 140, 26, 24, 5


def timeline(sightings: list[dict]) -> dict | None:
    if not sightings:
        return None
    lanes = sorted({(s["site"], s["camera_id"]) for s in sightings})
    row = {lane: index for index, lane in enumerate(lanes)}
    start = min(s["first_ts"] for s in sightings)
    span = max(max(s["ts"] for s in sightings) - start, 1.0)

    def x(ts: float) -> float:
        return round(LEFT + (ts - start) / span * (WIDTH - LEFT - 40), 1)

    bars = [{"x": x(s["first_ts"]), "width": max(x(s["ts"]) - x(s["first_ts"]), 3.0),
             "y": TOP + row[(s["site"], s["camera_id"])] * LANE + 4, "modality": s["modality"],
             "title": f"{s['camera_id']} track {s['track_id']}: {s['first_seen']} to {s['last_seen']}"}
            for s in sightings]
    ticks = [{"x": x(start + span * step / (TICKS - 1)),
              "label": datetime.fromtimestamp(start + span * step / (TICKS - 1), UTC).strftime("%H:%M:%S")}
             for step in range(TICKS)]
    return {"width": WIDTH, "height": TOP + len(lanes) * LANE + 10, "left": LEFT, "lane": LANE, "top": TOP,
            "lanes": [{"label": f"{site}/{camera}", "y": TOP + index * LANE + LANE / 2 + 4}
                      for index, (site, camera) in enumerate(lanes)],
            "bars": bars, "ticks": ticks}
