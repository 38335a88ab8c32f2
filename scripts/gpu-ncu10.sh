#!/usr/bin/env bash
# Nsight Compute on the fragment GEMM at 16 and 64 rows (qkv and gate_up of
# layer 5: the 21st and 23rd fragment launches) and its reduce kernel, in
# decode steps launched one at a time (`bench --profile`); reports in $OUT/logs.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-ncu10.sh", carry=[".pack"])
set -u
source "$(dirname "$0")/gpu-lib.sh"
NCU=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
prof() { # label, kernel regex, batch, launches to skip
  timeout 150 "$NCU" --clock-control none --kernel-name "regex:$2" --launch-skip "$4" --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section WarpStateStats \
    --section SchedulerStats --section LaunchStats \
    $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 4 --batch "$3" --profile \
    >"$logs/ncu-$1.log" 2>&1
  say "ncu $1 rc $?: $(grep -E 'Duration|DRAM Throughput|L2 Cache Throughput|Achieved Occupancy|Registers Per|Grid Size' "$logs/ncu-$1.log" | tr -s ' ' | tr '\n' ';')"
}
prof qkv16 'awq_gemm_frag64' 16 20
prof gate16 'awq_gemm_frag64' 16 22
prof gate64 'awq_gemm_frag64' 64 22
prof down64 'awq_gemm_frag64' 64 23
prof reduce16 'awq_reduce_partials' 16 5
prof gemv1 'awq_gemv_cluster_m1' 1 10
pack
