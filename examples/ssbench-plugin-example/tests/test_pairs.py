import numpy as np
import pytest

from ssbench.api import DataError, write_nifti
from ssbench_plugin_example.pairs import Pairs


def test_cases_split_and_load(pairs_root):
    ds = Pairs(pairs_root)
    assert ds.patients() == [f"case{i:02d}" for i in range(10)]
    split = ds.split("2", seed=1)
    assert len(split.labeled) == 2 and len(split.val) == 2 and len(split.test) == 2 and len(split.unlabeled) == 4
    assert not set(split.labeled) & set(split.test)
    case = ds.load_case(split.labeled[0])
    assert case.image.shape == case.label.shape == (6, 40, 48) and case.spacing == (5.0, 1.0, 1.0)
    assert 0.0 <= case.image.min() and case.image.max() <= 1.0 and set(np.unique(case.label)) == {0, 1}


def test_a_label_outside_the_classes_names_the_file(pairs_root):
    write_nifti(pairs_root / "labels" / "case03.nii.gz", np.full((6, 40, 48), 2), (5.0, 1.0, 1.0), np.uint8)
    with pytest.raises(DataError, match="case03.nii.gz.*outside"):
        Pairs(pairs_root).load_case("case03")
