"""``hybreid matcher query``: sightings by identity, by camera and time window, or by image."""

from __future__ import annotations

import json

from hybreid.errors import UserError
from hybreid.matcher.gallery import Gallery

COLUMNS = ("camera_id", "seq", "site", "track_id", "modality", "first_ts", "ts", "box", "score", "quality",
           "frames", "final", "identity_id", "similarity")


def _rows(gallery: Gallery, where: str, values: tuple) -> list[dict]:
    with gallery.lock:
        rows = gallery.db.execute(f"SELECT {', '.join(COLUMNS)} FROM sightings WHERE {where} ORDER BY ts",
                                  values).fetchall()
    result = []
    for row in rows:
        item = dict(zip(COLUMNS, row, strict=True))
        item["box"] = json.loads(item["box"])
        item["final"] = bool(item["final"])
        result.append(item)
    return result


def by_identity(gallery: Gallery, identity: int) -> dict:
    """The sightings of ``identity``, following merges: an identity re-association merged
    away answers with the one it was merged into."""
    survivor = gallery.resolve(identity)
    return {"identity": survivor, "asked": identity, "merged_from": gallery.merged_into(survivor),
            "sightings": _rows(gallery, "identity_id = ?", (survivor,))}


def by_camera(gallery: Gallery, camera: str | None, since: float | None, until: float | None) -> dict:
    where, values = ["1 = 1"], []
    for clause, value in (("camera_id = ?", camera), ("ts >= ?", since), ("ts < ?", until)):
        if value is not None:
            where.append(clause)
            values.append(value)
    return {"camera": camera, "since": since, "until": until,
            "sightings": _rows(gallery, " AND ".join(where), tuple(values))}


def by_image(gallery: Gallery, image_path: str, model_path: str, top_k: int = 5) -> dict:
    from hybreid.contract import read_rgb
    from hybreid.inference import load_embedder

    image = read_rgb(image_path)
    embedder = load_embedder(model_path)
    embedder.probe(model_path)
    if gallery.model and embedder.contract.identity != gallery.model:
        raise UserError(f"{model_path} is {embedder.contract.identity}, the gallery holds {gallery.model}: "
                        "query with the site's model")
    vector = embedder.embed([image])[0]
    return {"image": image_path, "matches": [{"identity": i, "similarity": s}
                                             for i, s in gallery.search(vector, top_k)]}
