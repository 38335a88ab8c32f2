#!/usr/bin/env bash
# The short GPU check (about 5 minutes on an H200), for a lease with little
# time left; scripts/gpu-tests.sh is the full one. From the repository root on
# the device, with .carry/ from scripts/carry-gpu.sh (and .carry/lhama-base, a
# baseline binary, for the benchmark comparison):
#   1. tiny and ttl-460m goldens from transformers (tests/reference), the tiny
#      one written to $OUT/tiny.json as well (tests/goldens/tiny.json);
#   2. every GPU test (kernels, whole models at both precisions);
#   3. `lhama verify` on ttl-460m, exact and fast;
#   4. bench/gpu_compare.sh (baseline against exact and fast);
#   5. the server suites with --backend cuda, as far as time allows.
set -u
out=${OUT:-gpu-logs}
mkdir -p "$out"
export LHAMA_CUDA_INCLUDE=${LHAMA_CUDA_INCLUDE:-/usr/local/cuda/include}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LHAMA_BIN=$PWD/.carry/lhama PYTHONUNBUFFERED=1
t0=$SECONDS
say() { echo "[$((SECONDS - t0)) s] $*"; }
.carry/lhama synth --preset tiny --seed 0 --out /tmp/tiny >/dev/null 2>&1
.carry/lhama synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null 2>&1
python3 tests/reference/make_goldens.py --model /tmp/tiny --out "$out/tiny.json" >"$out/golden.log" 2>&1
say "tiny golden rc $?: $(tail -1 "$out/golden.log")"
cp "$out/tiny.json" tests/goldens/tiny.json
python3 tests/reference/make_goldens.py --model /tmp/ttl --out /tmp/ttl.json >>"$out/golden.log" 2>&1
say "ttl golden rc $?: $(tail -1 "$out/golden.log")"
LHAMA_TTL_MODEL=/tmp/ttl LHAMA_TTL_GOLDEN=/tmp/ttl.json timeout 300 .carry/gpu --ignored --nocapture --test-threads 1 >"$out/gpu.log" 2>&1
say "gpu tests rc $?"
grep -E "test result|panicked|gpu vs transformers|max \|gpu - cpu\|" "$out/gpu.log"
for p in exact fast; do
  timeout 120 .carry/lhama verify --backend cuda --precision "$p" --model /tmp/ttl --golden /tmp/ttl.json >"$out/verify-$p.log" 2>&1
  say "verify ttl $p rc $?: $(grep -E 'max_abs_logit_diff|max_top5|verify:' "$out/verify-$p.log" | tr -s ' ' | tr '\n' ' ')"
done
timeout 300 bash bench/gpu_compare.sh /tmp/ttl .carry/lhama-base .carry/lhama >"$out/bench.log" 2>&1
say "bench rc $?"
grep -E "^==|^ +[0-9]|prefill" "$out/bench.log"
for suite in server_openai server_lifecycle server_bad_input server_extras server_guided; do
  env LHAMA_BACKEND=cuda LHAMA_GPU_MEMORY_UTILIZATION=0.15 timeout 120 .carry/$suite --test-threads 2 >>"$out/suites.log" 2>&1
  say "$suite (cuda) rc $?: $(grep 'test result' "$out/suites.log" | tail -1)"
done
