"""Dataset readers: each lists ``(path, pid, camid, modality)`` from a standard layout.

Readers only list files; evaluation protocols (gallery sampling, exclusions) live in
``hybreid.eval``. Camera ids are 0-based (``c1`` / ``cam1`` -> 0). Training identities
are relabelled to ``0..N-1``; query and gallery keep the dataset's own ids.

A folder that does not match gets one :class:`DatasetLayoutError` sentence naming the
layout that was expected and what was missing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hybreid.errors import UserError

VISIBLE, INFRARED = "visible", "infrared"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class DatasetLayoutError(UserError):
    """The folder is not in the dataset's standard layout."""


@dataclass(frozen=True)
class Sample:
    path: str
    pid: int
    camid: int
    modality: str = VISIBLE


@dataclass
class ReIDDataset:
    """Train / query / gallery lists of one dataset (one trial, for RegDB).

    For visible-infrared datasets ``query`` holds every infrared test image and
    ``gallery`` every visible test image; the protocol picks directions and samples.
    """

    name: str
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]
    extra: dict = field(default_factory=dict)

    @property
    def num_train_pids(self) -> int:
        return len({s.pid for s in self.train})

    @property
    def num_cameras(self) -> int:
        return 1 + max(s.camid for s in self.train + self.query + self.gallery)

    def summary(self) -> list[list]:
        """Rows of (split, identities, images, cameras) for a table."""
        rows = []
        for split in ("train", "query", "gallery"):
            samples = getattr(self, split)
            rows.append([split, len({s.pid for s in samples}), len(samples), len({s.camid for s in samples})])
        return rows


def _require(root: Path, layout: str, *names: str) -> None:
    if not root.is_dir():
        raise DatasetLayoutError(f"{root} is not a folder; expected the {layout} layout")
    missing = [n for n in names if not (root / n).exists()]
    if missing:
        raise DatasetLayoutError(
            f"{root} does not look like {layout}: expected {', '.join(names)}; missing {', '.join(missing)}"
        )


def _relabel(samples: list[Sample]) -> list[Sample]:
    mapping = {pid: i for i, pid in enumerate(sorted({s.pid for s in samples}))}
    return [Sample(s.path, mapping[s.pid], s.camid, s.modality) for s in samples]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


# --- Market1501 and DukeMTMC-reID: <pid>_c<cam>..., pid -1 junk, 0000 distractors -------

_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")


def _read_market_style(root: Path, layout: str, max_cameras: int) -> tuple[list, list, list]:
    _require(root, layout, "bounding_box_train", "bounding_box_test", "query")

    def read(folder: str, keep_distractors: bool) -> list[Sample]:
        samples = []
        for path in _images(root / folder):
            match = _MARKET_NAME.match(path.name)
            if not match:
                continue
            pid, cam = int(match.group(1)), int(match.group(2))
            if pid == -1 or (pid == 0 and not keep_distractors):
                continue  # junk images are never scored; distractors only fill the gallery
            if not 1 <= cam <= max_cameras:
                raise DatasetLayoutError(f"{path}: camera c{cam} is outside c1..c{max_cameras} of {layout}")
            samples.append(Sample(str(path), pid, cam - 1))
        if not samples:
            raise DatasetLayoutError(f"{root / folder} holds no images named like 0002_c1s1_000451_03.jpg")
        return samples

    return (_relabel(read("bounding_box_train", False)), read("query", False),
            read("bounding_box_test", True))


def market1501(root: str | Path) -> ReIDDataset:
    """Market1501: ``bounding_box_train``, ``bounding_box_test``, ``query``; cameras c1..c6."""
    root = Path(root)
    train, query, gallery = _read_market_style(root, "Market1501", 6)
    return ReIDDataset("market1501", train, query, gallery)


def dukemtmc(root: str | Path) -> ReIDDataset:
    """DukeMTMC-reID: the Market layout, ``0005_c2_f0046985.jpg``; cameras c1..c8."""
    root = Path(root)
    train, query, gallery = _read_market_style(root, "DukeMTMC-reID", 8)
    return ReIDDataset("dukemtmc", train, query, gallery)


