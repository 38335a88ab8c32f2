#!/usr/bin/env bash
# The checks the tensor-core GEMV (kernels/gemv_mma.cu, opt-in with
# LHAMA_GEMV_MMA=1) needs before it can become the fast path's default, on
# the device machine, with the executables scripts/carry-gpu.sh put in .carry/:
#   run(command="bash scripts/gpu-gemv-mma.sh", carry=[".carry"])
#   1. the AWQ kernel tests (its shapes, fused SiLU included);
#   2. verify on ttl-460m against a transformers golden made here, with the
#      GEMV on and off;
#   3. the decode benchmark at 1-16 rows, on and off, alternated twice, and
#      the per-shape product times (`--gemm`).
set -u
export LHAMA_CUDA_INCLUDE=${LHAMA_CUDA_INCLUDE:-/usr/local/cuda/include}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
out=${OUT:-gpu-logs}
mkdir -p "$out"
B=.carry/lhama
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
python3 tests/reference/make_goldens.py --model /tmp/ttl --out /tmp/ttl.json >"$out/golden.log" 2>&1 || echo "golden: FAILED"
.carry/gpu --ignored --nocapture --test-threads 1 awq_matmul_matches_cpu the_down_gemv_takes_silu_of_gate_up \
  split_products_are_added_up_by_their_consumers >"$out/gpu-awq.log" 2>&1
echo "awq kernel tests: rc=$?"; grep -E "gemv mma|test result|FAILED|panicked" "$out/gpu-awq.log" | head -40
for v in 1 0; do
  echo "verify, LHAMA_GEMV_MMA=$v:"
  LHAMA_GEMV_MMA=$v $B verify --backend cuda --model /tmp/ttl --golden /tmp/ttl.json --precision fast 2>&1 |
    grep -E "max_abs_logit_diff|max_top5|verify:"
done
for r in 1 2; do
  for v in 1 0; do
    echo "bench, LHAMA_GEMV_MMA=$v, run $r:"
    LHAMA_GEMV_MMA=$v $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 64 --batch 1,2,4,8,16 2>&1 | tail -6
  done
done
for v in 1 0; do
  echo "gemm, LHAMA_GEMV_MMA=$v:"
  LHAMA_GEMV_MMA=$v $B bench --backend cuda --model /tmp/ttl --gemm 1,2,4,8 2>&1 | tail -8
done
