"""The papers' image transforms, built from torchvision.

FusionReID (Sec. IV-B, authors' code): resize 256x128, random flip, pad 10 + random
crop, random erasing p=0.5, mean/std 0.5. HAResformer (Sec. IV-A): resize 288x144,
random crop (pad 10), flip, random erasing p=0.5, and random grayscale p=0.5 for
*visible* training images only (so the dataset picks the transform by modality).
"""

from __future__ import annotations

from torchvision import transforms as T

from hybreid.data.datasets import VISIBLE


def train_transform(size: tuple[int, int], mean, std, grayscale: float = 0.0, pad: int = 10,
                    erasing: float = 0.5) -> T.Compose:
    steps = [
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(0.5),
        T.Pad(pad),
        T.RandomCrop(size),
    ]
    if grayscale > 0:
        steps.append(T.RandomGrayscale(grayscale))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    if erasing > 0:
        # After normalisation 0 is the mean colour, which is what erasing fills in.
        steps.append(T.RandomErasing(p=erasing, value=0))
    return T.Compose(steps)


def test_transform(size: tuple[int, int], mean, std) -> T.Compose:
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(), T.Normalize(mean, std)])


def modality_transforms(family: str, size, mean, std, train: bool, pad: int = 10,
                        erasing: float = 0.5) -> dict[str, T.Compose]:
    """Transform per modality: HAResformer greys half of the visible training images.

    ``pad`` and ``erasing`` default to both papers' values; ``pad`` is in pixels of the
    input size, so an input smaller than the papers' needs a smaller one to shift the
    person as much (10 px at 288x144 is about 2 px at 64x32).
    """
    if not train:
        transform = test_transform(size, mean, std)
        return {"visible": transform, "infrared": transform}
    plain = train_transform(size, mean, std, pad=pad, erasing=erasing)
    if family == "haresformer":
        return {VISIBLE: train_transform(size, mean, std, grayscale=0.5, pad=pad, erasing=erasing), "infrared": plain}
    return {VISIBLE: plain, "infrared": plain}
