#!/usr/bin/env bash
# Nsight Compute on single launches of the kernels the in-graph profile
# (LHAMA_PROFILE_SKIP, docs/BENCHMARKS.md round 7) found heaviest: decode
# attention at 64 and 256 rows, the 1-row f32 GEMV and SiLU GEMV, the
# fragment GEMM at 256 rows, add_rmsnorm's wide form at 64 rows. Launches
# timed one at a time (`bench --profile`: no graphs); reports in $OUT/logs.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-ncu.sh", carry=[".pack"])
set -u
source "$(dirname "$0")/gpu-lib.sh"
NCU=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
prof() { # label, kernel regex, batch, launches to skip
  timeout 150 "$NCU" --clock-control none --kernel-name "regex:$2" --launch-skip "$4" --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section WarpStateStats \
    --section SchedulerStats --section LaunchStats \
    $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 4 --batch "$3" --profile \
    >"$logs/ncu-$1.log" 2>&1
  say "ncu $1 rc $?: $(grep -E 'Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per' "$logs/ncu-$1.log" | tr -s ' ' | tr '\n' ';')"
}
prof attn256 'paged_attention_decode_f16kv_d64' 256 30
prof attn64 'paged_attention_decode_f16kv_d64' 64 30
prof gemv1 'awq_gemv_partial_m1_f32' 1 40
prof gemvsilu1 'awq_gemv_silu_m1_f32' 1 30
prof frag256 'awq_gemm_frag' 256 40
prof rms64 'add_rmsnorm_wide_f32' 64 60
pack
