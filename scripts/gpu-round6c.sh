#!/usr/bin/env bash
# Round 6, calls 4 and 5: the GEMVs leaving their splits to add_rmsnorm and silu_mul (LHAMA_GEMV_DEFER), with the register-held lm_head (the norm
# tail and the tensor-core GEMV's fused SiLU reverted): every GPU test with
# the ttl-460m golden made here, verify on both presets, the engine
# benchmark against the baseline (.carry/base/lhama) and against
# LHAMA_GEMV_DEFER=0, alternated, and a per-kernel profile at batch 1 and 8.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round6c.sh", carry=[".pack"])
set -u
source "$(dirname "$0")/gpu-lib.sh"
BASE=.carry/base/lhama
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
$B synth --preset tiny --seed 0 --out /tmp/tiny >/dev/null
python3 tests/reference/make_goldens.py --model /tmp/ttl --out /tmp/ttl.json >"$logs/golden.log" 2>&1
say "ttl golden rc $?: $(tail -1 "$logs/golden.log")"
LHAMA_TTL_MODEL=/tmp/ttl LHAMA_TTL_GOLDEN=/tmp/ttl.json gpu_tests
for g in ttl:/tmp/ttl.json tiny:tests/goldens/tiny.json; do
  timeout 120 $B verify --backend cuda --precision fast --model /tmp/${g%%:*} --golden ${g#*:} >"$logs/verify-${g%%:*}.log" 2>&1
  say "verify ${g%%:*} rc $?: $(grep -E 'max_abs_logit_diff|max_top5|verify:' "$logs/verify-${g%%:*}.log" | tr -s ' ' | tr '\n' ' ')"
done
pack
bench() { # label, env words...
  local label=$1 bin=$B
  shift
  [ "$label" = base ] && bin=$BASE
  timeout 90 env "$@" $bin bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 32 \
    --batch 1,2,4,8,16,64,256 >"$logs/bench-$label-$round.log" 2>&1
  say "bench $label $round rc $?: $(rows "$logs/bench-$label-$round.log")"
}
for round in 1 2; do
  bench new
  bench base
  bench no-defer LHAMA_GEMV_DEFER=0
done
pack
for v in "new:$B" "base:$BASE"; do
  timeout 90 ${v#*:} bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 16 --batch 1,8 --profile \
    >"$logs/profile-${v%%:*}.log" 2>&1
  say "profile ${v%%:*} rc $?: $(grep -E '^  (lm_head|add_rmsnorm|awq_gemv|awq_reduce)' "$logs/profile-${v%%:*}.log" | tr -s ' ' | tr '\n' ';')"
done
pack
