#!/usr/bin/env bash
# The GPU checks of the issues, as one script for a lent GPU machine without network access. It expects the
# pure-Python wheels of what the machine lacks in .devwheels/ (sam2, hydra-core, omegaconf, antlr4, iopath,
# nibabel, medpy: `SAM2_BUILD_CUDA=0 pip wheel --no-deps -w .devwheels sam2==1.1.0 ...`) and writes to $OUT.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps .devwheels/*.whl 2>&1 | tail -2
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
echo "== UNet methods, published batch 12+12 at 256x256, fp32"
timeout 150 python3 benchmarks/step_timing.py --methods supervised mean-teacher unimatch fixmatch --size 256 \
    --batch 12 --steps 20 --warmup 5 | tee "$OUT/unet_steps.txt"
echo "== SSS, batch 4+4, bf16 autocast"
timeout 240 python3 benchmarks/sss_step.py --gpu --sizes 512 1024 | tee "$OUT/sss_steps.txt"
echo "== an end-to-end GPU run (embedded phantom, short)"
export SSBENCH_CACHE=/tmp/ssbench-cache
timeout 150 ssbench run --method unimatch --split 3 --iters 300 --device cuda --quiet --out /tmp/res \
    --set train.batch_labeled=12 --set train.batch_unlabeled=12 --set train.val_every=100 2>&1 | tail -12 | tee "$OUT/run.txt"
