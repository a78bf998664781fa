#!/bin/bash
# Does recall keep rising with far more images? The CPU network and regime at lr 0.005
# (experiments/generator-lr-sweep.yaml: better than 0.0025 at 2000 steps), two runs at once on
# one H200: batch 16 (the CPU config's batch) and batch 128 (8x the images per step).
set -u
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
export LD_LIBRARY_PATH=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/torch/lib | head -1)
R=/tmp/g; mkdir -p $R; export PLUME_DATA_DIR=$R/cache OMP_NUM_THREADS=6
gunzip -c .gpu/plume-worker.gz > $R/pw && chmod +x $R/pw; W=$R/pw
run() { # name batch ema gamma
cat > $R/$1.yaml <<J
kind: pretrain-generator
dataset: {kind: synthetic-birds, images: 8000, resolution: 32, seed: 7}
network: {resolution: 32, z_dim: 128, w_dim: 128, mapping_layers: 2, channel_base: 2048, channel_max: 64}
steps: 1000000
batch: $2
lr: 0.005
seed: 1
r1_gamma: $4
r1_interval: 16
style_mixing: 0.9
ema_half_life_images: $3
augment: {translation: 0.125, cutout: 0.5, colour: false}
xflip: true
judge: .gpu/judge32.safetensors
fid_images: 1000
metric_images: 1000
eval_every: 1000
sample_every: 1000
checkpoint_every: 1000000
J
(timeout -s INT ${GT:-300} $W run $R/$1.yaml --out $R/$1 --device cuda > $R/$1.out 2>&1; el $1) &
}
run b16 16 5000 5
sleep 15  # the first run renders the dataset into the shared cache
run b128 128 20000 2
wait
for d in b16 b128; do echo "== $d"; grep -E "^step [0-9]+:" $R/$d/log.txt | cut -c1-330; done
tar czf $OUT/lr.tgz -C $R --exclude='*.safetensors' --exclude=cache --exclude=pw b16 b128
