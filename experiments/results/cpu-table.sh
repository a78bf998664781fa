#!/usr/bin/env bash
# The methods table on CPU: every text job file (four methods, four M3 ablations) with the same
# budget (200 steps of batch 16, 200 edit requests) on the quickstart pipeline's generator and
# inverted styles, plus M3 on sampled styles; one run at a time, so times are comparable.
# Needs runs/quickstart (see experiments/README.md) and runs/text/invert; prints a Markdown
# table. Usage: bash experiments/results/cpu-table.sh > table.md
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
worker=./target/release/plume-worker
out=runs/table
mkdir -p "$out"
if [ ! -f runs/text/sampled/checkpoints/step-00004000.safetensors ]; then
  $worker run experiments/jobs/invert-sampled.yaml --out runs/text/sampled --device cpu >&2
fi
sed "s#^styles: .*#styles: runs/text/sampled/checkpoints/step-00004000.safetensors#" \
  experiments/jobs/text-contrastive.yaml > "$out/text-contrastive-sampled.yaml"
jobs="text-weighted text-reconstruction text-contrastive text-visual-grounding
      text-contrastive-no-contrastive text-contrastive-no-preservation
      text-contrastive-no-reconstruction text-contrastive-target-both"
for j in $jobs text-contrastive-sampled; do
  file=experiments/jobs/$j.yaml
  [ -f "$file" ] || file=$out/$j.yaml
  rm -rf "${out:?}/$j"
  start=$(date +%s.%N)
  $worker run "$file" --out "$out/$j" --device cpu >&2
  python3 -c "print($(date +%s.%N) - $start)" > "$out/$j.seconds"
done
python3 - "$out" $jobs text-contrastive-sampled <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
print("| run | edit_success | attr_preservation | region_preservation | realism (judge-FID) | score | grounding | wall time |")
print("|---|---|---|---|---|---|---|---|")
for name in sys.argv[2:]:
    rows = [json.loads(l) for l in (out / name / "metrics.jsonl").read_text().splitlines()]
    ev = [r for r in rows if "eval/score" in r][-1]
    secs = float((out / f"{name}.seconds").read_text())
    g = ev.get("eval/grounding")
    print(f"| {name.removeprefix('text-')} | {ev['eval/edit_success']:.3f} | {ev['eval/attr_preservation']:.3f} | "
          f"{ev['eval/region_preservation']:.3f} | {ev['eval/realism']:.0f} | {ev['eval/score']:.3f} | "
          f"{'-' if g is None else f'{g:.3f}'} | {secs:.0f} s |")
PY
