#!/usr/bin/env bash
# Per-kernel GPU time of one batch-1 decode step of the ttl-460m preset
# (Nsight Compute), against the step's wall time from `lhama bench`.
# Usage on the device: bash scripts/gpu-profile.sh MODEL_DIR
set -euo pipefail
model=$1
lhama=${LHAMA_BIN:-.carry/lhama}
out=${OUT:-gpu-logs}
# Every launch of a short bench run is profiled; the last decode step's
# launches (8 per layer at batch 1, plus embedding, final norm, lm_head and
# the sampler) are the table.
layers=$(python3 -c "import json,sys; print(json.load(open('$model/config.json'))['num_hidden_layers'])")
per_step=$((8 * layers + 4))
LHAMA_CUDA_GRAPHS=0 ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv \
  "$lhama" bench --backend cuda --model "$model" --prompt-len 128 --decode-steps 1 --batch 1 > "$out/ncu.csv" 2> "$out/ncu.err" || true
python3 - "$out/ncu.csv" "$per_step" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head = rows[0]
rows = [head] + rows[-int(sys.argv[2]):]
ki, vi, ui = head.index("Kernel Name"), head.index("Metric Value"), head.index("Metric Unit")
tot = collections.defaultdict(float); cnt = collections.Counter()
for r in rows[1:]:
    v = float(r[vi].replace(",", ""))
    v *= {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}[r[ui]]
    tot[r[ki].split("(")[0]] += v; cnt[r[ki].split("(")[0]] += 1
print(f"{'kernel':32} {'launches':>8} {'total us':>10} {'us/launch':>10}")
for k, v in sorted(tot.items(), key=lambda x: -x[1]):
    print(f"{k:32} {cnt[k]:8d} {v:10.1f} {v / cnt[k]:10.2f}")
print(f"{'all':32} {sum(cnt.values()):8d} {sum(tot.values()):10.1f}")
PY
