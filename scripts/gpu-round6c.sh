#!/usr/bin/env bash
# Round 6, calls 3-5: every GPU test with the ttl-460m golden made here,
# verify on both presets, the engine benchmark of this binary against the
# baseline (.carry/base/lhama) and against itself with one switch off,
# alternated ROUNDS times, and a per-kernel profile at batch 1 and 8.
#   bash scripts/gpu-round6c.sh LABEL VAR=value ROUNDS
# Call 3 (the register-held lm_head): no-lmh LHAMA_LM_HEAD_ROWS=0 3;
# calls 4-5 (the GEMVs' deferred splits): no-defer LHAMA_GEMV_DEFER=0 2.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round6c.sh no-defer LHAMA_GEMV_DEFER=0 2", carry=[".pack"])
set -u
source "$(dirname "$0")/gpu-lib.sh"
BASE=.carry/base/lhama
OFF_LABEL=${1:?label of the switched-off run} OFF_ENV=${2:?VAR=value} ROUNDS=${3:-2}
check_fidelity
bench() { # label, env words...
  local label=$1 bin=$B
  shift
  [ "$label" = base ] && bin=$BASE
  timeout 90 env "$@" $bin bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 32 \
    --batch 1,2,4,8,16,64,256 >"$logs/bench-$label-$round.log" 2>&1
  say "bench $label $round rc $?: $(rows "$logs/bench-$label-$round.log")"
}
for round in $(seq "$ROUNDS"); do
  bench new
  bench base
  bench "$OFF_LABEL" "$OFF_ENV"
done
pack
for v in "new:$B" "base:$BASE"; do
  timeout 90 ${v#*:} bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 16 --batch 1,8 --profile \
    >"$logs/profile-${v%%:*}.log" 2>&1
  say "profile ${v%%:*} rc $?: $(grep -E '^  (lm_head|add_rmsnorm|awq_gemv|awq_reduce)' "$logs/profile-${v%%:*}.log" | tr -s ' ' | tr '\n' ';')"
done
pack
