"""A val or test scan in the unlabeled pool under another file name is found by its voxels before anything trains
(datasets/duplicates.py)."""

import shutil

from conftest import one_line
from formats import write_nnunet


def test_a_renamed_test_scan_among_the_unlabeled_stops_the_run(tmp_path, cli):
    root = write_nnunet(tmp_path / "Dataset001_Tiny")
    (root / "imagesTs").mkdir()
    for p in sorted((root / "imagesTr").glob("*.nii.gz")):  # every scan again, renamed: val and test among them
        shutil.copy(p, root / "imagesTs" / p.name.replace("case_", "extra_"))
    code, _, err = cli("run", "--method", "sss", "--dataset", "nnunet", "--data-root", root, "--split", "2",
                       "--iters", "1", "--out", tmp_path / "out", "--set", "sss.init=random",
                       "--set", "nnunet.imagesTs=unlabeled",  # imagesTs without labelsTs: the unlabeled pool, as asked
                       "--set", "sss.model=sam2.1_hiera_t", "--set", "data.train_size=64")  # small, were it to train
    one_line(code, err, "imagesTs/extra_", "the same voxels as", "imagesTr/case_")
    assert not list((tmp_path / "out").rglob("metrics_per_case.csv"))


def test_distinct_scans_pass(tmp_path):
    import numpy as np

    from ssbench.datasets.base import Case
    from ssbench.datasets.duplicates import check_unlabeled_against, held_out_hashes

    a = Case("a", "a", np.zeros((2, 3, 3), np.float32), None, None, {"source": "a.nii.gz"})
    b = Case("b", "b", np.ones((2, 3, 3), np.float32), None, None, {"source": "b.nii.gz"})
    check_unlabeled_against([a], held_out_hashes([b], "test"))
