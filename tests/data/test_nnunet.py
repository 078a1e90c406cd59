"""The nnU-Net loader keeps nnU-Net's protocol and says every choice (issue 29, item 1): imagesTs/ with labelsTs/ is
the test set, imagesTs/ alone is left out unless made the unlabeled pool, val comes from splits_final.json and test
from a list, several channels are refused unless one is chosen, patients are grouped by a rule; each choice is in
the split protocol, printed at the start of a run and recorded in run.json. ``data synth --dataset nnunet`` writes
such a folder, marked as a phantom."""

import json
import shutil

import numpy as np
import pytest

from conftest import TINY_RUN, one_line
from formats import nifti, write_nnunet
from ssbench.datasets.nnunet import NNUNet
from ssbench.errors import DataError


@pytest.fixture
def raw(tmp_path, tiny_nnunet):
    """The tiny dataset (10 cases in imagesTr) with 3 more cases moved to imagesTs/ and labelsTs/."""
    root = shutil.copytree(tiny_nnunet, tmp_path / "Dataset002_Ts")
    for i in range(7, 10):
        (root / "imagesTs").mkdir(exist_ok=True)
        (root / "labelsTs").mkdir(exist_ok=True)
        shutil.move(root / "imagesTr" / f"case_{i:03d}_0000.nii.gz", root / "imagesTs" / f"case_{i:03d}_0000.nii.gz")
        shutil.move(root / "labelsTr" / f"case_{i:03d}.nii.gz", root / "labelsTs" / f"case_{i:03d}.nii.gz")
    return root


def _options(**kw):
    return NNUNet.Options(**kw)


def test_images_ts_with_labels_ts_is_the_test_set_and_never_trains(raw):
    ds = NNUNet(raw)
    s = ds.split("2", 0)
    assert s.test == ("Ts:case_007", "Ts:case_008", "Ts:case_009")
    assert not {c for c in s.labeled + s.unlabeled + s.val if c.startswith("Ts:")}
    assert len(s.labeled + s.unlabeled + s.val) == 7  # every imagesTr case trains or validates
    case = ds.load_case("Ts:case_008")  # its label from labelsTs/
    assert case.label is not None and case.label.max() >= 1
    assert "test = imagesTs/ with labelsTs/" in s.protocol and "one case = one patient" in s.protocol


def test_images_ts_without_labels_is_left_out_unless_it_is_made_the_unlabeled_pool(raw):
    shutil.rmtree(raw / "labelsTs")
    ds = NNUNet(raw)
    s = ds.split("2", 0)
    assert not any(c.startswith("Ts:") for c in s.labeled + s.unlabeled + s.val + s.test)
    assert "imagesTs = left out" in s.protocol and any("imagesTs/ is left out" in w for w in ds.warnings())
    pooled = NNUNet(raw, _options(imagesTs="unlabeled"))
    p = pooled.split("2", 0)
    assert {"Ts:case_007", "Ts:case_008", "Ts:case_009"} <= set(p.unlabeled)
    assert "UNLABELED training pool" in p.protocol and any("seen in training" in w for w in pooled.warnings())
    with pytest.raises(DataError, match="nnunet.imagesTs=test: .*labelsTs is missing"):
        NNUNet(raw, _options(imagesTs="test"))


def test_val_from_splits_final_json_and_test_from_a_list(tiny_nnunet, tmp_path):
    root = shutil.copytree(tiny_nnunet, tmp_path / "d")
    folds = [{"train": [f"case_{i:03d}" for i in range(10) if i not in (3, 4)], "val": ["case_003", "case_004"]},
             {"train": [], "val": ["case_005"]}]
    (root / "splits_final.json").write_text(json.dumps(folds))  # nnU-Net's format, in the raw folder
    (root / "test.txt").write_text("case_000\ncase_001\n")
    ds = NNUNet(root, _options(test_list="test.txt"))
    s = ds.split("2", 0)
    assert s.val == ("case_003", "case_004") and s.test == ("case_000", "case_001")
    assert "val = splits_final.json fold 0" in s.protocol and "test = test.txt" in s.protocol
    assert NNUNet(root, _options(fold=1)).split("2", 0).val == ("case_005",)
    assert NNUNet(root, _options(splits_file="none")).split("2", 0).val != ("case_003", "case_004")
    with pytest.raises(DataError, match="has no fold 2"):
        NNUNet(root, _options(fold=2))
    (root / "test.txt").write_text("case_003\n")
    with pytest.raises(DataError, match="case_003 is in the test list and in the val list"):
        NNUNet(root, _options(test_list="test.txt"))


