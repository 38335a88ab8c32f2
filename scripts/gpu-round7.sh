#!/usr/bin/env bash
# Round 7: add_rmsnorm with a thread per element up to 128 rows (its split
# loads in flight together: add_rmsnorm_wide_f32), and an in-graph profile by
# leaving kernel families out (LHAMA_PROFILE_SKIP: outputs wrong, timing
# only), and decode attention's grid size (LHAMA_ATTN_MIN_BLOCKS) swept.
# Every GPU test with the ttl-460m golden made here, verify on both presets,
# the engine benchmark of this binary against the baseline (.carry/base/lhama)
# alternated ROUNDS times; then the step time at batch 1 / 8 / 64 / 256 with
# each kernel family left out, and with decode attention's grid resized.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round7.sh 2", carry=[".pack"])
set -u
source "$(dirname "$0")/gpu-lib.sh"
BASE=.carry/base/lhama
ROUNDS=${1:-2}
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
done
pack
# Leave-one-family-out, replayed from graphs (decode steps only).
for skip in none add_rmsnorm awq_gemv_partial awq_gemv_silu awq_gemv_mma awq_gemm_frag silu_mul paged_attention lm_head \
  sample embedding; do
  v=$skip
  [ "$skip" = none ] && v=
  timeout 60 env LHAMA_PROFILE_SKIP=$v $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 32 \
    --batch 1,8,64,256 >"$logs/skip-$skip.log" 2>&1
  say "skip $skip rc $?: $(rows "$logs/skip-$skip.log")"
done
pack
for len in 128 512; do
  for mb in 264 528 1056 2112 4224; do
    timeout 60 env LHAMA_ATTN_MIN_BLOCKS=$mb $B bench --backend cuda --model /tmp/ttl --prompt-len $len --decode-steps 32 \
      --batch 8,64,256 >"$logs/attn-$len-$mb.log" 2>&1
    say "attn prompt $len min blocks $mb rc $?: $(rows "$logs/attn-$len-$mb.log")"
  done
done
pack
for v in "new:$B" "base:$BASE"; do
  timeout 90 ${v#*:} bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 16 --batch 1,8,64 --profile \
    >"$logs/profile-${v%%:*}.log" 2>&1
  say "profile ${v%%:*} rc $?: $(grep -E '^  (add_rmsnorm|awq_gemv_partial_m1|paged_attention_decode)' "$logs/profile-${v%%:*}.log" | tr -s ' ' | tr '\n' ';')"
done
pack
