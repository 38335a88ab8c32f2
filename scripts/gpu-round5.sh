#!/usr/bin/env bash
# One device call for round 5 (the output thread, the CudaBackend split with
# page-locked staging): every GPU test with the ttl-460m golden made here,
# verify on both presets, then the engine benchmark and the HTTP load of this
# binary against the baseline's (.carry/base/lhama), alternated.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round5.sh", carry=[".pack"])
set -u
source "$(dirname "$0")/gpu-lib.sh"
BASE=.carry/base/lhama
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
python3 tests/reference/make_goldens.py --model /tmp/ttl --out /tmp/ttl.json >"$logs/golden.log" 2>&1
say "ttl golden rc $?: $(tail -1 "$logs/golden.log")"
LHAMA_TTL_MODEL=/tmp/ttl LHAMA_TTL_GOLDEN=/tmp/ttl.json gpu_tests
for g in ttl:/tmp/ttl.json tiny:tests/goldens/tiny.json; do
  [ "${g%%:*}" = tiny ] && $B synth --preset tiny --seed 0 --out /tmp/tiny >/dev/null
  timeout 120 $B verify --backend cuda --precision fast --model /tmp/${g%%:*} --golden ${g#*:} >"$logs/verify-${g%%:*}.log" 2>&1
  say "verify ${g%%:*} rc $?: $(grep -E 'max_abs_logit_diff|max_top5|verify:' "$logs/verify-${g%%:*}.log" | tr -s ' ' | tr '\n' ' ')"
done
pack
for round in 1 2; do
  for v in "new:$B" "base:$BASE"; do
    label=${v%%:*}
    timeout 90 ${v#*:} bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 32 --batch 1,8,64,256 \
      >"$logs/bench-$label-$round.log" 2>&1
    say "bench $label $round rc $?: $(rows "$logs/bench-$label-$round.log")"
  done
done
pack
for round in 1 2; do
  for v in "new:$B" "base:$BASE"; do
    label=${v%%:*}-$round
    say "http $label: $(http_load ${v#*:} $label | tail -1)"
    grep -E "^lhama_engine_(forward|host)_seconds_total|^lhama_engine_steps_total" "$logs/metrics-$label.txt" | tr '\n' ' '
    echo
  done
  pack
done
