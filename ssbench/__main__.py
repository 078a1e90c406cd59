"""``python -m ssbench ...`` (e.g. under ``torchrun --nproc-per-node N -m ssbench run ...``)."""

from ssbench.cli import main

main()
