#!/usr/bin/env bash
# Round 10b: the AWQ products against cuBLAS timed as graph replays (the
# GPU's time, not the host's per-launch cost), with and without cluster
# splits; decode with the cluster in the GEMV only (1 or 2 rows), in the
# fragment GEMM only, or neither; the same without PDL at 128 rows; prefill
# and HTTP with and without the fragment GEMM's cluster. One binary,
# alternated ROUNDS times. Fidelity as always (check_fidelity).
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round10b.sh 2", carry=[".pack"])
set -u
source "$(dirname "$0")/gpu-lib.sh"
ROUNDS=${1:-2}
check_fidelity
declare -A ENVS=(
  [base]="LHAMA_CLUSTER_SPLITS=0 LHAMA_CLUSTER_GEMV_ROWS=0" [g1]="LHAMA_CLUSTER_SPLITS=0 LHAMA_CLUSTER_GEMV_ROWS=1"
  [g2]="LHAMA_CLUSTER_SPLITS=0 LHAMA_CLUSTER_GEMV_ROWS=2" [f1]="LHAMA_CLUSTER_SPLITS=1 LHAMA_CLUSTER_GEMV_ROWS=0"
  [all]="LHAMA_CLUSTER_SPLITS=1 LHAMA_CLUSTER_GEMV_ROWS=2"
)
run_v() { # label, args...
  local v=$1
  shift
  env ${ENVS[$v]} timeout 120 $B bench --backend cuda --model /tmp/ttl "$@"
}
for round in $(seq "$ROUNDS"); do
  for v in base all; do
    run_v $v --gemm 1,2,4,8,16,32,64,128,256,512,2048,4096 >"$logs/gemm-$v-$round.log" 2>&1
    say "gemm $v round $round rc $?"
  done
  pack
done
for round in $(seq "$ROUNDS"); do
  for v in base g1 g2 f1; do
    run_v $v --prompt-len 128 --decode-steps 32 --batch 1,2,16,64,128,192,256 >"$logs/bench-$v-128-$round.log" 2>&1
    say "bench $v 128 round $round: $(rows "$logs/bench-$v-128-$round.log")"
  done
  for v in base f1; do
    LHAMA_CUDA_PDL=0 run_v $v --prompt-len 128 --decode-steps 32 --batch 16,128 >"$logs/bench-$v-nopdl-$round.log" 2>&1
    say "bench $v no PDL round $round: $(rows "$logs/bench-$v-nopdl-$round.log")"
    run_v $v --prompt-len 512 --decode-steps 32 --batch 64,256 >"$logs/bench-$v-512-$round.log" 2>&1
    say "bench $v 512 round $round: $(rows "$logs/bench-$v-512-$round.log")"
    run_v $v --prompt-len 128 --decode-steps 4 --batch 1 >"$logs/prefill128-$v-$round.log" 2>&1
    say "prefill128 $v round $round: $(grep -i 'prefill' "$logs/prefill128-$v-$round.log" | tr '\n' ' ')"
  done
  pack
done
for v in base f1 base; do
  say "http $v: $(http_load $B $v ${ENVS[$v]} | tail -3 | tr '\n' ' ')"
  pack
done
pack
