#!/usr/bin/env bash
# The GPU checks of the issues as one command for a lent GPU machine without network access (under 5 minutes).
# It expects the pure-Python wheels the machine lacks in .devwheels/ (sam2, hydra-core, omegaconf, antlr4, iopath,
# nibabel, medpy, submitit, cloudpickle: `SAM2_BUILD_CUDA=0 pip wheel --no-deps -w .devwheels sam2==1.1.0 ...`) and
# writes what it measures to $OUT. Any failing step stops it with its exit code; every figure is printed with the
# hardware it was measured on, and a target is judged only on the hardware and settings it is for.
set -euo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export SSBENCH_CACHE=/tmp/ssbench-cache
python3 -m pip install -q --no-index --no-deps .devwheels/*.whl 2>&1 | tail -2
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
echo "== device: $(python3 -c 'import torch; print(torch.cuda.get_device_name(0))')"
echo "== no host synchronisation in the training steps, on the real device (the CPU tests use a stand-in)"
SSBENCH_HOSTSYNC_DEVICE=cuda timeout 120 python3 -m pytest -q -p no:cacheprovider tests/engine/test_gpu_paths.py \
    -k "never_waits" | tee "$OUT/host_sync.txt"
echo "== the training loop, published batch 12+12 at 256x256: fp32 host baseline, then each speed-up, eager vs compile"
timeout 150 python3 benchmarks/train_step.py --methods supervised mean-teacher unimatch --steps 100 --warmup 25 \
    --compile | tee "$OUT/train_step.txt"
echo "== SSS, Hiera-S at 1024x1024, batch 4+4, bf16 (target <= 0.2 s/step, <= 24 GiB on one H100)"
timeout 60 python3 benchmarks/sss_step.py --gpu --models sam2_hiera_s --sizes 1024 | tee "$OUT/sss_steps.txt"
echo "== bf16 vs fp32 results: UniMatch, 1 labeled patient, 600 iterations, 3 seeds"
timeout 90 python3 benchmarks/amp_parity.py --method unimatch --split 1 --iters 600 --seeds 1 2 3 --device cuda \
    | tee "$OUT/amp_parity.txt"
