#!/usr/bin/env bash
# The CUDA figures of docs/perf.md in one short run, for a machine with a GPU (the `device` tool's `run`):
#   bash bench/gpu_check.sh            # writes its logs to $OUT (default ./gpu-check), ~5 min on one GPU
# 1. trainer: bn vs all step time in bf16 autocast + channels_last (and fp32), ResNet-20, batch 128;
# 2. sparsity: the pass, eager and --compile, against a bare evaluation, 10,000 synthetic images;
# 3. partition: the incremental walk and the plain walk on CUDA (counts compared), exact gradient norms;
# 4. partition end to end: `rfprobe partition CKPT --device cuda` at its defaults (wall, stage seconds);
# 5. trainer epochs: ResNet-14 `bn` and `all`, batch 128 (the paper's), bf16 + channels_last, 2 epochs of the
#    50,000 synthetic training images each (the second is the steady one: x 160 = the paper's schedule), eager and
#    with --compile.
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
"$PY" bench/bench_partition.py --end-to-end --device "$DEVICE" --data-root "${DATA_ROOT:-/nonexistent}" 2>&1 \
  | tee "$OUT/partition_end_to_end.log" | tail -4
for mode in bn all; do
  for compile in --no-compile --compile; do
    "$PY" -m train cifar_resnet_14 --mode "$mode" --dataset synthetic --epochs 2 --batch-size 128 --eval-every 0 \
      --save-every 0 --device "$DEVICE" $compile --out "$OUT/train_r14_${mode}${compile#--}" 2>&1 | tail -1
    "$PY" -c "import json, sys; rows = [json.loads(l) for l in open(sys.argv[1]) if '\"seconds\"' in l]; \
print(sys.argv[2], ' '.join(f\"epoch {r['epoch']}: {r['seconds']:.1f} s ({r['images_per_s']:.0f} img/s)\" for r in rows), \
f\"-> 160 epochs ~{160 * rows[-1]['seconds'] / 60:.1f} min\")" "$OUT/train_r14_${mode}${compile#--}/metrics.jsonl" \
      "r14 $mode $compile" | tee -a "$OUT/train_r14_epochs.log"
  done
done
