"""The benchmarks cannot rot: each runs in its tiny CPU mode here (CI), prints the hardware and settings of its
figures, and judges a target only on the hardware and settings it is for."""

import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_SETS

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import hardware  # noqa: E402


def test_train_step_tiny_runs_every_unet_method_and_judges_no_target_on_a_cpu(capsys):
    import train_step

    rows = train_step.main(["--tiny", "--device", "cpu"])
    assert {r["method"] for r in rows} == {"supervised", "mean-teacher", "unimatch", "fixmatch"}
    assert all(r["it_per_s"] > 0 for r in rows)
    printed = capsys.readouterr().out
    assert printed.startswith("hardware: CPU") and "not a speed figure" in printed
    assert "MET" not in printed.replace("not judged", "")  # a CPU figure is never judged against an H100 target


def test_a_target_is_judged_only_on_its_hardware_and_settings(monkeypatch):
    target = hardware.Target("UniMatch it/s", 50.0, True, "H100", {"batch": 12, "size": 256})
    cuda = torch.device("cuda")
    monkeypatch.setattr(hardware, "device_name", lambda device: "NVIDIA H200")  # a stand-in device
    assert "not judged (this is NVIDIA H200)" in target.judge(80, cuda, {"batch": 12, "size": 256})
    monkeypatch.setattr(hardware, "device_name", lambda device: "NVIDIA H100 80GB HBM3")
    assert target.judge(51, cuda, {"batch": 12, "size": 256}).startswith("MET")
    assert target.judge(49, cuda, {"batch": 12, "size": 256}).startswith("NOT MET")
    assert "not judged (measured with batch 4)" in target.judge(99, cuda, {"batch": 4, "size": 256})


def test_step_timing_and_amp_parity_tiny(capsys, tiny_nnunet, tmp_path):
    import amp_parity
    import step_timing

    rows = step_timing.main(["--tiny", "--methods", "supervised", "mean-teacher", "--device", "cpu"])
    assert [r["method"] for r in rows] == ["supervised", "mean-teacher"] and all(r["s_per_step"] > 0 for r in rows)
    result = amp_parity.main(["--tiny", "--method", "supervised", "--dataset", "nnunet", "--data-root",
                              str(tiny_nnunet), "--split", "2", "--device", "cpu", "--out", str(tmp_path),
                              *[x for s in TINY_SETS for x in ("--set", s)]])
    assert list(result["table"].index) == [1, 2] and list(result["table"].columns) == ["bf16", "off"]
    printed = capsys.readouterr().out
    assert printed.count("hardware: CPU") == 2 and "verdict: bf16" in printed


@pytest.mark.slow
def test_sss_step_tiny(capsys):
    import sss_step

    printed = sss_step.main(["--tiny"])
    assert printed[0].startswith("hardware: CPU") and any(line.startswith("sss default") for line in printed)
    assert any(line.startswith("sss frozen") for line in printed)
    assert sum("not judged (this is CPU)" in line for line in printed) == 3  # default: 1 target, frozen: 2


@pytest.mark.slow
def test_data_scale_tiny(capsys):
    import data_scale

    rows = data_scale.main(["--tiny"])
    assert [r["N"] for r in rows] == [2, 3, 4]
    assert all(r["prepare_s"] > 0 and r["disk_gib"] > 0 and r["mt_peak_rss_mb"] > 0 for r in rows)
    assert all(r["reader_0w_slices_per_s"] > 0 and r["reader_1w_slices_per_s"] > 0 for r in rows)
    assert "memory_mt_peak_rss_mb" in rows[0]
    printed = capsys.readouterr().out
    assert printed.startswith("hardware: CPU") and "| N unlabeled |" in printed and "in-memory path" in printed
