#!/usr/bin/env bash
# Nsight Compute on the wgmma GEMM's wide tile in a 1,536-token prefill
# (ttl-460m, layer 0: qkv and gate_up take it, launches 0 and 1 of
# awq_gemm_wgmma_wide; o and down keep the 128-row tile); reports in $OUT/logs.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-ncu14b.sh", carry=[".pack"])
set -u
(cd .carry && python3 -c "import tarfile; tarfile.open('bins.tar.xz').extractall()")
source "$(dirname "$0")/gpu-lib.sh"
NCU=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
prof() { # label, launches to skip, extra ncu args...
  local l=$1 skip=$2
  shift 2
  env X=1 timeout 200 "$NCU" --clock-control none --kernel-name "regex:awq_gemm_wgmma_wide" --launch-skip "$skip" --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section Occupancy \
    --section WarpStateStats --section SchedulerStats --section LaunchStats --section InstructionStats "$@" \
    $B bench --backend cuda --model /tmp/ttl --prompt-len 1536 --decode-steps 1 --batch 1 --profile \
    >"$logs/ncu-$l.log" 2>&1
  say "ncu $l rc $?: $(grep -E 'Duration|Memory Throughput|L2 Cache Throughput|L1/TEX Cache Throughput|Compute \(SM\) Throughput|Issued Ipc|Eligible Warps|Stall' "$logs/ncu-$l.log" | tr -s ' ' | tr '\n' ';')"
}
prof gate_up 1
prof qkv 0
pack
