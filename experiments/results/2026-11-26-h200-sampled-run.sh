#!/bin/bash
# One-shot GPU pipeline for the issue-3 results table, on sampled styles. DRY=1 runs a tiny version on CPU.
set -u
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
DEV=${DEV:-cuda}
if [ "${DRY:-0}" = 1 ]; then
  DEV=cpu; N=600; JS=4; GS=20; GT=60; IS=3; TS=4; TT=120; EV=2; ED=8; B=8; TBENCH=0
else
  N=8000; JS=1200; GS=100000; GT=${GT:-250}; IS=100; TS=600; TT=${TT:-170}; EV=300; ED=300; B=32; TBENCH=1
  TL=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/torch/lib | head -1)
  export LD_LIBRARY_PATH=$TL
fi
export PLUME_BERT_DIR=$PWD/.gpu/bert PLUME_DATA_DIR=${R:-/tmp/g}/cache
R=${R:-/tmp/g}; mkdir -p $R
gunzip -c .gpu/plume-worker.gz > $R/pw && chmod +x $R/pw; W=$R/pw
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null
if [ $TBENCH = 1 ] && [ "${BENCH:-0}" = 1 ]; then
  timeout 40 $W bench text --device $DEV > $R/bench-text.txt 2>&1; el bench text; cat $R/bench-text.txt
  timeout 40 $W bench generator --device $DEV --steps 5 > $R/bench-generator.txt 2>&1; el bench generator; cat $R/bench-generator.txt
fi
DS="{kind: synthetic-birds, images: $N, resolution: 32, seed: 7}"
cat > $R/judge.yaml <<J
kind: train-judge
dataset: $DS
resolution: 32
steps: $JS
batch: 32
lr: 0.02
seed: 1
eval_every: 400
checkpoint_every: 400
J
timeout 80 $W run $R/judge.yaml --out $R/judge --device $DEV > $R/judge.out 2>&1; el judge rc=$?; tail -3 $R/judge/log.txt
JUDGE=$(ls $R/judge/checkpoints/step-*.safetensors | tail -1)
cat > $R/generator.yaml <<J
kind: pretrain-generator
dataset: $DS
network: {resolution: 32, z_dim: 256, w_dim: 256, mapping_layers: 4, channel_base: 4096, channel_max: 128}
steps: $GS
batch: 32
lr: 0.0025
seed: 1
r1_gamma: 0.05
r1_interval: 16
pl_weight: 0
style_mixing: 0.9
ema_half_life_images: 10000
judge: $JUDGE
fid_images: 1000
eval_every: 1000
sample_every: 1000
checkpoint_every: 500
J
timeout -s INT $GT $W run $R/generator.yaml --out $R/generator --device $DEV > $R/generator.out 2>&1; el generator rc=$?; tail -2 $R/generator/log.txt
GEN=$(ls $R/generator/checkpoints/step-*.safetensors | tail -1); echo "generator: $GEN"
cat > $R/sampled.yaml <<J
kind: invert
mode: sampled
dataset: $DS
generator: $GEN
critic: $JUDGE
limit: $N
batch: 500
seed: 1
J
timeout -s INT 60 $W run $R/sampled.yaml --out $R/sampled --device $DEV > $R/sampled.out 2>&1; el sampled rc=$?; tail -2 $R/sampled/log.txt
STYLES=$(ls $R/sampled/checkpoints/step-*.safetensors | tail -1); echo "styles: $STYLES"
export OMP_NUM_THREADS=1
for spec in "m1-weighted|weighted|" "m2-reconstruction|reconstruction|" "m3-contrastive|contrastive|" "m4-visual-grounding|visual-grounding|" \
  "m3-no-preservation|contrastive|losses: {preservation: 0}" "m3-target-both|contrastive|reconstruction_target: both"; do
  IFS='|' read name method extra <<< "$spec"
  printf 'kind: train-text\ndataset: %s\ngenerator: %s\nstyles: %s\njudge: %s\nmethod: %s\n%s\nsteps: %s\nbatch: %s\nmax_tokens: 48\neval_every: %s\neval_edits: %s\ncheckpoint_every: %s\n' \
    "$DS" "$GEN" "$STYLES" "$JUDGE" "$method" "$extra" $TS $B $EV $ED $EV > $R/$name.yaml
  (timeout -s INT $TT $W run $R/$name.yaml --out $R/$name --device $DEV > $R/$name.out 2>&1; el $name rc=$?) &
done
wait; el text done
for d in $R/m*/; do echo "== $d"; grep -h "eval/score" $d/metrics.jsonl | tail -1; tail -1 $d/log.txt; done
OUTD=${OUT:-/tmp/gout}; mkdir -p $OUTD
tar czf $OUTD/gpu-results.tgz -C $R --exclude='*.safetensors' --exclude=cache --exclude=pw .
ls -la $OUTD; el all done
