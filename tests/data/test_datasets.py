"""Loaders read the real on-disk formats; splits follow the frozen or seeded protocols; bad files are named."""

import gzip
import json

import numpy as np
import pytest

from formats import nifti, write_acdc_h5, write_acdc_raw
from ssbench.datasets.acdc import ACDC, TEST, TRAIN_ORDER, VAL
from ssbench.datasets.bhsd import BHSD
from ssbench.datasets.nnunet import NNUNet
from ssbench.errors import DataError, UserError
from ssbench.splits import labeled_count


def test_acdc_literature_split():
    s = ACDC.frozen_split("10%")
    assert s.labeled == tuple(f"patient{n}" for n in ("099", "038", "050", "100", "058", "021", "049"))
    assert ACDC.frozen_split("5%").labeled == ("patient099", "patient038", "patient050")
    assert ACDC.frozen_split("3").labeled == ACDC.frozen_split("5%").labeled
    assert ACDC.frozen_split("1").labeled == ("patient099",)
    assert len(ACDC.frozen_split("all").labeled) == 70 and ACDC.frozen_split("all").unlabeled == ()
    assert len(s.unlabeled) == 63 and len(s.val) == 10 and len(s.test) == 20
    everyone = set(TRAIN_ORDER) | set(VAL) | set(TEST)
    assert len(everyone) == 100 and everyone == {f"patient{i:03d}" for i in range(1, 101)}


@pytest.mark.parametrize("bad", ["150%", "0", "abc", "71", "0%", "-3", "1%"])
def test_bad_split_specs(bad):
    with pytest.raises(UserError, match="--split"):
        ACDC.frozen_split(bad)


def test_percent_counts_floor_like_the_literature():
    assert labeled_count("5%", 70) == 3
    assert labeled_count("10%", 70) == 7
    assert labeled_count("20%", 70) == 14
    assert labeled_count("50%", 96) == 48


def test_acdc_raw_layout_written_without_ssbench(tmp_path):
    write_acdc_raw(tmp_path, ["patient001"], shape_xyz=(48, 40, 6), zooms=(1.5, 1.6, 8.0))
    ds = ACDC(tmp_path)
    assert ds.layout == "raw"
    ids = ds.case_ids("patient001")
    assert ids[0] == "patient001_frame01" and ids[1].startswith("patient001_frame")
    case = ds.load_case(ids[0])
    assert case.image.shape == (6, 40, 48)  # slices first, (z, y, x)
    assert case.spacing == pytest.approx((8.0, 1.6, 1.5))
    assert case.image.min() == 0.0 and case.image.max() == 1.0
    assert set(np.unique(case.label)) <= {0, 1, 2, 3}
    assert case.meta["phase"] == "ED"


def test_acdc_h5_layout(tmp_path):
    write_acdc_h5(tmp_path, ["patient001"])
    ds = ACDC(tmp_path)
    assert ds.layout == "h5" and not ds.spacing_known()
    case = ds.load_case("patient001_frame02")
    assert case.image.shape == (6, 40, 48) and case.spacing is None
    # a volume stored only as slices is assembled from the slice files on disk
    (tmp_path / "data" / "patient001_frame01.h5").unlink()
    again = ds.load_case("patient001_frame01")
    assert again.image.shape == (6, 40, 48)


def test_acdc_bad_inputs_name_the_file(tmp_path):
    write_acdc_raw(tmp_path, ["patient001", "patient002", "patient003", "patient004", "patient005"])
    ds = ACDC(tmp_path)
    folder = tmp_path / "training"
    (folder / "patient001" / "Info.cfg").unlink()
    with pytest.raises(DataError, match="patient001/Info.cfg: missing"):
        ds.case_ids("patient001")
    gt = folder / "patient002" / "patient002_frame01_gt.nii.gz"
    gt.write_bytes(gt.read_bytes()[:200])  # truncated
    with pytest.raises(DataError, match="patient002_frame01_gt.nii.gz: cannot read"):
        ds.load_case("patient002_frame01")
    nifti(folder / "patient003" / "patient003_frame01_gt.nii.gz", np.zeros((10, 10, 6)), (1.5, 1.6, 8.0), np.uint8)
    with pytest.raises(DataError, match="does not match image shape"):
        ds.load_case("patient003_frame01")
    bad = np.zeros((48, 40, 6))
    bad[3, 3, 3] = 7
    nifti(folder / "patient004" / "patient004_frame01_gt.nii.gz", bad, (1.5, 1.6, 8.0), np.uint8)
    with pytest.raises(DataError, match=r"label values \[7\] outside"):
        ds.load_case("patient004_frame01")
    (folder / "patient005" / "patient005_frame01_gt.nii.gz").unlink()
    with pytest.raises(DataError, match="missing label file"):
        ds.load_case("patient005_frame01")
    with pytest.raises(DataError, match="missing patient folder"):
        ds.case_ids("patient050")