def test_several_channels_are_refused_in_one_line_unless_one_is_chosen(cli, tiny_nnunet, tmp_path):
    root = shutil.copytree(tiny_nnunet, tmp_path / "mc")
    spec = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**spec, "channel_names": {"0": "T2", "1": "ADC"}}))
    for i in range(10):
        nifti(root / "imagesTr" / f"case_{i:03d}_0001.nii.gz", np.full((32, 32, 4), 7.0), (1.2, 1.2, 5.0),
              np.float32)
    code, _, err = cli("run", "--method", "supervised", "--data-root", root, "--out", tmp_path / "r", *TINY_RUN)
    one_line(code, err, "dataset.json", "2 input channels (0000 T2, 0001 ADC)", "--set nnunet.channel=N")
    assert not (tmp_path / "r").exists()
    adc = NNUNet(root, _options(channel=1))
    assert adc.load_case("case_002").meta["source"].endswith("case_002_0001.nii.gz")
    assert "channel 0001 (ADC) of 2" in adc.split("2", 0).protocol


def test_patients_are_grouped_by_the_given_rule_and_never_split_across_sets(tmp_path):
    root = write_nnunet(tmp_path / "g", cases=12)
    for i in range(12):  # case_000 .. case_011 -> patients p0 .. p5, two scans each
        for folder, suffix in (("imagesTr", "_0000"), ("labelsTr", "")):
            (root / folder / f"case_{i:03d}{suffix}.nii.gz").rename(
                root / folder / f"p{i // 2}_scan{i % 2}{suffix}.nii.gz")
    ds = NNUNet(root, _options(patient_pattern=r"^(p\d+)_"))
    assert ds.patients() == [f"p{k}" for k in range(6)] and ds.case_ids("p3") == ["p3_scan0", "p3_scan1"]
    s = ds.split("1", 0)
    sets = [s.labeled, s.unlabeled, s.val, s.test]
    assert sorted(p for x in sets for p in x) == ds.patients()  # each patient, with all its cases, in one set
    assert "patients by nnunet.patient_pattern" in s.protocol
    assert ds.load_case("p3_scan1").patient_id == "p3"
    default = NNUNet(root).split("1", 0)
    assert len([c for x in (default.labeled, default.unlabeled, default.val, default.test) for c in x]) == 12
    (root / "splits_final.json").write_text(json.dumps([{"train": [], "val": ["p1_scan0"]}]))
    with pytest.raises(DataError, match="patient p1 has case p1_scan1 outside this list"):
        NNUNet(root, _options(patient_pattern=r"^(p\d+)_"))


@pytest.mark.slow
def test_every_choice_is_printed_at_the_start_and_recorded(cli, raw, tmp_path):
    args = [a for a in TINY_RUN if a != "--quiet"]
    code, out, err = cli("run", "--method", "supervised", "--data-root", raw, "--out", tmp_path / "r", *args)
    assert code == 0, err
    text = " ".join(out.split())  # the console wraps long lines
    start = text.split("split protocol:")[1].split("NOTE")[0]
    assert "test = imagesTs/ with labelsTs/" in start and "one case = one patient" in start
    assert text.index("NOTE: nnU-Net: every case counts as its own patient") < text.index("results:")
    run = tmp_path / "r" / "nnunet" / "supervised" / "2" / "seed1337"
    info = json.loads((run / "run.json").read_text())
    assert info["data"]["imagesTs"] == "test" and info["data"]["test_from"].startswith("imagesTs/")
    assert any("its own patient" in w for w in info["warnings"])
    assert json.loads((run / "split.json").read_text())["test"] == ["Ts:case_007", "Ts:case_008", "Ts:case_009"]
    assert "imagesTs: auto" in (run / "config.yaml").read_text()  # the option itself, in the config and its hash


@pytest.mark.slow
def test_data_synth_nnunet_writes_a_marked_phantom_that_runs_are_filed_under(cli, tmp_path):
    from ssbench.engine.plan import RunRequest, build_config, dataset_tag

    out = tmp_path / "Dataset900_Phantom"
    code, text, err = cli("data", "synth", "--dataset", "nnunet", "--out", out)
    assert code == 0, err
    assert json.loads((out / "PHANTOM.json").read_text())["kind"] == "nnunet"
    ds = NNUNet(out, _options(patient_pattern=r"^(pat\d+)_"))
    s = ds.split("4", 0)
    assert len(s.test) == 4 and all(c.startswith("Ts:") for p in s.test for c in ds.case_ids(p))  # imagesTs
    assert "val = splits_final.json fold 0" in s.protocol and len(s.val) == 4
    cfg, _, _ = build_config(RunRequest(method="supervised", dataset="nnunet", data_root=str(out), split="4"))
    assert cfg.data.synthetic and dataset_tag(cfg) == "nnunet-phantom"
