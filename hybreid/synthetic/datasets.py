"""Write synthetic people in the Market1501 and SYSU-MM01 layouts, so the real readers load them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from hybreid.synthetic.people import (
    GENERATOR_VERSION,
    INFRARED,
    NEAR_INFRARED,
    VISIBLE,
    CameraSet,
    make_identity,
    render_crop,
)

SYSU_MODALITIES = [VISIBLE, VISIBLE, INFRARED, VISIBLE, VISIBLE, INFRARED]  # cam1..cam6


def _write(path: Path, image_rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])


def write_market1501(root: str | Path, train_ids: int = 200, test_ids: int = 100, images_per_camera: int = 4,
                     num_cameras: int = 6, distractors: int = 20, junk: int = 10, seed: int = 0,
                     size: tuple[int, int] = (128, 64), progress: bool = True) -> Path:
    """Market1501 layout: ``bounding_box_train``, ``bounding_box_test`` (with 0000
    distractors and -1 junk), ``query`` (one image per test identity and camera)."""
    root = Path(root)
    cameras = CameraSet.make([VISIBLE] * num_cameras, seed).cameras
    rng = np.random.default_rng([seed, 1])
    frame = 0
    total = train_ids + test_ids
    for pid in tqdm(range(1, total + 1), desc="synthetic Market1501", disable=not progress):
        identity = make_identity(pid, seed)
        seen_by = sorted(rng.choice(num_cameras, size=int(rng.integers(2, num_cameras + 1)), replace=False))
        for camid in seen_by:
            for shot in range(images_per_camera):
                frame += 1
                name = f"{pid:04d}_c{camid + 1}s1_{frame:06d}_{shot:02d}.jpg"
                if pid <= train_ids:
                    folder = "bounding_box_train"
                else:
                    folder = "query" if shot == 0 else "bounding_box_test"
                _write(root / folder / name, render_crop(identity, cameras[camid], rng, size))
    for index in range(distractors):
        # Distractors: people who never appear in the query (pid 0000).
        identity = make_identity(100_000 + index, seed)
        camid = int(rng.integers(num_cameras))
        _write(root / "bounding_box_test" / f"0000_c{camid + 1}s1_{index:06d}_00.jpg",
               render_crop(identity, cameras[camid], rng, size))
    for index in range(junk):
        # Junk (-1): badly cropped images that the protocol ignores.
        identity = make_identity(200_000 + index, seed)
        camid = int(rng.integers(num_cameras))
        crop = render_crop(identity, cameras[camid], rng, size)
        _write(root / "bounding_box_test" / f"-1_c{camid + 1}s1_{index:06d}_00.jpg", np.roll(crop, size[0] // 2, 0))
    return root


def write_sysu_mm01(root: str | Path, train_ids: int = 200, test_ids: int = 100, images_per_camera: int = 4,
                    seed: int = 0, size: tuple[int, int] = (128, 64), progress: bool = True,
                    infrared_band: str = NEAR_INFRARED) -> Path:
    """SYSU-MM01 layout: ``cam1..cam6/<pid>/<n>.jpg`` and ``exp/{train,val,test}_id.txt``.

    cam1, cam2, cam4, cam5 are visible, cam3 and cam6 infrared (near infrared, as the real
    dataset's cameras; ``infrared_band="thermal"`` for far-infrared ones); every identity
    is seen by at least one camera of each modality.
    """
    root = Path(root)
    cameras = CameraSet.make(SYSU_MODALITIES, seed, infrared_band).cameras
    visible = [i for i, m in enumerate(SYSU_MODALITIES) if m == VISIBLE]
    infrared = [i for i, m in enumerate(SYSU_MODALITIES) if m == INFRARED]
    rng = np.random.default_rng([seed, 2])
    total = train_ids + test_ids
    for pid in tqdm(range(1, total + 1), desc="synthetic SYSU-MM01", disable=not progress):
        identity = make_identity(pid, seed)
        seen_by = sorted(
            list(rng.choice(visible, size=int(rng.integers(2, len(visible) + 1)), replace=False))
            + list(rng.choice(infrared, size=int(rng.integers(1, len(infrared) + 1)), replace=False))
        )
        for camid in seen_by:
            for shot in range(images_per_camera):
                _write(root / f"cam{camid + 1}" / f"{pid:04d}" / f"{shot + 1:04d}.jpg",
                       render_crop(identity, cameras[camid], rng, size))
    exp = root / "exp"
    exp.mkdir(parents=True, exist_ok=True)
    train = list(range(1, train_ids + 1))
    split = max(1, len(train) // 10)
    (exp / "train_id.txt").write_text(",".join(str(p) for p in train[:-split]))
    (exp / "val_id.txt").write_text(",".join(str(p) for p in train[-split:]))
    (exp / "test_id.txt").write_text(",".join(str(p) for p in range(train_ids + 1, total + 1)))
    return root


def write_once(writer: Callable, root: str | Path, **settings) -> Path:
    """``writer(root, **settings)`` unless ``root`` already holds a complete copy written
    by this generator version with the same settings (a marker file records them);
    returns ``root``."""
    root = Path(root)
    marker = root / ".complete"
    record = {"generator": GENERATOR_VERSION, **settings}
    if marker.exists() and json.loads(marker.read_text()) == record:
        return root
    shutil.rmtree(root, ignore_errors=True)
    writer(root, **settings)
    marker.write_text(json.dumps(record))
    return root