def test_empty_root_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no ACDC data found"):
        ACDC(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        ACDC(tmp_path / "nope")


def test_bhsd_phantom_split_storage_and_window(bhsd_phantom):
    ds = BHSD(bhsd_phantom)
    spec = json.loads((bhsd_phantom / "dataset.json").read_text())
    official_test = sorted(e.split("/")[-1][: -len(".nii.gz")] for e in spec["test"])
    s = ds.split("10%", seed=3)
    assert list(s.test) == official_test
    assert set(s.labeled).isdisjoint(s.val) and set(s.labeled).isdisjoint(s.test)
    assert len(s.labeled) == 1  # 10% of the 18 training volumes left after val
    assert ds.split("10%", seed=3) == s
    assert ds.split("10%", seed=4).val == s.val and ds.split("10%", seed=4).test == s.test
    assert len(s.unlabeled) == 18 - 1 + 10
    storages = {ds.load_case(c, False).meta["storage"] for c in s.test[:4]}
    assert storages == {"hu", "stored"}
    case = ds.load_case(s.test[0])
    assert case.image.dtype == np.float32 and 0 <= case.image.min() and case.image.max() <= 1
    assert case.label.max() <= 5 and case.spacing[0] in (2.5, 5.0, 6.5)


def test_bhsd_storage_detection_gives_the_same_hu(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 1500, (20, 20, 4)).astype(np.int16)
    lab = np.zeros((20, 20, 4), np.uint8)
    lab[5:8, 5:8, 1] = 2
    nifti(tmp_path / "images" / "ID_a_ID_b.nii.gz", hu, (0.49, 0.49, 5.0), np.int16)
    nifti(tmp_path / "images" / "ID_c_ID_d.nii.gz", hu + 1024, (0.49, 0.49, 5.0), np.uint16)
    for name in ("ID_a_ID_b", "ID_c_ID_d"):
        nifti(tmp_path / "ground truths" / f"{name}.nii.gz", lab, (0.49, 0.49, 5.0), np.uint8)
    ds = BHSD(tmp_path)
    a, b = ds.load_case("ID_a_ID_b"), ds.load_case("ID_c_ID_d")
    assert a.meta["storage"] == "hu" and b.meta["storage"] == "stored"
    np.testing.assert_allclose(a.image, b.image)
    expected = (np.clip(hu.transpose(2, 1, 0).astype(float), -50, 200) + 50) / 250
    np.testing.assert_allclose(a.image, expected, atol=1e-6)


def test_nnunet_v2_dataset(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "organ": 1, "tumor": 2},
        "numTraining": 12, "file_ending": ".nii.gz"}))
    for i in range(12):
        img = rng.random((24, 24, 5))
        lab = (img > 0.7).astype(np.uint8) + (img > 0.9)
        nifti(tmp_path / "imagesTr" / f"case_{i:03d}_0000.nii.gz", img * 100, (1.0, 1.0, 3.0), np.float32)
        nifti(tmp_path / "labelsTr" / f"case_{i:03d}.nii.gz", lab, (1.0, 1.0, 3.0), np.uint8)
    nifti(tmp_path / "imagesTs" / "case_100_0000.nii.gz", rng.random((24, 24, 5)), (1.0, 1.0, 3.0), np.float32)
    ds = NNUNet(tmp_path)
    assert ds.class_names == ("organ", "tumor") and ds.num_classes == 3
    s = ds.split("2", seed=0)  # imagesTs without labelsTs: left out unless asked for (tests/data/test_nnunet.py)
    assert len(s.labeled) == 2 and "Ts:case_100" not in s.unlabeled
    assert len(set(s.labeled) | set(s.unlabeled) | set(s.val) | set(s.test)) == 12
    case = ds.load_case(s.test[0])
    assert case.image.shape == (5, 24, 24) and case.spacing == (3.0, 1.0, 1.0)
    pooled = NNUNet(tmp_path, NNUNet.Options(imagesTs="unlabeled"))
    assert "Ts:case_100" in pooled.split("2", seed=0).unlabeled
    unl = pooled.load_case("Ts:case_100", with_label=False)
    assert unl.label is None


def test_gzip_corruption_is_a_data_error(tmp_path):
    write_acdc_raw(tmp_path, ["patient001"])
    img = tmp_path / "training" / "patient001" / "patient001_frame01.nii.gz"
    raw = gzip.decompress(img.read_bytes())
    img.write_bytes(gzip.compress(raw)[:-30])
    with pytest.raises(DataError, match="patient001_frame01.nii.gz"):
        ACDC(tmp_path).load_case("patient001_frame01")
