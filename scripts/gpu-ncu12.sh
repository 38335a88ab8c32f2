#!/usr/bin/env bash
# Nsight Compute on gate_up (layer 5: the 23rd product launch of a decode
# step) at 16, 32 and 64 rows on the wgmma tiles (the default) and at 16 and
# 32 rows on the 64-row fragment GEMM (LHAMA_GEMM_WGMMA_MIN_ROWS=128), in
# decode steps launched one at a time (`bench --profile`); reports in $OUT/logs.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-ncu12.sh", carry=[".pack"])
set -u
(cd .carry && python3 -c "import tarfile; tarfile.open('bins.tar.xz').extractall()")
source "$(dirname "$0")/gpu-lib.sh"
NCU=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
prof() { # label, kernel regex, batch, launches to skip, VAR=value...
  local l=$1 re=$2 b=$3 skip=$4
  shift 4
  env X=1 "$@" timeout 150 "$NCU" --clock-control none --kernel-name "regex:$re" --launch-skip "$skip" --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section WarpStateStats \
    --section SchedulerStats --section LaunchStats \
    $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 4 --batch "$b" --profile \
    >"$logs/ncu-$l.log" 2>&1
  say "ncu $l rc $?: $(grep -E 'Duration|DRAM Throughput|Achieved Occupancy|Registers Per|Grid Size|Issued Ipc|Eligible Warps' "$logs/ncu-$l.log" | tr -s ' ' | tr '\n' ';')"
}
prof wg16-gate16 'awq_gemm_wgmma16' 16 22
prof frag-gate16 'awq_gemm_frag64' 16 22 LHAMA_GEMM_WGMMA_MIN_ROWS=128
prof wg32-gate32 'awq_gemm_wgmma32' 32 22
prof frag-gate32 'awq_gemm_frag64' 32 22 LHAMA_GEMM_WGMMA_MIN_ROWS=128
prof wg64-gate64 'awq_gemm_wgmma64' 64 22
pack
