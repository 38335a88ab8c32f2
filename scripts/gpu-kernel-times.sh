#!/usr/bin/env bash
# Nsight Compute times of the decode step's main kernels at one batch size,
# for several binaries / precisions in one run (graphs off, so every launch is
# its own): the decode attention of the two timed decode steps, and the
# tensor-core GEMM launches of those steps (the prefill's are skipped).
# Usage on the device: bash scripts/gpu-kernel-times.sh MODEL_DIR BATCH LABEL:BIN:FLAGS...
# (FLAGS comma-separated: fast:.carry/lhama:--precision,fast)
set -uo pipefail
model=$1 batch=$2
shift 2
out=${OUT:-gpu-logs}
layers=$(python3 -c "import json; print(json.load(open('$model/config.json'))['num_hidden_layers'])")
# Prefill: one forward per sequence, 4 AWQ products per layer on the tensor cores.
skip=$((batch * layers * 4))
for run in "$@"; do
  IFS=: read -r label bin flags <<<"$run"
  flags=${flags//,/ }  # several flags: --precision,fast
  # shellcheck disable=SC2086
  LHAMA_CUDA_GRAPHS=0 ncu --clock-control none --metrics gpu__time_duration.sum --csv \
    --kernel-name regex:paged_attention_decode --launch-count $((2 * layers)) \
    "$bin" bench --backend cuda --model "$model" --prompt-len 128 --decode-steps 1 --batch "$batch" $flags \
    > "$out/ncu-attn-$label.csv" 2>/dev/null
  # shellcheck disable=SC2086
  LHAMA_CUDA_GRAPHS=0 ncu --clock-control none --metrics gpu__time_duration.sum --csv \
    --kernel-name regex:'awq_gemm_mma|awq_reduce' --launch-skip "$skip" --launch-count $((16 * layers)) \
    "$bin" bench --backend cuda --model "$model" --prompt-len 128 --decode-steps 1 --batch "$batch" $flags \
    > "$out/ncu-gemm-$label.csv" 2>/dev/null
  python3 - "$label" "$out/ncu-attn-$label.csv" "$out/ncu-gemm-$label.csv" <<'PY'
import csv, sys, collections
label = sys.argv[1]
for path in sys.argv[2:]:
    rows = [r for r in csv.reader(open(path)) if len(r) > 10]
    if not rows:
        print(label, path, "no rows"); continue
    head = rows[0]
    ki, vi, ui = head.index("Kernel Name"), head.index("Metric Value"), head.index("Metric Unit")
    gi = head.index("Grid Size") if "Grid Size" in head else None
    tot = collections.defaultdict(float); cnt = collections.Counter()
    for r in rows[1:]:
        v = float(r[vi].replace(",", "")) * {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}[r[ui]]
        key = r[ki].split("(")[0] + (" grid " + r[gi] if gi is not None else "")
        tot[key] += v; cnt[key] += 1
    for k, v in sorted(tot.items(), key=lambda x: -x[1]):
        print(f"{label:6} {k:60} {cnt[k]:5d} x {v / cnt[k]:9.2f} us")
PY
done
