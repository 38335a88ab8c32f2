#!/usr/bin/env bash
# Round 10f: the final binary (.carry/lhama: round 10's defaults, the GEMV's
# cluster splits at 1 row for products of up to 4,096 outputs, and the
# fragment GEMM's x loads predicated, its sources computed once, row tiles
# past M skipped) against .carry/head/lhama (the same without the last) and
# the baseline .carry/base/lhama (the build of 98f894b): fidelity
# (check_fidelity), the graph-timed AWQ products against cuBLAS, decode and
# prefill alternated ROUNDS times, the batch-1 step by kernel family
# (LHAMA_PROFILE_SKIP), HTTP, then Nsight Compute on the fragment GEMM
# (gate_up at 16 rows) with its stall reasons. The binaries come packed in
# .carry/bins.tar.xz (the carry limit).
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round10f.sh 2", carry=[".pack"])
set -u
(cd .carry && python3 -c "import tarfile; tarfile.open('bins.tar.xz').extractall()")
source "$(dirname "$0")/gpu-lib.sh"
ROUNDS=${1:-2}
check_fidelity
timeout 120 $B bench --backend cuda --model /tmp/ttl --gemm 1,2,4,8,16,32,64,128,256,512,2048,4096 >"$logs/gemm.log" 2>&1
say "gemm rc $?"
timeout 120 .carry/head/lhama bench --backend cuda --model /tmp/ttl --gemm 8,16,32,64,128,256 >"$logs/gemm-head.log" 2>&1
say "gemm head rc $?"
pack
binary() { case $1 in base) echo .carry/base/lhama ;; head) echo .carry/head/lhama ;; *) echo $B ;; esac; }
bench() { # label, prompt length, batches
  timeout 100 $(binary $1) bench --backend cuda --model /tmp/ttl \
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
  for v in new head base; do
    bench $v 128 1,2,8,16,64,128,256
    bench $v 512 64,256
    bench $v 1536 256
    prefill $v
  done
  pack
done
for f in none add_rmsnorm awq_gemv_partial awq_gemv_cluster awq_gemv_silu paged_attention_decode lm_head sample; do
  LHAMA_PROFILE_SKIP=$f timeout 100 $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 32 \
    --batch 1 >"$logs/skip-$f.log" 2>&1
  say "skip $f: $(rows "$logs/skip-$f.log")"
done
pack
say "http new: $(http_load $B new | tail -3 | tr '\n' ' ')"
pack
NCU=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
timeout 150 "$NCU" --clock-control none --kernel-name "regex:awq_gemm_frag64" --launch-skip 22 --launch-count 1 \
  --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats --section LaunchStats \
  --metrics regex:smsp__average_warp_latency_issue_stalled_.*_per_warp_active.ratio \
  $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 4 --batch 16 --profile >"$logs/ncu-gate16.log" 2>&1
say "ncu gate16 rc $?: $(grep -E 'Duration|Achieved Occupancy' "$logs/ncu-gate16.log" | tr -s ' ' | tr '\n' ';')"
pack
