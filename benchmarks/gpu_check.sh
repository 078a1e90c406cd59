#!/usr/bin/env bash
# The GPU checks of the issues as one command for a lent GPU machine without network access (under 5 minutes).
# It expects the pure-Python wheels the machine lacks in .devwheels/ (sam2, hydra-core, omegaconf, antlr4, iopath,
# nibabel, medpy, submitit, cloudpickle: `SAM2_BUILD_CUDA=0 pip wheel --no-deps -w .devwheels sam2==1.1.0 ...`) and
# writes what it measures to $OUT.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export SSBENCH_CACHE=/tmp/ssbench-cache
python3 -m pip install -q --no-index --no-deps .devwheels/*.whl 2>&1 | tail -2
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
echo "== the training loop, published batch 12+12 at 256x256: fp32 host baseline, then each speed-up (targets)"
timeout 120 python3 benchmarks/train_step.py --methods supervised mean-teacher unimatch --steps 100 --warmup 25 \
    | tee "$OUT/train_step.txt"
echo "== SSS, Hiera-S at 1024x1024, batch 4+4: fp32 and bf16 (target <= 0.2 s/step, <= 24 GiB)"
timeout 60 python3 benchmarks/sss_step.py --gpu --sizes 1024 | tee "$OUT/sss_steps.txt"
echo "== bf16 vs fp32 results: UniMatch, 1 labeled patient, 600 iterations, 3 seeds"
timeout 90 python3 benchmarks/amp_parity.py --method unimatch --split 1 --iters 600 --seeds 1 2 3 --device cuda \
    | tee "$OUT/amp_parity.txt"
