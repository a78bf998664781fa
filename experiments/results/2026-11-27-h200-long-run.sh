#!/bin/bash
# Long-horizon check of the CPU generator config on the GPU: two R1 weights, one process each.
set -u
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
export LD_LIBRARY_PATH=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/torch/lib | head -1)
R=/tmp/g; mkdir -p $R; export PLUME_DATA_DIR=$R/cache OMP_NUM_THREADS=4
gunzip -c .gpu/plume-worker.gz > $R/pw && chmod +x $R/pw; W=$R/pw
for g in 10 3; do
cat > $R/c$g.yaml <<J
kind: pretrain-generator
dataset: {kind: synthetic-birds, images: 8000, resolution: 32, seed: 7}
network: {resolution: 32, z_dim: 128, w_dim: 128, mapping_layers: 2, channel_base: 2048, channel_max: 64}
steps: 1000000
batch: 16
lr: 0.0025
seed: 1
r1_gamma: $g
r1_interval: 16
style_mixing: 0.9
ema_half_life_images: 5000
judge: .gpu/judge32.safetensors
fid_images: 1000
metric_images: 1000
eval_every: 1000
sample_every: 1000
checkpoint_every: 100000
J
done
(timeout -s INT ${GT:-280} $W run $R/c10.yaml --out $R/c10 --device cuda > $R/c10.out 2>&1; el c10) &
sleep 15  # c10 renders the dataset into the shared cache first
(timeout -s INT ${GT:-280} $W run $R/c3.yaml --out $R/c3 --device cuda > $R/c3.out 2>&1; el c3) &
wait
for d in c10 c3; do echo "== $d"; grep "^step" $R/$d/log.txt; done
tar czf $OUT/long.tgz -C $R --exclude='*.safetensors' --exclude=cache --exclude=pw c10 c3
