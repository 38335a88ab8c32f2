#!/usr/bin/env bash
# Round 10: K splits added up in a thread block cluster through distributed
# shared memory (LHAMA_CLUSTER_SPLITS: 0 off, 1 where no consumer adds them,
# the default, 2 also instead of the consumer), in the 64-row fragment GEMM
# and the 1-2 row f32 GEMV. One binary, the modes alternated ROUNDS times:
# the AWQ products against cuBLAS, decode at 1-256 rows, prefill; then the
# HTTP load at modes 0 and 1. Fidelity as always (check_fidelity).
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round10.sh 2", carry=[".pack"])
set -u
source "$(dirname "$0")/gpu-lib.sh"
ROUNDS=${1:-2}
check_fidelity
for round in $(seq "$ROUNDS"); do
  for c in 0 1; do
    LHAMA_CLUSTER_SPLITS=$c timeout 120 $B bench --backend cuda --model /tmp/ttl \
      --gemm 1,2,4,8,16,32,64,128,256,512,2048,4096 >"$logs/gemm-c$c-$round.log" 2>&1
    say "gemm c$c round $round rc $?"
  done
  pack
done
bench() { # mode, prompt length, batches
  LHAMA_CLUSTER_SPLITS=$1 timeout 100 $B bench --backend cuda --model /tmp/ttl \
    --prompt-len "$2" --decode-steps 32 --batch "$3" >"$logs/bench-c$1-$2-$round.log" 2>&1
  say "bench c$1 prompt $2 round $round rc $?: $(rows "$logs/bench-c$1-$2-$round.log")"
}
prefill() { # mode
  LHAMA_CLUSTER_SPLITS=$1 timeout 100 $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 4 \
    --batch 1 --prefill-seqs 256 --prefill-tokens 8192 >"$logs/prefill-c$1-$round.log" 2>&1
  say "prefill c$1 256x128 round $round rc $?: $(grep -i 'prefill' "$logs/prefill-c$1-$round.log" | tr '\n' ' ')"
  LHAMA_CLUSTER_SPLITS=$1 timeout 100 $B bench --backend cuda --model /tmp/ttl --prompt-len 512 --decode-steps 4 \
    --batch 1 >"$logs/prefill512-c$1-$round.log" 2>&1
  say "prefill c$1 512 round $round rc $?: $(grep -i 'prefill' "$logs/prefill512-c$1-$round.log" | tr '\n' ' ')"
}
for round in $(seq "$ROUNDS"); do
  for c in 0 1 2; do
    bench $c 128 1,2,8,16,64,128,192,256
    bench $c 512 64,256
  done
  for c in 0 1; do
    prefill $c
  done
  pack
done
for c in 1 0; do
  say "http c$c: $(http_load $B c$c LHAMA_CLUSTER_SPLITS=$c | tail -3 | tr '\n' ' ')"
  pack
done
pack
