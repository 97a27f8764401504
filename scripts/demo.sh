#!/usr/bin/env bash
# The main job end to end on the embedded default data (synthetic), in demo-output/.
set -euo pipefail
OUT=demo-output
rm -rf "$OUT"
mkdir -p "$OUT"
python - "$OUT" <<'PY'
import sys, torch
from rfprobe.models import build_model
from rfprobe.checkpoint import save_checkpoint
from rfprobe.data import load_dataset, batches
out = sys.argv[1]
model = build_model("cifar_resnet_14", seed=0).eval()
data = load_dataset("synthetic", "test", limit=2000)
with torch.inference_mode():
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches(data, 500))
acc = correct / len(data)
save_checkpoint(f"{out}/init.pt", model, mode="none", dataset="synthetic", epoch=0, metrics={"test_acc": acc})
print(f"untrained cifar_resnet_14 on {len(data)} synthetic test images: accuracy {acc:.3f} (chance 0.1)")
PY
rfprobe info "$OUT/init.pt"
rfprobe info "$OUT/init.pt" --json > "$OUT/info.json"
echo "demo results are in $OUT/ (init.pt, info.json)"
