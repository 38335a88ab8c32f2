#!/usr/bin/env bash
# Tuning and profiles for the fast path after the fragment-order kernels, on
# the device machine, with .carry/ (lhama) from scripts/carry-gpu.sh:
#   run(command="bash scripts/gpu-tune.sh", carry=[".carry"])
#   1. packed prefill: 256 prompts of 128 tokens, 64 and 16 a pass, with the
#      kernels of one pass; one 512-token prompt;
#   2. the GEMM's split target (LHAMA_MMA_SPLIT_BLOCKS) against which row
#      counts defer their splits (LHAMA_DEFER_MAX_ROWS), decode at 64-256;
#   3. Nsight Compute sections of one decode-attention launch and one GEMM
#      launch at batch 256, and one GEMM launch of a packed prefill pass.
# Everything lands in $OUT/logs.tgz.
set -u
source "$(dirname "$0")/gpu-lib.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
for p in 64 16; do
  timeout 120 $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 4 --batch 1 \
    --prefill-seqs 256 --prefill-tokens $((p * 128)) --profile >"$logs/prefill-$p.log" 2>&1
  say "prefill $p a pass rc $?: $(grep 'prompts of' "$logs/prefill-$p.log")"
done
LHAMA_GEMM_FRAG=0 LHAMA_GEMV_MMA=0 timeout 120 $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 4 \
  --batch 1 --prefill-seqs 256 --prefill-tokens 8192 >"$logs/prefill-64-off.log" 2>&1
say "prefill 64 a pass, both off: $(grep 'prompts of' "$logs/prefill-64-off.log")"
pack
for sb in 264 132 528 1056; do
  for dr in 128 256; do
    LHAMA_MMA_SPLIT_BLOCKS=$sb LHAMA_DEFER_MAX_ROWS=$dr timeout 100 $B bench --backend cuda --model /tmp/ttl --prompt-len 128 \
      --decode-steps 32 --batch 32,64,128,256 >"$logs/sweep-$sb-$dr.log" 2>&1
    say "split blocks $sb, defer to $dr rows: $(grep -E '^ +[0-9]+ +[0-9.]+ +[0-9.]+$' "$logs/sweep-$sb-$dr.log" | awk '{printf "%s:%s ", $1, $3}')"
  done
done
pack
secs="--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis"
LHAMA_CUDA_GRAPHS=0 timeout 120 ncu --clock-control none $secs -k regex:paged_attention_decode --launch-skip 30 --launch-count 1 \
  $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 2 --batch 256 >"$logs/ncu-attn-256.log" 2>&1
say "ncu attention rc $?"
LHAMA_CUDA_GRAPHS=0 timeout 120 ncu --clock-control none $secs -k regex:awq_gemm_frag --launch-skip 24770 --launch-count 4 \
  $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 2 --batch 256 >"$logs/ncu-gemm-256.log" 2>&1
say "ncu gemm 256 rc $?"
LHAMA_CUDA_GRAPHS=0 timeout 120 ncu --clock-control none $secs -k regex:awq_gemm_frag128 --launch-skip 8 --launch-count 4 \
  $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 2 --batch 1 --prefill-seqs 64 --prefill-tokens 8192 \
  >"$logs/ncu-gemm-prefill.log" 2>&1
say "ncu gemm prefill rc $?"
pack
for f in prefill-64 prefill-16; do echo "== $f"; grep -vE "INFO" "$logs/$f.log" | grep -A16 "prompts of"; done
for f in ncu-attn-256 ncu-gemm-256 ncu-gemm-prefill; do
  echo "== $f"
  grep -E "awq_gemm|paged_att|Duration|DRAM Throughput|Memory Throughput|Compute \(SM\)|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|Warp Cycles Per Issued|Issue Slots Busy|L2 Hit|L1/TEX Hit|Grid Size|Waves Per SM|Mem Busy|Max Bandwidth|Executed Ipc A" "$logs/$f.log" | head -60
done
