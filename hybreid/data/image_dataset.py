"""A torch ``Dataset`` over :class:`~hybreid.data.datasets.Sample` lists."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image
from torch.utils.data import Dataset

from hybreid.contract import read_rgb
from hybreid.data.datasets import VISIBLE, Sample

MODALITY_INDEX = {VISIBLE: 0, "infrared": 1}


def read_pil(path: str) -> Image.Image:
    return Image.fromarray(read_rgb(path))


class ImageDataset(Dataset):
    """Items are ``(image tensor, pid, camid, modality index)``; the transform is chosen by
    the sample's modality. ``cache=True`` keeps decoded images in memory (small sets)."""

    def __init__(self, samples: Sequence[Sample], transforms: dict, cache: bool = False):
        self.samples = list(samples)
        self.transforms = transforms
        self.cache = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def _image(self, index: int) -> Image.Image:
        if self.cache is None:
            return read_pil(self.samples[index].path)
        if index not in self.cache:
            self.cache[index] = read_pil(self.samples[index].path)
        return self.cache[index]

    def __getitem__(self, index: int):
        sample = self.samples[index]
        image = self.transforms[sample.modality](self._image(index))
        return image, sample.pid, sample.camid, MODALITY_INDEX[sample.modality]
