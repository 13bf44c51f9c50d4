"""Dataset readers on small trees in each dataset's real naming."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybreid.data.datasets import INFRARED, VISIBLE, DatasetLayoutError, load_dataset


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_market1501_drops_junk_keeps_distractors_and_relabels_train(tmp_path):
    touch(tmp_path, "bounding_box_train/0002_c1s1_000451_03.jpg", "bounding_box_train/0002_c3s1_000551_01.jpg",
          "bounding_box_train/0007_c2s3_070952_01.jpg", "bounding_box_train/Thumbs.db",
          "query/0001_c1s1_001051_00.jpg",
          "bounding_box_test/0001_c2s1_000301_01.jpg", "bounding_box_test/0000_c1s1_000000_01.jpg",
          "bounding_box_test/-1_c1s1_000401_03.jpg")
    data = load_dataset("market1501", tmp_path)
    assert sorted((s.pid, s.camid) for s in data.train) == [(0, 0), (0, 2), (1, 1)]
    assert [(s.pid, s.camid) for s in data.query] == [(1, 0)]
    assert sorted(s.pid for s in data.gallery) == [0, 1]  # -1 junk dropped, 0000 distractor kept
    assert all(s.modality == VISIBLE for s in data.train + data.query + data.gallery)


def test_dukemtmc_names(tmp_path):
    touch(tmp_path, "bounding_box_train/0005_c2_f0046985.jpg", "bounding_box_train/0005_c8_f0046985.jpg",
          "query/0005_c2_f0046985.jpg", "bounding_box_test/0005_c5_f0046985.jpg")
    data = load_dataset("dukemtmc", tmp_path)
    assert sorted(s.camid for s in data.train) == [1, 7]
    assert data.num_cameras == 8


@pytest.mark.parametrize(("train_dir", "test_dir"), [("train", "test"), ("mask_train_v2", "mask_test_v2")])
def test_msmt17_v1_and_v2_list_files(tmp_path, train_dir, test_dir):
    (tmp_path / train_dir).mkdir()
    (tmp_path / test_dir).mkdir()
    (tmp_path / "list_train.txt").write_text("0000/0000_000_01_0303morning_0015_0.jpg 0\n"
                                              "0000/0000_001_15_0303morning_0016_0.jpg 0\n")
    (tmp_path / "list_val.txt").write_text("0003/0003_000_07_0303morning_0040_0.jpg 3\n")
    (tmp_path / "list_query.txt").write_text("0000/0000_000_01_0303morning_0017_0.jpg 0\n")
    (tmp_path / "list_gallery.txt").write_text("0000/0000_003_02_0303noon_0018_0.jpg 0\n")
    data = load_dataset("msmt17", tmp_path)
    assert sorted((s.pid, s.camid) for s in data.train) == [(0, 0), (0, 14), (1, 6)]
    assert data.query[0].path.startswith(str(tmp_path / test_dir))
    assert data.gallery[0].camid == 1


def test_sysu_mm01_modalities_and_id_lists(tmp_path):
    touch(tmp_path, "cam1/0001/0001.jpg", "cam3/0001/0001.jpg", "cam6/0001/0002.jpg", "cam2/0002/0001.jpg",
          "cam3/0002/0001.jpg", "cam4/0003/0001.jpg", "cam3/0003/0001.jpg", "cam5/0003/0001.jpg",
          "cam6/0003/0001.jpg")
    for cam in range(1, 7):
        (tmp_path / f"cam{cam}").mkdir(exist_ok=True)
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp/train_id.txt").write_text("1")
    (tmp_path / "exp/val_id.txt").write_text("2")
    (tmp_path / "exp/test_id.txt").write_text("3\n")
    data = load_dataset("sysu_mm01", tmp_path)
    assert sorted((s.pid, s.camid, s.modality) for s in data.train) == [
        (0, 0, VISIBLE), (0, 2, INFRARED), (0, 5, INFRARED), (1, 1, VISIBLE), (1, 2, INFRARED)]
    assert sorted((s.pid, s.camid) for s in data.query) == [(3, 2), (3, 5)]
    assert sorted((s.pid, s.camid) for s in data.gallery) == [(3, 3), (3, 4)]


def test_regdb_trial_files(tmp_path):
    idx = tmp_path / "idx"
    idx.mkdir()
    for split in ("train", "test"):
        (idx / f"{split}_visible_3.txt").write_text("Visible/1/female_back_v_02_1.bmp 0\n"
                                                   "Visible/2/male_front_v_00_2.bmp 1\n")
        (idx / f"{split}_thermal_3.txt").write_text("Thermal/1/female_back_t_02_1.bmp 0\n")
    data = load_dataset("regdb", tmp_path, trial=3)
    assert sorted((s.pid, s.camid, s.modality) for s in data.train) == [
        (0, 0, VISIBLE), (0, 1, INFRARED), (1, 0, VISIBLE)]
    assert [s.modality for s in data.query] == [INFRARED]
    with pytest.raises(DatasetLayoutError, match="test_thermal_1.txt"):
        load_dataset("regdb", tmp_path, trial=1)


def test_llcm_layout(tmp_path):
    touch(tmp_path, "test_vis/cam1/0005/a.jpg", "test_vis/cam4/0005/b.jpg", "test_nir/cam2/0005/c.jpg",
          "test_nir/cam2/0009/d.jpg")
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx/train_vis.txt").write_text("train_vis/cam1/0001/x.jpg 1\n")
    (tmp_path / "idx/train_nir.txt").write_text("train_nir/cam3/0001/y.jpg 1\n")
    (tmp_path / "idx/test_id.txt").write_text("5")
    data = load_dataset("llcm", tmp_path)
    assert sorted((s.camid, s.modality) for s in data.train) == [(0, VISIBLE), (2, INFRARED)]
    assert [(s.pid, s.camid) for s in data.query] == [(5, 1)]  # 0009 is not a test id
    assert sorted(s.camid for s in data.gallery) == [0, 3]


def test_wrong_layout_names_what_is_missing(tmp_path):
    touch(tmp_path, "bounding_box_train/0002_c1s1_000451_03.jpg")
    with pytest.raises(DatasetLayoutError) as error:
        load_dataset("market1501", tmp_path)
    message = str(error.value)
    assert "Market1501" in message and "missing bounding_box_test, query" in message
    with pytest.raises(DatasetLayoutError, match="SYSU-MM01"):
        load_dataset("sysu_mm01", tmp_path)
    with pytest.raises(DatasetLayoutError, match="not a folder"):
        load_dataset("msmt17", tmp_path / "nowhere")


@pytest.mark.slow
def test_synthetic_layouts_load_with_the_real_readers(tmp_path):
    from hybreid.synthetic.datasets import write_market1501, write_sysu_mm01

    market = load_dataset("market1501", write_market1501(tmp_path / "m", 6, 4, 2, distractors=3, junk=2,
                                                         progress=False))
    assert market.num_train_pids == 6
    assert {s.pid for s in market.query} <= {s.pid for s in market.gallery}
    assert sum(s.pid == 0 for s in market.gallery) == 3
    sysu = load_dataset("sysu_mm01", write_sysu_mm01(tmp_path / "s", 6, 4, 2, progress=False))
    assert {s.modality for s in sysu.train} == {VISIBLE, INFRARED}
    assert {s.pid for s in sysu.query} == {s.pid for s in sysu.gallery} == {7, 8, 9, 10}
