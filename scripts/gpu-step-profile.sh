#!/usr/bin/env bash
# Per-kernel GPU time of one decode step at several batch sizes (graphs off,
# so every launch is its own), from an Nsight Systems trace of `lhama bench
# --decode-steps 2`: the step is every launch after the second-to-last
# sampler launch up to the last one.
# Usage on the device: bash scripts/gpu-step-profile.sh MODEL_DIR BATCHES [BENCH FLAGS...]
# e.g. bash scripts/gpu-step-profile.sh /tmp/ttl 1,64,256 --precision fast
set -uo pipefail
model=$1 batches=$2
shift 2
lhama=${LHAMA_BIN:-.carry/lhama}
out=${OUT:-gpu-logs}
nsys=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
[ -n "$nsys" ] || { echo "nsys not found"; exit 1; }
for b in ${batches//,/ }; do
  rep=/tmp/step-$b
  LHAMA_CUDA_GRAPHS=0 "$nsys" profile -t cuda -s none --cpuctxsw none -f true -o "$rep" \
    "$lhama" bench --backend cuda --model "$model" --prompt-len 128 --decode-steps 2 --batch "$b" "$@" >/dev/null 2>&1
  "$nsys" stats -q --report cuda_gpu_trace --format csv --output "$rep" "$rep.nsys-rep" >/dev/null 2>&1
  python3 - "$b" "$rep"_cuda_gpu_trace.csv <<'PY'
import csv, sys, collections
batch, path = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(path)))
name = next(k for k in rows[0] if k.strip().lower() == "name")
dur = next(k for k in rows[0] if k.lower().startswith("duration"))
kern = [r for r in rows if not r[name].startswith("[CUDA")]
ends = [i for i, r in enumerate(kern) if r[name].startswith("sample_rows")]
step = kern[ends[-2] + 1: ends[-1] + 1]
tot = collections.defaultdict(float); cnt = collections.Counter()
for r in step:
    k = r[name].split("(")[0]
    tot[k] += float(r[dur]) / 1e3; cnt[k] += 1
all_us = sum(tot.values())
print(f"batch {batch}: one decode step, {len(step)} launches, {all_us:.1f} us of kernel time")
print(f"{'kernel':36} {'launches':>8} {'total us':>10} {'us/launch':>10} {'share':>6}")
for k, v in sorted(tot.items(), key=lambda x: -x[1]):
    print(f"{k:36} {cnt[k]:8d} {v:10.1f} {v / cnt[k]:10.2f} {100 * v / all_us:5.1f}%")
PY
done
