#!/usr/bin/env bash
# The main job end to end on the embedded synthetic data (no files, no internet), in demo-output/:
# train a small ResNet fully and BN-only, then run every analysis pass over the two checkpoints.
set -euo pipefail
OUT=demo-output
rm -rf "$OUT"
mkdir -p "$OUT"
R="$OUT/results"
step() { printf '\n== %s\n' "$*"; }

step "train cifar_resnet_8 on synthetic: all weights, then BatchNorm gamma/beta only (weights frozen at init)"
python -m train cifar_resnet_8 --mode all --dataset synthetic --limit 5000 --test-limit 2000 --epochs 2 --out "$OUT/runs/r8-all"
python -m train cifar_resnet_8 --mode bn --dataset synthetic --limit 5000 --test-limit 2000 --epochs 3 --lr 0.5 --out "$OUT/runs/r8-bn"
CKPTS=("$OUT/runs/r8-bn/final.pt" "$OUT/runs/r8-all/final.pt")

step "rfprobe info: what the BN-only checkpoint trains"
rfprobe info "$OUT/runs/r8-bn/final.pt"

step "rfprobe dead / affine: small-|gamma| (disabled) channels and the gamma/beta distributions"
rfprobe dead "${CKPTS[@]}" --out "$R/dead.zarr" --plot "$R/dead.png"
rfprobe affine "${CKPTS[@]}" --out "$R/affine.zarr" --plot "$R/affine.png"

step "rfprobe sparsity: ReLU outputs that are exactly zero, dead channels"
rfprobe sparsity "${CKPTS[@]}" --dataset synthetic --limit 1000 --out "$R/sparsity.zarr" --plot "$R/sparsity.png"

step "rfprobe ablate: prune |gamma| < 0.01 vs random and largest-|gamma| controls, re-enable pruned channels"
rfprobe ablate "$OUT/runs/r8-bn/final.pt" --dataset synthetic --limit 1000 --reenable-pruned --out "$R/ablate.zarr" --plot "$R/ablate.png"

step "rfprobe signal: signal propagation at init, BN ResNet vs normalizer-free ResNet"
rfprobe signal cifar_resnet_20 nf_resnet_20 --skip-init-gain 1 --batch 64 --out "$R/signal.zarr" --plot "$R/signal.png"

step "rfprobe partition: exact linear regions of a random MLP on 2-D moons, BN statistics from the data"
python -m train mlp_2x16 --mode none --dataset toy2d:moons --out "$OUT/runs/mlp-init"
rfprobe partition "$OUT/runs/mlp-init/final.pt" --dataset toy2d:moons --recalibrate-bn --limit 256 --out "$R/partition.zarr" --plot "$R/partition.png"

step "done"
echo "checkpoints: $OUT/runs/   results (zarr, open with xarray.open_zarr) and figures (.png): $R/"
ls "$R"
