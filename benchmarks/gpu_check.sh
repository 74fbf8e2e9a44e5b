#!/usr/bin/env bash
# Every check that needs a GPU, as one script for a machine lent for a few minutes (about 6 minutes on an H100):
# the `pytest -m gpu` tests (torchrun on NCCL in every parallel mode with the Triton kernels, bf16, the closing
# sample, resume; the kernels at TinyLlama's shapes), then the kernel benchmark. Results go to $OUT (default
# benchmarks/results/gpu), one file per part, so whatever finished before a time limit is kept.
#     bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >> "$out/gpu.txt" 2>&1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
timeout 300 python -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tail -40 > "$out/pytest_gpu.txt"
echo "pytest -m gpu: exit ${PIPESTATUS[0]}" >> "$out/pytest_gpu.txt"
timeout 180 python benchmarks/kernels.py --no-compile --out "$out/kernels.json" > "$out/kernels.txt" 2>&1
echo "kernels.py: exit $?" >> "$out/kernels.txt"
cat "$out"/*.txt
