#!/bin/bash
# R1 gamma x batch on one H200, the CPU network config with the new regime (DiffAugment,
# x-flips): does a weaker R1 let D see colour, and do more images raise recall? Four runs
# at once (the step is launch-bound, so they share the card well), 400 s each.
set -u
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
export LD_LIBRARY_PATH=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/torch/lib | head -1)
R=/tmp/g; mkdir -p $R; export PLUME_DATA_DIR=$R/cache OMP_NUM_THREADS=3
gunzip -c .gpu/plume-worker.gz > $R/pw && chmod +x $R/pw; W=$R/pw
run() { # name gamma batch ema
cat > $R/$1.yaml <<J
kind: pretrain-generator
dataset: {kind: synthetic-birds, images: 8000, resolution: 32, seed: 7}
network: {resolution: 32, z_dim: 128, w_dim: 128, mapping_layers: 2, channel_base: 2048, channel_max: 64}
steps: 1000000
batch: $3
lr: 0.0025
seed: 1
r1_gamma: $2
r1_interval: 16
style_mixing: 0.9
ema_half_life_images: $4
augment: {translation: 0.125, cutout: 0.5, colour: false}
xflip: true
judge: .gpu/judge32.safetensors
fid_images: 1000
metric_images: 1000
eval_every: 1000
sample_every: 1000
checkpoint_every: 1000000
J
(timeout -s INT ${GT:-400} $W run $R/$1.yaml --out $R/$1 --device cuda > $R/$1.out 2>&1; el $1) &
}
run g002b16 0.02 16 5000
sleep 20  # the first run renders the dataset into the shared cache
run g02b16 0.2 16 5000
run g002b64 0.02 64 10000
run g1b64 1 64 10000
wait
for d in g002b16 g02b16 g002b64 g1b64; do echo "== $d"; grep -E "^(step|the data)" $R/$d/log.txt | cut -c1-400; done
tar czf $OUT/gb.tgz -C $R --exclude='*.safetensors' --exclude=cache --exclude=pw g002b16 g02b16 g002b64 g1b64
