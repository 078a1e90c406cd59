"""Test helper, run as a script: the real ``ssbench`` CLI in this process, killed with SIGKILL at a chosen point.

    python crash_driver.py POINT ssbench-arguments...

POINT: ``train:K`` (as step K, 0-based, of the supervised baseline starts), ``step:K`` (as the engine starts its
K-th step, 0-based, counted in this process: any method, stages included), ``evaluate`` (as the final checkpoint's test evaluation starts),
``write:NAME[:N]`` (the N-th write of results file NAME, after its data reached the temporary file and before the
rename), ``publish`` (between moving a replaced run aside and moving the new one in). The kill comes from a
function replaced here, in the test: the product has no hook for it.
"""

import os
import signal
import sys
from pathlib import Path


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> None:
    kind, _, arg = point.partition(":")
    if kind == "train":
        from ssbench.methods.supervised import Supervised

        step, original = int(arg), Supervised.training_step

        def training_step(self, labeled, unlabeled, info):
            if info.iteration == step:
                die()
            return original(self, labeled, unlabeled, info)

        Supervised.training_step = training_step
    elif kind == "step":
        from ssbench.engine import train

        step, original, seen = int(arg), train.train_step, [0]

        def train_step(*args, **kwargs):
            if seen[0] == step:
                die()
            seen[0] += 1
            return original(*args, **kwargs)

        train.train_step = train_step
    elif kind == "evaluate":
        from ssbench.engine import evaluate

        original = evaluate.evaluate_cases

        def evaluate_cases(method, cases, dataset, cfg, device, checkpoint, predictions=None):
            if checkpoint == "final":
                die()
            return original(method, cases, dataset, cfg, device, checkpoint, predictions)

        evaluate.evaluate_cases = evaluate_cases
    elif kind in ("write", "publish"):
        name, _, nth = arg.partition(":")
        seen, original = [0], os.replace

        def replace(src, dst, *args, **kwargs):
            if kind == "write" and Path(dst).name == name:
                seen[0] += 1
                if seen[0] == int(nth or 1):
                    die()
            if kind == "publish" and str(src).endswith(".incomplete") and not str(dst).endswith(".incomplete"):
                die()
            return original(src, dst, *args, **kwargs)

        os.replace = replace
    else:
        raise SystemExit(f"unknown point {point}")


if __name__ == "__main__":
    arm(sys.argv[1])
    sys.argv = ["ssbench", *sys.argv[2:]]
    from ssbench.cli import main

    main()
