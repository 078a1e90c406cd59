"""Memory and start-up time of the data path as the unlabeled pool grows (issue 26: BHSD at its real size).

    python benchmarks/data_scale.py                       # N = 50, 150, 400 unlabeled volumes of 512 x 512 x 32
    python benchmarks/data_scale.py --sizes 8 16 32       # smaller, for a loaded machine
    python benchmarks/data_scale.py --tiny                # 64 x 64 x 4 volumes, N = 2, 3, 4 (CI: the script runs)

For each N it writes a BHSD-layout folder (``images/``, ``ground truths/``, ``dataset.json`` and N volumes under
``unlabeled/``; int16 HU, gzip NIfTI, BHSD's 512 x 512 x 32) and prints: the time of ``ssbench data prepare``, the
time from a run's start to its first training step and its peak RSS (a short Mean Teacher run, and a short SSS
run), the reader's throughput in slices per second with 0, 1 and 2 DataLoader workers (512^2 slices read from the
cache, weakly augmented, resized to 256^2), and the cache's disk use; for the smallest N also today's in-memory path
(``--data-cache off``). Each run is its own process, so its peak RSS (``ru_maxrss``, file pages it mapped included)
is its own. The volumes are copies of four distinct head-CT-like volumes: decoding and reading cost the same.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SRC = HERE.parent
TARGET_SLICES_PER_S = 1200  # one H100, UniMatch at 12 + 12 slices per step and 50 it/s

# One process's run: the time from execute() (config, data opened, method built) to its first training step, and
# the imports before it (torch, the methods: the same at every N).
DRIVER = r"""
import json, resource, sys, time
t0 = time.time()
from ssbench.engine import train as train_mod
from ssbench.engine.plan import RunRequest
from ssbench.engine.run import execute
first = {}
step = train_mod.train_step
def timed(*a, **k):
    first.setdefault("s", time.time())
    return step(*a, **k)