# --- MSMT17: list files, V1 (train/, test/) or V2 (mask_train_v2/, mask_test_v2/) ------


def msmt17(root: str | Path) -> ReIDDataset:
    """MSMT17 V1 or V2: ``list_{train,val,query,gallery}.txt`` of ``path label`` lines.

    Training uses train + val, as the community's code does; the camera is the third
    ``_``-separated field of the file name (``0000_000_01_...``), 1..15.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root} is not a folder; expected the MSMT17 layout")
    for train_dir, test_dir in (("train", "test"), ("mask_train_v2", "mask_test_v2")):
        if (root / train_dir).is_dir() and (root / test_dir).is_dir():
            break
    else:
        raise DatasetLayoutError(
            f"{root} does not look like MSMT17: expected train/ and test/ (V1) or mask_train_v2/ and "
            "mask_test_v2/ (V2) beside list_train.txt, list_val.txt, list_query.txt, list_gallery.txt"
        )
    _require(root, "MSMT17", "list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")

    def read(list_name: str, folder: str) -> list[Sample]:
        samples = []
        for line_no, line in enumerate((root / list_name).read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rel, label = line.split()
                cam = int(Path(rel).name.split("_")[2])
                samples.append(Sample(str(root / folder / rel), int(label), cam - 1))
            except (ValueError, IndexError) as exc:
                raise DatasetLayoutError(
                    f"{root / list_name} line {line_no} is not 'pid/pid_idx_cam_....jpg label': {line!r}"
                ) from exc
        return samples

    train = read("list_train.txt", train_dir) + read("list_val.txt", train_dir)
    return ReIDDataset("msmt17", _relabel(train), read("list_query.txt", test_dir),
                       read("list_gallery.txt", test_dir))


# --- SYSU-MM01: cam1..cam6/<pid>/<n>.jpg, exp/{train,val,test}_id.txt ------------------

SYSU_VISIBLE_CAMERAS = (1, 2, 4, 5)
SYSU_INFRARED_CAMERAS = (3, 6)


def _read_id_list(path: Path) -> list[int]:
    text = path.read_text().replace("\n", ",")
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise DatasetLayoutError(f"{path} should hold comma-separated identity numbers") from exc


def _collect_by_identity(folders: Iterable[tuple[Path, int, str]], pids: Iterable[int]) -> list[Sample]:
    samples = []
    for pid in sorted(pids):
        for folder, camid, modality in folders:
            person = folder / f"{pid:04d}"
            if person.is_dir():
                samples += [Sample(str(p), pid, camid, modality) for p in _images(person)]
    return samples


def sysu_mm01(root: str | Path) -> ReIDDataset:
    """SYSU-MM01: cam1, cam2, cam4, cam5 visible; cam3, cam6 infrared (near-IR).

    Training ids are ``exp/train_id.txt`` + ``exp/val_id.txt``; query = every infrared
    image of the test ids, gallery = every visible image of the test ids (the protocol
    samples one per identity and camera per trial).
    """
    root = Path(root)
    cams = [f"cam{c}" for c in range(1, 7)]
    _require(root, "SYSU-MM01", *cams, "exp/train_id.txt", "exp/val_id.txt", "exp/test_id.txt")

    def folders(numbers: Iterable[int], modality: str):
        return [(root / f"cam{c}", c - 1, modality) for c in numbers]

    all_cams = folders(SYSU_VISIBLE_CAMERAS, VISIBLE) + folders(SYSU_INFRARED_CAMERAS, INFRARED)
    train_ids = _read_id_list(root / "exp/train_id.txt") + _read_id_list(root / "exp/val_id.txt")
    test_ids = _read_id_list(root / "exp/test_id.txt")
    train = _collect_by_identity(all_cams, train_ids)
    query = _collect_by_identity(folders(SYSU_INFRARED_CAMERAS, INFRARED), test_ids)
    gallery = _collect_by_identity(folders(SYSU_VISIBLE_CAMERAS, VISIBLE), test_ids)
    if not train or not query or not gallery:
        raise DatasetLayoutError(f"{root}: the identity lists in exp/ name no folders under cam1..cam6")
    return ReIDDataset("sysu_mm01", _relabel(train), query, gallery)


# --- RegDB: idx/{train,test}_{visible,thermal}_<trial>.txt ----------------------------


def regdb(root: str | Path, trial: int = 1) -> ReIDDataset:
    """RegDB trial 1..10: ``idx/*_{visible,thermal}_<trial>.txt`` lists of ``path label``.

    Camera 0 is the visible camera, camera 1 the thermal (far-IR) one. Query =
    thermal, gallery = visible test images (the protocol evaluates both directions).
    """
    root = Path(root)
    if not 1 <= trial <= 10:
        raise UserError(f"RegDB trial must be 1..10, got {trial}")
    names = [f"idx/{split}_{mod}_{trial}.txt" for split in ("train", "test") for mod in ("visible", "thermal")]
    _require(root, "RegDB", *names)

    def read(split: str, mod: str, camid: int, modality: str) -> list[Sample]:
        path = root / f"idx/{split}_{mod}_{trial}.txt"
        samples = []
        for line in path.read_text().splitlines():
            if line.strip():
                rel, label = line.rsplit(maxsplit=1)
                samples.append(Sample(str(root / rel), int(label), camid, modality))
        return samples

    train = read("train", "visible", 0, VISIBLE) + read("train", "thermal", 1, INFRARED)
    return ReIDDataset("regdb", _relabel(train), read("test", "thermal", 1, INFRARED),
                       read("test", "visible", 0, VISIBLE), extra={"trial": trial})


# --- LLCM: test_vis/camX/<pid>/, test_nir/camX/<pid>/, idx/ ---------------------------


def llcm(root: str | Path) -> ReIDDataset:
    """LLCM: ``idx/train_vis.txt``, ``idx/train_nir.txt`` (``path label`` lines),
    ``idx/test_id.txt`` and ``test_vis/cam<k>/<pid>/``, ``test_nir/cam<k>/<pid>/``.

    Camera ids are shared by both modalities (``cam<k>`` -> ``k-1``), as in LLCM where
    one camera records visible by day and near-IR at night.
    """
    root = Path(root)
    _require(root, "LLCM", "idx/train_vis.txt", "idx/train_nir.txt", "idx/test_id.txt", "test_vis", "test_nir")

    def read_list(name: str, modality: str) -> list[Sample]:
        samples = []
        for line in (root / "idx" / name).read_text().splitlines():
            if line.strip():
                rel, label = line.rsplit(maxsplit=1)
                cam = re.search(r"cam(\d+)", rel)
                if not cam:
                    raise DatasetLayoutError(f"{root / 'idx' / name}: {rel!r} names no cam<k> folder")
                samples.append(Sample(str(root / rel), int(label), int(cam.group(1)) - 1, modality))
        return samples

    def test_folders(folder: str, modality: str):
        return [(p, int(p.name[3:]) - 1, modality) for p in sorted((root / folder).glob("cam*")) if p.is_dir()]

    test_ids = _read_id_list(root / "idx/test_id.txt")
    train = read_list("train_vis.txt", VISIBLE) + read_list("train_nir.txt", INFRARED)
    return ReIDDataset("llcm", _relabel(train), _collect_by_identity(test_folders("test_nir", INFRARED), test_ids),
                       _collect_by_identity(test_folders("test_vis", VISIBLE), test_ids))


READERS = {
    "market1501": market1501,
    "dukemtmc": dukemtmc,
    "msmt17": msmt17,
    "sysu_mm01": sysu_mm01,
    "regdb": regdb,
    "llcm": llcm,
}

VISIBLE_INFRARED = {"sysu_mm01", "regdb", "llcm"}


def load_dataset(name: str, root: str | Path, **options) -> ReIDDataset:
    if name not in READERS:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(sorted(READERS))}")
    return READERS[name](root, **options)
