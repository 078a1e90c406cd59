"""`ssbench table` never imports torch or the methods (import rule): run the command in a fresh interpreter, on
results whose figures need the dataset loader (overlays), and read sys.modules at the end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from formats import write_acdc_raw
from report_runs import write_run

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys
from ssbench.cli import main
sys.argv = ["ssbench", "table", "--results", sys.argv[1], "--out", sys.argv[2]]
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "ssbench.methods", "ssbench.engine",
                                                                       "sam2")))
print(json.dumps({"code": code, "heavy": heavy, "datasets": "ssbench.datasets.acdc" in sys.modules}))
"""


def test_table_never_imports_torch_or_the_methods(tmp_path):
    data = write_acdc_raw(tmp_path / "data", ["patient001"])
    cases = [f.name.replace("_gt.nii.gz", "") for f in sorted((data / "training" / "patient001").glob("*_gt.nii.gz"))]
    labels = {c: np.asarray(nib.load(data / "training" / "patient001" / f"{c}_gt.nii.gz").dataobj)
              .transpose(2, 1, 0).astype(np.uint8) for c in cases}
    root = tmp_path / "results"
    for m, shift in (("supervised", 0.0), ("unimatch", 0.1)):
        write_run(root, m, "3", 1, cases=cases, shift=shift, predictions=labels, settings={"data.root": str(data)})
    out = tmp_path / "paper"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(root), str(out)], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["code"] == 0, proc.stdout
    assert report["datasets"], "the overlays did not load the dataset: the check would prove little"
    assert (out / "figures" / "overlays_acdc_3labeled.png").is_file()
    assert report["heavy"] == []
