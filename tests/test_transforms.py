"""The papers' training transforms: per-modality grayscale, pad + crop, random erasing."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from hybreid.data.transforms import modality_transforms
from hybreid.synthetic.datasets import write_market1501
from hybreid.train.config import resolve_config
from hybreid.train.trainer import Trainer

SIZE, MEAN, STD = (64, 32), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
PADDING = -1.0  # black padding after normalisation with mean = std = 0.5


def step_types(transform: T.Compose) -> list[type]:
    return [type(step) for step in transform.transforms]


def step_of(transform: T.Compose, kind: type):
    return next(step for step in transform.transforms if isinstance(step, kind))


def test_haresformer_greys_only_visible_images_and_both_papers_erase_and_pad_by_default():
    haresformer = modality_transforms("haresformer", SIZE, MEAN, STD, train=True)
    assert T.RandomGrayscale in step_types(haresformer["visible"])
    assert T.RandomGrayscale not in step_types(haresformer["infrared"])
    fusionreid = modality_transforms("fusionreid", SIZE, MEAN, STD, train=True)
    for transform in (*haresformer.values(), *fusionreid.values()):
        assert step_of(transform, T.Pad).padding == 10 and step_of(transform, T.RandomErasing).p == 0.5
    evaluation = modality_transforms("haresformer", SIZE, MEAN, STD, train=False)
    assert T.RandomErasing not in step_types(evaluation["visible"]) and T.Pad not in step_types(evaluation["visible"])


def padded_margin(image: torch.Tensor) -> int:
    """The widest run of all-padding rows or columns along any edge of ``image``."""
    padding = (image == PADDING).all(dim=0)
    rows, cols = padding.all(dim=1).numpy(), padding.all(dim=0).numpy()

    def run(flags: np.ndarray) -> int:
        return int(np.argmin(flags)) if not flags.all() else len(flags)
    return max(run(rows), run(rows[::-1]), run(cols), run(cols[::-1]))


def test_pad_bounds_how_far_the_random_crop_shifts_the_person():
    torch.manual_seed(0)
    white = Image.fromarray(np.full((*SIZE, 3), 255, np.uint8))
    margins = {}
    for pad in (2, 10):
        transform = modality_transforms("fusionreid", SIZE, MEAN, STD, train=True, pad=pad, erasing=0.0)["visible"]
        assert T.RandomErasing not in step_types(transform)
        margins[pad] = [padded_margin(transform(white)) for _ in range(200)]
    assert max(margins[2]) == 2 and max(margins[10]) == 10
    assert 0 in margins[2]  # some crops keep the whole image


def test_the_trainer_passes_the_data_settings_to_the_transforms(tmp_path):
    root = write_market1501(tmp_path / "market", train_ids=4, test_ids=2, images_per_camera=2, num_cameras=2,
                            size=SIZE, progress=False)
    config = resolve_config(None, {"model": "fusionreid_tiny", "model_options": {"image_size": list(SIZE)},
                                   "dataset": {"name": "market1501", "root": str(root)},
                                   "sampler": {"num_ids": 2, "num_instances": 2}, "output": str(tmp_path / "run"),
                                   "data": {"pad": 3, "erasing": 0.0}})
    transforms = Trainer(config, progress=False).loader.dataset.transforms
    for transform in transforms.values():
        assert step_of(transform, T.Pad).padding == 3
        assert T.RandomErasing not in step_types(transform)
