#!/usr/bin/env bash
# Round 9b: the fragment GEMM's ring for 128-row tiles at depths 2 / 3 / 4
# (LHAMA_GEMM_FRAG_TALL_STAGES; dynamic shared memory), and sweeps with the
# same binary: 128-row tiles from 256 rows (LHAMA_GEMM_FRAG_TALL_ROWS=256),
# decode through the tensor-core prompt attention (LHAMA_CUDA_FUSED_DECODE=0).
# Fidelity as always (check_fidelity); the baseline is .carry/base/lhama.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round9b.sh 2", carry=[".pack"])
set -u
source "$(dirname "$0")/gpu-lib.sh"
BASE=.carry/base/lhama
ROUNDS=${1:-2}
check_fidelity
# Each variant: a label and its environment.
declare -A ENVS=(
  [base]="" [t2]="LHAMA_GEMM_FRAG_TALL_STAGES=2" [t3]="LHAMA_GEMM_FRAG_TALL_STAGES=3"
  [t4]="LHAMA_GEMM_FRAG_TALL_STAGES=4" [r256t2]="LHAMA_GEMM_FRAG_TALL_ROWS=256 LHAMA_GEMM_FRAG_TALL_STAGES=2"
  [r256t4]="LHAMA_GEMM_FRAG_TALL_ROWS=256 LHAMA_GEMM_FRAG_TALL_STAGES=4" [unfused]="LHAMA_CUDA_FUSED_DECODE=0"
)
run_v() { # label, args...
  local v=$1 bin=$B
  shift
  [ "$v" = base ] && bin=$BASE
  env ${ENVS[$v]} timeout 100 $bin bench --backend cuda --model /tmp/ttl "$@"
}
for v in t2 t3 t4; do
  run_v $v --gemm 256,512,2048,4096 >"$logs/gemm-$v.log" 2>&1
  say "gemm $v rc $?"
done
pack
for round in $(seq "$ROUNDS"); do
  for v in base t2 t3 t4; do
    run_v $v --prompt-len 128 --decode-steps 4 --batch 1 --prefill-seqs 256 --prefill-tokens 8192 \
      >"$logs/prefill-$v-$round.log" 2>&1
    say "prefill $v round $round: $(grep -i 'prefill' "$logs/prefill-$v-$round.log" | tr '\n' ' ')"
    run_v $v --prompt-len 1536 --decode-steps 4 --batch 1 >"$logs/prefill1536-$v-$round.log" 2>&1
    say "prefill1536 $v round $round: $(grep -i 'prefill' "$logs/prefill1536-$v-$round.log" | tr '\n' ' ')"
  done
  for v in t2 r256t2 r256t4 unfused; do
    run_v $v --prompt-len 128 --decode-steps 32 --batch 64,256 >"$logs/bench-$v-128-$round.log" 2>&1
    say "bench $v 128 round $round: $(rows "$logs/bench-$v-128-$round.log")"
    run_v $v --prompt-len 1536 --decode-steps 32 --batch 64,256 >"$logs/bench-$v-1536-$round.log" 2>&1
    say "bench $v 1536 round $round: $(rows "$logs/bench-$v-1536-$round.log")"
  done
  pack
done
pack
