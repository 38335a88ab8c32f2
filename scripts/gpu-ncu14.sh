#!/usr/bin/env bash
# Nsight Compute on a wgmma GEMM tile in a 1,536-token prefill of ttl-460m
# (layer 0): where a large-M product's time goes; reports in $OUT/logs.
#   128 (default): the 128-row tile, launches 0-3 of awq_gemm_wgmma128 =
#       qkv, o, gate_up, down (run with LHAMA_GEMM_WIDE_MIN_BLOCKS=0 once the
#       wide tile exists);
#   wide: the wide tile, launches 0-1 of awq_gemm_wgmma_wide = qkv, gate_up
#       (o and down keep the 128-row tile).
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-ncu14.sh [128|wide]", carry=[".pack"])
set -u
(cd .carry && python3 -c "import tarfile; tarfile.open('bins.tar.xz').extractall()")
source "$(dirname "$0")/gpu-lib.sh"
NCU=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
tile=${1:-128}
case $tile in
  128) kernel=awq_gemm_wgmma128 ;;
  wide) kernel=awq_gemm_wgmma_wide ;;
  *) echo "gpu-ncu14.sh: tile must be 128 or wide, not '$tile'" >&2; exit 2 ;;
esac
prof() { # label, launches to skip, extra ncu args...
  local l=$1 skip=$2
  shift 2
  env X=1 timeout 200 "$NCU" --clock-control none --kernel-name "regex:$kernel" --launch-skip "$skip" --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section Occupancy \
    --section WarpStateStats --section SchedulerStats --section LaunchStats --section InstructionStats "$@" \
    $B bench --backend cuda --model /tmp/ttl --prompt-len 1536 --decode-steps 1 --batch 1 --profile \
    >"$logs/ncu-$l.log" 2>&1
  say "ncu $l rc $?: $(grep -E 'Duration|Memory Throughput|L2 Cache Throughput|L1/TEX Cache Throughput|Compute \(SM\) Throughput|Issued Ipc|Eligible Warps|Stall' "$logs/ncu-$l.log" | tr -s ' ' | tr '\n' ';')"
}
if [ "$tile" = 128 ]; then
  prof gate_up 2
  prof down 3
  prof qkv 0 --set full --import-source no
else
  prof gate_up 1
  prof qkv 0
fi
pack
