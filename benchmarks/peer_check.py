"""Check ssbench against the official code yourself: every built-in UNet method's training step (but FixMatch's) and
UniMatch V2's beside the official loop's statements, term by term, at the first, mid-ramp and last iteration where
the loss depends on it; the random draws the steps share compared statistically in production form; the networks,
losses, schedules, EMA updates, augmentations and recipe defaults — against the official UniMatch (medical
branch), SSL4MIS, BCP, ABD, AD-MT and UniMatch V2 code, each imported from a checkout you fetched.

    git clone https://github.com/LiheYoung/UniMatch      # or any checkout of it
    git clone https://github.com/HiLab-git/SSL4MIS
    git clone https://github.com/DeepMed-Lab-ECNU/BCP
    git clone https://github.com/chy-upc/ABD
    git clone https://github.com/ZhenZHAO/AD-MT
    git clone https://github.com/LiheYoung/UniMatch-V2
    python benchmarks/peer_check.py --unimatch UniMatch --ssl4mis SSL4MIS --bcp BCP --abd ABD --admt AD-MT \
        --unimatch-v2 UniMatch-V2 [--draws N]

Any subset of the checkouts can be given. Their code needs what it imports (ABD: einops; BCP and ABD's
largest-component step: scikit-image; UniMatch's strong view: Pillow; ``pip install -e '.[peer]'``); their ``.cuda()`` calls run on the CPU here.

Nothing of their code is copied into ssbench: their files are loaded from your checkout at run time (each module
by its file path, so their generic package names never shadow anything; V2's ``model`` package only while it
loads). Code that lives inside their training scripts (ramp-ups, EMA updates, a training step up to its total
loss) is taken from the script's syntax tree and executed as it is written, without running the script. Where
their code draws random numbers from NumPy (SSL4MIS's FeatureDropout, ICT's Beta), ssbench's draw is replaced by
the same NumPy draw for the comparison, so that both sides see the same numbers, and the production draw has an
item of its own. Prints max |difference| (or the statistic, or the worst difference as a multiple of its
tolerance) per item and EQUAL or DIFFERENT; exit code 1 if any item differs, 2 for a checkout that lacks a file an
item reads. Peak memory (max RSS) at the end. The items live in ``benchmarks/peercheck/``, one module per official repository.
"""

from __future__ import annotations

import argparse
import resource
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the peercheck package beside this file

from peercheck import abd, admt, bcp, ssl4mis, unimatch, unimatch_v2  # noqa: E402
from peercheck.common import Item  # noqa: E402

CHECKOUTS = (("unimatch", unimatch, "LiheYoung/UniMatch"), ("ssl4mis", ssl4mis, "HiLab-git/SSL4MIS"),
             ("bcp", bcp, "DeepMed-Lab-ECNU/BCP"), ("abd", abd, "chy-upc/ABD"), ("admt", admt, "ZhenZHAO/AD-MT"),
             ("unimatch_v2", unimatch_v2, "LiheYoung/UniMatch-V2"))


def report(items: list[Item]) -> list[Item]:
    """One line per item: name, max |difference| or statistic, EQUAL or DIFFERENT, detail. Returns those that differ."""
    width = max(len(i.name) for i in items)
    print(f"{'item':{width}}  {'max |diff| / stat':>18}  verdict")
    for i in items:
        verdict = "EQUAL" if i.ok else "DIFFERENT"
        print(f"{i.name:{width}}  {i.value:>18}  {verdict}" + (f"  ({i.detail})" if i.detail else ""))
    bad = [i for i in items if not i.ok]
    print(f"\n{len(items) - len(bad)} of {len(items)} items equal" + (f"; different: {', '.join(i.name for i in bad)}"
                                                                    if bad else ""))
    return bad


def release_memory() -> None:
    """Collect the previous checkout's objects and hand freed heap back to the system (glibc's malloc_trim, where
    there is one), so that the peak of a run over all six checkouts is about the largest single one's."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for dest, _, repo in CHECKOUTS:
        p.add_argument("--" + dest.replace("_", "-"), dest=dest, type=Path, help=f"a checkout of {repo}")
    p.add_argument("--draws", type=int, default=20000, help="random boxes (and other samples) drawn by each side")
    args = p.parse_args(argv)
    given = [(dest, module) for dest, module, _ in CHECKOUTS if getattr(args, dest) is not None]
    if not given:
        p.error("give at least one checkout (--unimatch, --ssl4mis, --bcp, --abd, --admt, --unimatch-v2)")
    for dest, _ in given:
        if not getattr(args, dest).is_dir():
            p.error(f"--{dest.replace('_', '-')} {getattr(args, dest)}: not a directory")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    warnings.filterwarnings("ignore", category=UserWarning)  # their code uses since-deprecated torch signatures
    warnings.filterwarnings("ignore", category=FutureWarning)
    items: list[Item] = []
    for dest, module in given:
        release_memory()  # one checkout's tensors do not stay resident under the next one's peak
        try:
            items += module.run(getattr(args, dest), args.draws)
        except SystemExit as e:  # a checkout without the file or statement an item reads: one line, exit 2
            if not isinstance(e.code, str):
                raise
            print(e.code, file=sys.stderr)
            return 2
    bad = report(items)
    print(f"peak memory (max RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
