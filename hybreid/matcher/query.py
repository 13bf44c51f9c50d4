"""``hybreid matcher query``: sightings by identity, by camera and time window, or by image."""

from __future__ import annotations

from hybreid.errors import UserError
from hybreid.matcher.gallery import Gallery


def by_identity(gallery: Gallery, identity: int) -> dict:
    """The sightings of ``identity``, following merges: an identity re-association merged
    away answers with the one it was merged into."""
    survivor = gallery.resolve(identity)
    return {"identity": survivor, "asked": identity, "merged_from": gallery.merged_into(survivor),
            "sightings": gallery.sightings(identity=survivor)}


def by_camera(gallery: Gallery, camera: str | None, since: float | None, until: float | None) -> dict:
    return {"camera": camera, "since": since, "until": until,
            "sightings": gallery.sightings(camera=camera, since=since, until=until)}


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