train_mod.train_step = timed
req = RunRequest(**json.loads(sys.argv[1]))
t1 = time.time()
execute(req)
print("RESULT " + json.dumps({"first_step_s": first["s"] - t1, "imports_s": t1 - t0,
                              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_release(root: Path, n_unlabeled: int, shape: tuple[int, int, int], labeled: int, bases: list) -> None:
    """A BHSD-layout folder: ``labeled`` scans with masks (dataset.json: half training, half test) and
    ``n_unlabeled`` without, each a copy of one of the ``bases`` gzip NIfTI files: every labeled scan its own base,
    the unlabeled ones copies of the others (a val or test scan among the unlabeled is refused by the run)."""
    if len(bases) <= labeled:
        raise SystemExit(f"data_scale: {len(bases)} base volumes for {labeled} labeled scans: need one more")
    (root / "images").mkdir(parents=True)
    (root / "ground truths").mkdir()
    (root / "unlabeled" / "nobleed").mkdir(parents=True)
    names = [f"ID_l{k:04d}" for k in range(labeled)]
    for k, name in enumerate(names):
        image, label = bases[k]
        shutil.copyfile(image, root / "images" / f"{name}.nii.gz")
        shutil.copyfile(label, root / "ground truths" / f"{name}.nii.gz")
    for k in range(n_unlabeled):
        extra = bases[labeled:]
        shutil.copyfile(extra[k % len(extra)][0], root / "unlabeled" / "nobleed" / f"ID_u{k:05d}.nii.gz")
    half = labeled // 2 + 1
    spec = {"training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names[:half]],
            "test": [f"./imagesTs/{n}.nii.gz" for n in names[half:]]}
    (root / "dataset.json").write_text(json.dumps(spec))


def make_bases(folder: Path, shape: tuple[int, int, int], count: int = 4) -> list:
    """``count`` distinct head-CT-like volumes (HU, int16) with lesion masks, as gzip NIfTI files."""
    from ssbench.datasets.nifti import write_nifti
    from ssbench.datasets.synthetic import _head_volume

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    d, h, w = shape
    for k in range(count):
        rng = np.random.default_rng(k)
        hu, label = _head_volume(rng, d, h, w, 0.45)
        hu = hu + rng.normal(0, 8, hu.shape).astype(np.float32)  # scanner noise: real CT compresses like this
        image, mask = folder / f"image{k}.nii.gz", folder / f"label{k}.nii.gz"
        write_nifti(image, np.round(hu).astype(np.int16), (5.0, 0.45, 0.45), np.int16)
        write_nifti(mask, label.astype(np.uint8), (5.0, 0.45, 0.45), np.uint8)
        out.append((image, mask))
    return out


def cli(*args: str, env: dict) -> float:
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "ssbench.cli", *args], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"data_scale: ssbench {' '.join(args[:2])} failed:\n{proc.stderr[-2000:]}")
    return time.time() - t0


def run_once(request: dict, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(request)], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"data_scale: the {request['method']} run failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def reader_throughput(root: Path, cache_dir: Path, workers: int, batches: int, size: int) -> float:
    """Slices per second of the training reader over the unlabeled pool (read, weak augmentation, resize)."""
    from ssbench.datasets.bhsd import BHSD
    from ssbench.datasets.cache import PreparedData
    from ssbench.engine.data import Sampler, SlicePool
    from ssbench.engine.run import load_cases

    data = PreparedData(BHSD(root), cache_dir)
    split = data.split("2", 0)
    pool = SlicePool.from_cases(load_cases(data, split.unlabeled, False), False)
    sampler = Sampler(pool, 12, seed=0, size=size, workers=workers)
    sampler.next("cpu")  # workers started, first pages read
    t0 = time.time()
    for _ in range(batches):
        sampler.next("cpu")
    rate = 12 * batches / (time.time() - t0)
    sampler.close()
    return rate


def du(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs=3, type=int, default=None, help="three numbers of unlabeled volumes")
    p.add_argument("--tiny", action="store_true", help="64 x 64 x 4 volumes, N = 2, 3, 4, no SSS run")
    p.add_argument("--labeled", type=int, default=None, help="labeled scans (default 8; --tiny 6)")
    p.add_argument("--batches", type=int, default=None, help="reader batches of 12 timed per worker count")
    p.add_argument("--no-sss", action="store_true", help="skip the SSS runs")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, deleted)")
    args = p.parse_args(argv)
    shape = (4, 64, 64) if args.tiny else (32, 512, 512)
    sizes = args.sizes or ([2, 3, 4] if args.tiny else [50, 150, 400])
    labeled = args.labeled or (6 if args.tiny else 8)
    batches = args.batches or (2 if args.tiny else 20)
    workers_list = (0, 1) if args.tiny else (0, 1, 2)
    train_size = 32 if args.tiny else 256
    with_sss = not (args.tiny or args.no_sss)
    work = args.work or Path(tempfile.mkdtemp(prefix="ssbench-data-scale-"))
    import torch

    from hardware import describe

    print(f"hardware: {describe(torch.device('cpu'))}, {os.cpu_count()} cores; volumes {shape[0]} x {shape[1]} x "
          f"{shape[2]} int16 gzip NIfTI, {labeled} labeled; figures measured as they come (on a loaded machine "
          "they are upper bounds)", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    bases = make_bases(work / "bases", shape, labeled + 2)  # the labeled scans distinct, two bases for the rest
    rows = []
    try:
        for n in sizes:
            root, cache_dir, out = work / f"bhsd-{n}", work / f"cache-{n}", work / f"results-{n}"
            write_release(root, n, shape, labeled, bases)
            run_env = {**env, "SSBENCH_DATA_CACHE": str(cache_dir)}
            row = {"N": n, "prepare_s": cli("data", "prepare", "--dataset", "bhsd", "--data-root", str(root),
                                            env=run_env)}
            row["disk_gib"] = du(cache_dir) / 2**30
            common = {"dataset": "bhsd", "data_root": str(root), "split": "2", "iters": 2, "device": "cpu",
                      "quiet": True, "overwrite": True,
                      "sets": [f"data.train_size={train_size}", "train.batch_labeled=2", "train.batch_unlabeled=2",
                               "train.val_every=1000", "train.eval_batch=8"]}
            mt = run_once({**common, "method": "mean-teacher", "out": str(out)}, run_env)
            row.update(mt_first_step_s=mt["first_step_s"], mt_peak_rss_mb=mt["peak_rss_mb"], imports_s=mt["imports_s"])
            if with_sss:
                sss = run_once({**common, "method": "sss", "out": str(out),
                                "sets": [*common["sets"][1:], "data.train_size=64", "sss.model=sam2.1_hiera_t",
                                         "sss.init=random"]}, run_env)
                row.update(sss_first_step_s=sss["first_step_s"], sss_peak_rss_mb=sss["peak_rss_mb"])
            for w in workers_list:
                row[f"reader_{w}w_slices_per_s"] = reader_throughput(root, cache_dir, w, batches,
                                                                     128 if args.tiny else 256)
            if n == sizes[0]:
                memory = run_once({**common, "method": "mean-teacher", "out": str(work / "results-memory"),
                                   "data_cache": "off"}, env)
                row.update(memory_mt_first_step_s=memory["first_step_s"], memory_mt_peak_rss_mb=memory["peak_rss_mb"])
            rows.append(row)
            print("  " + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)
            shutil.rmtree(cache_dir, ignore_errors=True)  # the disk of the next N
            shutil.rmtree(out, ignore_errors=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report(rows, workers_list)
    return rows


def report(rows: list[dict], workers_list) -> None:
    print("\n| N unlabeled | prepare s | disk GiB | MT first step s | MT peak RSS MB | SSS first step s | "
          "SSS peak RSS MB | " + " | ".join(f"reader {w}w slices/s" for w in workers_list) + " |")
    print("|" + "---|" * (7 + len(workers_list)))
    for r in rows:
        cells = [r["N"], f"{r['prepare_s']:.1f}", f"{r['disk_gib']:.2f}", f"{r['mt_first_step_s']:.1f}",
                 f"{r['mt_peak_rss_mb']:.0f}", _fmt(r.get("sss_first_step_s"), 1), _fmt(r.get("sss_peak_rss_mb"), 0),
                 *[f"{r[f'reader_{w}w_slices_per_s']:.0f}" for w in workers_list]]
        print("| " + " | ".join(map(str, cells)) + " |")
    first, last = rows[0], rows[-1]
    print(f"in-memory path (--data-cache off), N={first['N']}: first step {first['memory_mt_first_step_s']:.1f} s, "
          f"peak RSS {first['memory_mt_peak_rss_mb']:.0f} MB")
    ratio = last["mt_peak_rss_mb"] / first["mt_peak_rss_mb"]
    print(f"target peak RSS at N={last['N']} <= 1.2 x N={first['N']}: {ratio:.2f} x -> "
          f"{'MET' if ratio <= 1.2 else 'NOT MET'}")
    worst = max(r["mt_first_step_s"] for r in rows)
    print(f"target first training step <= 10 s at every N (from the run's start; the imports before it took "
          f"{max(r['imports_s'] for r in rows):.1f} s): worst {worst:.1f} s -> {'MET' if worst <= 10 else 'NOT MET'}")
    if 1 in workers_list:
        per_worker = first["reader_1w_slices_per_s"]
        print(f"reader: {per_worker:.0f} slices/s per worker here; UniMatch on one H100 (12 + 12 slices, 50 it/s) "
              f"needs {TARGET_SLICES_PER_S} slices/s: {math.ceil(TARGET_SLICES_PER_S / per_worker)} workers of this "
              "speed (or the device path: augment_on_device, where the host only reads)")


def _fmt(v, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
