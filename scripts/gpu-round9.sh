#!/usr/bin/env bash
# Round 9: the 64-row fragment GEMM takes its weights, zeros and scales
# through a cp.async ring of LHAMA_GEMM_FRAG_STAGES chunks (default 4; the
# first ones before the wait on the previous kernel), the 128-row one through
# a ring of 2. Fidelity as always (check_fidelity); the AWQ products against
# cuBLAS at ring depths 2 / 3 / 4 and for the baseline (.carry/base/lhama);
# then decode (new, new at depth 3, base) and prefill (new, base) alternated
# ROUNDS times.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round9.sh 2", carry=[".pack"])
set -u
source "$(dirname "$0")/gpu-lib.sh"
BASE=.carry/base/lhama
ROUNDS=${1:-2}
check_fidelity
# label: new (depth 4), s2, s3 (depth 2 / 3), base.
binary() { [ "$1" = base ] && echo $BASE || echo $B; }
depth() { case $1 in s2) echo 2 ;; s3) echo 3 ;; *) echo 4 ;; esac; }
for v in s2 s3 new base; do
  LHAMA_GEMM_FRAG_STAGES=$(depth $v) timeout 90 $(binary $v) bench --backend cuda --model /tmp/ttl \
    --gemm 1,8,16,32,64,128,256,512,2048 >"$logs/gemm-$v.log" 2>&1
  say "gemm $v rc $?"
done
pack
bench() { # label, prompt length, batches
  LHAMA_GEMM_FRAG_STAGES=$(depth $1) timeout 100 $(binary $1) bench --backend cuda --model /tmp/ttl \
    --prompt-len "$2" --decode-steps 32 --batch "$3" >"$logs/bench-$1-$2-$round.log" 2>&1
  say "bench $1 prompt $2 round $round rc $?: $(rows "$logs/bench-$1-$2-$round.log")"
}
prefill() { # label
  timeout 100 $(binary $1) bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 4 --batch 1 \
    --prefill-seqs 256 --prefill-tokens 8192 >"$logs/prefill-$1-$round.log" 2>&1
  say "prefill $1 256x128 round $round rc $?: $(grep -i 'prefill' "$logs/prefill-$1-$round.log" | tr '\n' ' ')"
  timeout 100 $(binary $1) bench --backend cuda --model /tmp/ttl --prompt-len 512 --decode-steps 4 --batch 1 \
    >"$logs/prefill512-$1-$round.log" 2>&1
  say "prefill $1 512 round $round rc $?: $(grep -i 'prefill' "$logs/prefill512-$1-$round.log" | tr '\n' ' ')"
}
for round in $(seq "$ROUNDS"); do
  for v in new s3 base; do
    bench $v 128 16,64,128,256
    bench $v 512 64,256
  done
  for v in new base; do
    prefill $v
    bench $v 1536 256
  done
  pack
done
pack
