#!/usr/bin/env bash
# Round 9c: where the fragment GEMM's 128-row tiles start
# (LHAMA_GEMM_FRAG_TALL_ROWS 128 / 256 / 512) and its split target
# (LHAMA_MMA_SPLIT_BLOCKS 264 / 528) with the cp.async ring of 911b9e3, one
# binary, alternated ROUNDS times; then the HTTP load at tall rows 256 and 512.
# Fidelity as always (check_fidelity).
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round9c.sh 2", carry=[".pack"])
set -u
source "$(dirname "$0")/gpu-lib.sh"
ROUNDS=${1:-2}
check_fidelity
declare -A ENVS=(
  [t128]="LHAMA_GEMM_FRAG_TALL_ROWS=128" [t256]="LHAMA_GEMM_FRAG_TALL_ROWS=256"
  [t512]="LHAMA_GEMM_FRAG_TALL_ROWS=512" [t256s528]="LHAMA_GEMM_FRAG_TALL_ROWS=256 LHAMA_MMA_SPLIT_BLOCKS=528"
)
run_v() { # label, args...
  local v=$1
  shift
  env ${ENVS[$v]} timeout 100 $B bench --backend cuda --model /tmp/ttl "$@"
}
for round in $(seq "$ROUNDS"); do
  for v in t128 t256 t512 t256s528; do
    run_v $v --prompt-len 128 --decode-steps 32 --batch 64,128,192,256 >"$logs/bench-$v-128-$round.log" 2>&1
    say "bench $v 128 round $round: $(rows "$logs/bench-$v-128-$round.log")"
    run_v $v --prompt-len 512 --decode-steps 32 --batch 128,256 >"$logs/bench-$v-512-$round.log" 2>&1
    say "bench $v 512 round $round: $(rows "$logs/bench-$v-512-$round.log")"
    run_v $v --prompt-len 256 --decode-steps 4 --batch 1 >"$logs/prefill256-$v-$round.log" 2>&1
    say "prefill256 $v round $round: $(grep -i 'prefill' "$logs/prefill256-$v-$round.log" | tr '\n' ' ')"
  done
  pack
done
for v in t256 t512; do
  say "http $v: $(http_load $B $v ${ENVS[$v]} | tail -3 | tr '\n' ' ')"
  pack
done
pack
