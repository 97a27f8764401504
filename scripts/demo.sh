#!/usr/bin/env bash
# The main job end to end on the embedded synthetic data (no files, no internet), in demo-output/:
# train a small ResNet fully and BN-only, compare both trajectories with every analysis pass in one study,
# write its HTML report; then signal propagation at init and the exact linear regions of a 2-D MLP.
set -euo pipefail
OUT=demo-output
rm -rf "$OUT"
mkdir -p "$OUT"
R="$OUT/results"
step() { printf '\n== %s\n' "$*"; }

step "train cifar_resnet_8 on synthetic: all weights, then BatchNorm gamma/beta only (weights frozen at init)"
python -m train cifar_resnet_8 --mode all --dataset synthetic --limit 5000 --test-limit 2000 --epochs 2 --save-every 1 --out "$OUT/runs/r8-all"
python -m train cifar_resnet_8 --mode bn --dataset synthetic --limit 5000 --test-limit 2000 --epochs 3 --save-every 1 --lr 0.5 --out "$OUT/runs/r8-bn"

step "rfprobe info: what the BN-only checkpoint trains"
rfprobe info "$OUT/runs/r8-bn/final.pt"

step "rfprobe compare: every pass over both trajectories (init, each epoch), one study (settings: scripts/demo_study.toml)"
rfprobe compare "$OUT/runs/r8-bn" "$OUT/runs/r8-all" --epochs all --config scripts/demo_study.toml --out "$OUT/study"

step "rfprobe signal: signal propagation at init, BN ResNet vs normalizer-free ResNet"
rfprobe signal cifar_resnet_20 nf_resnet_20 --skip-init-gain 1 --batch 64 --out "$R/signal.zarr" --plot "$R/signal.png"

step "rfprobe partition: exact linear regions of a random MLP on 2-D moons, BN statistics from the data"
python -m train mlp_2x16 --mode none --dataset toy2d:moons --out "$OUT/runs/mlp-init"
rfprobe partition "$OUT/runs/mlp-init/final.pt" --dataset toy2d:moons --recalibrate-bn --limit 256 \
  --kinds train-train,point-noise,radius --slice-max-regions 2000 --slice-resolution 128 --out "$R/partition.zarr" --plot "$R/partition.png"

step "rfprobe report: one self-contained HTML page of the study"
rfprobe report "$OUT/study"

step "done"
echo "study: $OUT/study/study.zarr (xr.open_datatree(path, engine=\"zarr\")), report: $OUT/study/report.html"
echo "notebook: docs/notebooks/bn_only_vs_full.ipynb; other results (zarr) and figures: $R/"
