#!/usr/bin/env bash
# The CUDA figures of docs/perf.md in one short run, for a machine with a GPU (the `device` tool's `run`):
#   bash bench/gpu_check.sh            # writes its logs to $OUT (default ./gpu-check), ~5 min on one GPU
# 1. trainer: bn vs all step time in bf16 autocast + channels_last (and fp32), ResNet-20, batch 128;
# 2. sparsity: the pass, eager and --compile, against a bare evaluation, 10,000 synthetic images;
# 3. partition: the incremental walk and the plain walk on CUDA (counts compared), exact gradient norms.
# Synthetic images: real CIFAR-10 may be absent there (the costs do not depend on the pixels).
set -euo pipefail
OUT=${OUT:-gpu-check}
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
"$PY" -c "import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-')" | tee -a "$OUT/gpu.txt"
"$PY" bench/bench_train.py --device "$DEVICE" --steps 20 --repeats 5 --workers 0 --amp 2>&1 | tee "$OUT/train_bf16.log" | tail -4
"$PY" bench/bench_train.py --device "$DEVICE" --steps 20 --repeats 5 --workers 0 2>&1 | tee "$OUT/train_fp32.log" | tail -4
"$PY" bench/bench_sparsity.py --device "$DEVICE" --dataset synthetic --limit 10000 --repeats 5 --skip-memory 2>&1 \
  | grep -v "^W" | tee "$OUT/sparsity.log" | tail -6
"$PY" bench/bench_partition.py --device "$DEVICE" --dataset synthetic --only cifar_resnet_8 cifar_resnet_20 --segments 1 \
  --radius 0.3 --samples 0 2>&1 | tee "$OUT/partition.log" | tail -5
