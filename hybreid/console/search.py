"""Search the gallery by a picture of a person (`hybreid console --artifact MODEL`): the
picture is embedded by the gallery's own model, on the console's host, and its nearest
identities are returned. The picture is checked before it is decoded (its format and the
size its header declares), since a small file can declare a huge image."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from hybreid.errors import UserError
from hybreid.inference import load_embedder
from hybreid.matcher.gallery import Gallery
from hybreid.protocol import jpeg_size

MAX_UPLOAD_BYTES = 4 * 1024 * 1024
MAX_SIDE = 4096
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def picture_size(data: bytes) -> tuple[int, int]:
    """Width and height a JPEG or PNG declares; ValueError for anything else."""
    if data.startswith(b"\xff\xd8\xff"):
        return jpeg_size(data)
    if data.startswith(PNG_SIGNATURE) and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    raise ValueError("the picture must be a JPEG or a PNG")


class ImageSearch:
    def __init__(self, artifact: str | Path, gallery_location: str | Path):
        self.embedder = load_embedder(artifact)
        self.embedder.probe(str(artifact))
        self.gallery = Gallery(gallery_location)
        if self.gallery.model and self.embedder.contract.identity != self.gallery.model:
            model = self.embedder.contract.identity
            self.gallery.close()
            raise UserError(f"{artifact} is {model}, the gallery holds embeddings of {self.gallery.model}: "
                            "search with the site's model")

    def search(self, data: bytes, k: int = 5) -> list[dict]:
        if len(data) > MAX_UPLOAD_BYTES:
            raise UserError(f"the picture is over {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB")
        try:
            width, height = picture_size(data)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
            raise UserError(f"the picture is {width}x{height} pixels; at most {MAX_SIDE} a side")
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise UserError("the picture does not decode")
        vector = self.embedder.embed([cv2.cvtColor(image, cv2.COLOR_BGR2RGB)])[0]
        self.gallery.refresh()  # identities the matcher created since
        return [{"identity": identity, "similarity": similarity, "url": f"/identities/{identity}"}
                for identity, similarity in self.gallery.search(vector, k)]

    def close(self) -> None:
        self.gallery.close()
