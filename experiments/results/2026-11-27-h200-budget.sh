#!/bin/bash
# Stop 7 device check (one H200 call). A: does the GAN regime's recall rise with ~1M images
# (batch 128, lr 0.005, gamma 2, the CPU network)? B/C: worker/examples/aux_probe.rs, the same
# regime plus an attribute head on D's features and a CatGAN term on G (lambda 1), and its
# control (lambda 0), batch 64. ONLY_A=1 runs A alone (the second call). Judge: the CPU judge (experiments/jobs/judge-cpu.yaml).
set -u
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
export LD_LIBRARY_PATH=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/torch/lib | head -1)
R=/tmp/g; mkdir -p $R; export PLUME_DATA_DIR=$R/cache OMP_NUM_THREADS=4
for b in plume-worker aux_probe; do gunzip -c .gpu/$b.gz > $R/$b && chmod +x $R/$b; done
nvidia-smi --query-gpu=name --format=csv,noheader
J=$PWD/.gpu/judge-cpu.safetensors
GT=${GT:-400}
cat > $R/a.yaml <<Y
kind: pretrain-generator
dataset: {kind: synthetic-birds, images: 8000, resolution: 32, seed: 7}
network: {resolution: 32, z_dim: 128, w_dim: 128, mapping_layers: 2, channel_base: 2048, channel_max: 64}
steps: 1000000
batch: 128
lr: 0.005
seed: 1
r1_gamma: 2
r1_interval: 16
style_mixing: 0.9
ema_half_life_images: 20000
augment: {translation: 0.125, cutout: 0.5, colour: false}
xflip: true
judge: $J
fid_images: 1000
metric_images: 1000
eval_every: 1000
sample_every: 1000
checkpoint_every: 1000000
Y
(timeout -s INT $GT $R/plume-worker run $R/a.yaml --out $R/a --device cuda > $R/a.out 2>&1; el a) &
for i in $(seq 120); do grep -qs "pretrain-generator on" $R/a/log.txt && break; sleep 1; done
el data ready
D=$R/cache/synthetic-birds-v3-n8000-r32-s7
mkdir -p $R/b $R/c
[ "${ONLY_A:-0}" = 1 ] || (timeout $((GT - 20)) $R/aux_probe $D $J 1000000 1 0.0025 64 500 $R/b/s cuda > $R/b/log.txt 2>&1; el b) &
[ "${ONLY_A:-0}" = 1 ] || (timeout $((GT - 20)) $R/aux_probe $D $J 1000000 0 0.0025 64 500 $R/c/s cuda > $R/c/log.txt 2>&1; el c) &
wait
echo "== a"; grep -E "^step [0-9]+:" $R/a/log.txt | cut -c1-300
for d in b c; do echo "== $d"; grep "(" $R/$d/log.txt; done
tar czf $OUT/budget.tgz -C $R --exclude='*.safetensors' --exclude=cache --exclude=plume-worker --exclude=aux_probe a b c
