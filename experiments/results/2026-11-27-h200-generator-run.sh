#!/bin/bash
# One-shot GPU run for issue 10's results table: bench generator on cuda, then the new regime
# (DiffAugment translation+cutout, x-flips, anti-aliased renders) against the old one (no
# augmentation, no flips) at equal budget, at 32 and 64 px, all at once on one GPU, plus the
# CPU config at a longer horizon. DRY=1 runs a tiny version on the CPU.
# Carry .gpu/ (plume-worker.gz, the release binary stripped and gzipped).
set -u
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
DEV=cuda; GT=${GT:-300}; JS=1000; N=8000; EV=1000; MI=1000
LR=${LR:-0.0025}
if [ "${DRY:-0}" = 1 ]; then
  DEV=cpu; GT=40; JS=20; N=400; EV=50; MI=50
else
  export LD_LIBRARY_PATH=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/torch/lib | head -1)
fi
R=${R:-/tmp/g}; mkdir -p $R; export PLUME_DATA_DIR=$R/cache
gunzip -c .gpu/plume-worker.gz > $R/pw && chmod +x $R/pw; W=$R/pw
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null
if [ "$DEV" = cuda ]; then timeout 120 $W bench generator --device cuda --steps 10 > $R/bench-generator.txt 2>&1; el bench rc=$?; cat $R/bench-generator.txt; fi
for res in 32 64; do
  cat > $R/judge$res.yaml <<J
kind: train-judge
dataset: {kind: synthetic-birds, images: $N, resolution: $res, seed: 7}
resolution: 32
steps: $JS
batch: 64
lr: 0.02
seed: 1
eval_every: $JS
checkpoint_every: $JS
J
  (timeout 150 $W run $R/judge$res.yaml --out $R/judge$res --device $DEV > $R/judge$res.out 2>&1; el judge$res rc=$?; tail -1 $R/judge$res/log.txt) &
done
wait
# name res batch network regime gamma
gen() {
  local name=$1 res=$2 batch=$3 net=$4 regime=$5 gamma=$6 aug xflip
  if [ $regime = new ]; then aug="{translation: 0.125, cutout: 0.5}"; xflip=true; else aug="{translation: 0, cutout: 0}"; xflip=false; fi
  cat > $R/$name.yaml <<J
kind: pretrain-generator
dataset: {kind: synthetic-birds, images: $N, resolution: $res, seed: 7}
network: $net
steps: 1000000
batch: $batch
lr: $LR
seed: 1
r1_gamma: $gamma
r1_interval: 16
style_mixing: 0.9
ema_half_life_images: 10000
judge: $(ls $R/judge$res/checkpoints/step-*.safetensors | tail -1)
fid_images: $MI
metric_images: $MI
eval_every: $EV
sample_every: $EV
checkpoint_every: $EV
augment: $aug
xflip: $xflip
J
  (timeout -s INT $GT $W run $R/$name.yaml --out $R/$name --device $DEV > $R/$name.out 2>&1; el $name rc=$?) &
}
BIG="{resolution: 32, z_dim: 256, w_dim: 256, mapping_layers: 4, channel_base: 4096, channel_max: 128}"
BIG64="{resolution: 64, z_dim: 256, w_dim: 256, mapping_layers: 4, channel_base: 8192, channel_max: 128}"
CPU="{resolution: 32, z_dim: 128, w_dim: 128, mapping_layers: 2, channel_base: 2048, channel_max: 64}"
export OMP_NUM_THREADS=2
# The old regime as before (gamma 0.05, no augmentation, no flips); the new one at two R1
# weights; the CPU config at three, for a longer horizon than a CPU affords.
gen g32-old 32 64 "$BIG" old 0.05
gen g32-new 32 64 "$BIG" new 0.05
gen g32-new-g1 32 64 "$BIG" new 1
gen g64-old 64 32 "$BIG64" old 0.05
gen g64-new-g1 64 32 "$BIG64" new 1
gen cpucfg-new 32 16 "$CPU" new 0.05
gen cpucfg-new-g1 32 16 "$CPU" new 1
gen cpucfg-new-g10 32 16 "$CPU" new 10
wait; el generators done
for d in $R/g[0-9]*/ $R/cpucfg*/; do echo "== $d"; grep "^step" $d/log.txt | tail -3; done
OUTD=${OUT:-/tmp/gout}; mkdir -p $OUTD
tar czf $OUTD/gpu-results.tgz -C $R --exclude='*.safetensors' --exclude=cache --exclude=pw .
ls -la $OUTD; el all done
