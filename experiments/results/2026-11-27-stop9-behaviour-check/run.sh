#!/bin/bash
# run.sh WORKER OUTDIR, from this directory: the chain judge -> generator -> sampled styles
# -> three text methods, each job a tiny CPU config; compare two OUTDIRs' metrics.jsonl.
set -e
W=$1; O=$2; export OMP_NUM_THREADS=1 PLUME_VENV=${PLUME_VENV:-$(cd ../../.. && pwd)/.venv}
rm -rf $O; mkdir -p $O
$W run judge.yaml --out $O/judge --device cpu > $O/judge.log 2>&1
J=$(ls $O/judge/checkpoints/*.safetensors | tail -1)
sed "s#JUDGE#$J#" gen.yaml.in > $O/gen.yaml; $W run $O/gen.yaml --out $O/gen --device cpu > $O/gen.log 2>&1
G=$(ls $O/gen/checkpoints/*.safetensors | tail -1)
sed "s#JUDGE#$J#; s#GEN#$G#" inv.yaml.in > $O/inv.yaml; $W run $O/inv.yaml --out $O/inv --device cpu > $O/inv.log 2>&1
S=$(ls $O/inv/checkpoints/*.safetensors | tail -1)
for m in contrastive weighted linear-directions; do
  sed "s#JUDGE#$J#; s#GEN#$G#; s#STYLES#$S#" text-$m.yaml.in > $O/text-$m.yaml
  $W run $O/text-$m.yaml --out $O/text-$m --device cpu > $O/text-$m.log 2>&1
done
echo done
