#!/usr/bin/env bash
# Every GPU check, on the device machine, from the repository root, with the
# executables scripts/carry-gpu.sh put in .carry/:
#   1. the kernel tests and the whole-model comparisons (tiny; ttl-460m with a
#      transformers golden made here), `--ignored` so the GPU tests run;
#   2. the server's end-to-end suites (async-openai, load, bad input) and, when
#      the run carries .whl (scripts/fetch-gpu-wheels.sh), the OpenAI Python
#      SDK suite, with --backend cuda;
#   3. the README's curl and SDK examples against `lhama serve --backend cuda`
#      on ttl-460m (scripts/readme-examples.py);
#   4. an end-to-end serving load (bench/serve_bench.py) and the benchmark
#      (bench/gpu_bench.sh).
# Logs go to $OUT (or ./gpu-logs); a summary table is printed last.
set -u
out=${OUT:-gpu-logs}
mkdir -p "$out"
export LHAMA_CUDA_INCLUDE=${LHAMA_CUDA_INCLUDE:-/usr/local/cuda/include}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LHAMA_BIN=$PWD/.carry/lhama
export PYTHONUNBUFFERED=1
summary=()
step() { # name, command...
  local name=$1; shift
  local start=$SECONDS
  if "$@" >"$out/$name.log" 2>&1; then summary+=("ok    $name ($((SECONDS - start)) s)"); else summary+=("FAIL  $name ($((SECONDS - start)) s): see $name.log"); fi
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/device.txt"
step synth-ttl .carry/lhama synth --preset ttl-460m --seed 0 --out /tmp/ttl
step golden-ttl python3 tests/reference/make_goldens.py --model /tmp/ttl --out /tmp/ttl.json
step gpu-kernels-and-models env LHAMA_TTL_MODEL=/tmp/ttl LHAMA_TTL_GOLDEN=/tmp/ttl.json .carry/gpu --ignored --nocapture --test-threads 1
step verify-ttl-cuda .carry/lhama verify --backend cuda --model /tmp/ttl --golden /tmp/ttl.json
for suite in server_openai server_lifecycle server_bad_input server_extras server_guided; do
  step "$suite-cuda" env LHAMA_BACKEND=cuda LHAMA_GPU_MEMORY_UTILIZATION=0.15 .carry/$suite --test-threads 2
done
if ls .whl/*.whl >/dev/null 2>&1; then  # carried by scripts/fetch-gpu-wheels.sh
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  step python-sdk-cuda env PYTHONPATH=/tmp/site LHAMA_BACKEND=cuda LHAMA_GPU_MEMORY_UTILIZATION=0.15 python3 -m pytest -q -p no:cacheprovider tests/python
fi
# The README's curl and SDK examples against `lhama serve --backend cuda` on ttl-460m.
readme_examples() {
  .carry/lhama serve --backend cuda --model /tmp/ttl --served-model-name ttl --port 8000 &
  local pid=$!
  for _ in $(seq 120); do curl -sf localhost:8000/health >/dev/null && break; sleep 0.5; done
  local rc=0
  env PYTHONPATH=/tmp/site python3 scripts/readme-examples.py README.md || rc=$?
  kill -TERM "$pid"; wait "$pid"
  return $rc
}
step readme-ttl-cuda readme_examples
# End-to-end serving load (bench/serve_bench.py) at 1, 16 and 64 concurrent clients.
serve_bench() {
  .carry/lhama serve --backend cuda --model /tmp/ttl --served-model-name ttl --port 8000 &
  local pid=$!
  for _ in $(seq 120); do curl -sf localhost:8000/health >/dev/null && break; sleep 0.5; done
  local rc=0
  for c in 1 16 64; do
    python3 bench/serve_bench.py --concurrency "$c" --requests $((c * 4)) --prompt-words 100 --max-tokens 128 || rc=$?
  done
  kill -TERM "$pid"; wait "$pid"
  return $rc
}
step serve-bench-cuda serve_bench
# Issue 11's GPU figures: a chat turn after a ~1,500-token history with and
# without the prefix cache, and throughput at 64 clients with every request
# constrained (a regex that never ends before max_tokens; a JSON object)
# against none.
step prefix-cache-ttft-cuda python3 bench/prefix_cache_ttft.py --lhama .carry/lhama --model /tmp/ttl --backend cuda
guided_cost() {
  .carry/lhama serve --backend cuda --model /tmp/ttl --served-model-name ttl --port 8000 &
  local pid=$!
  for _ in $(seq 120); do curl -sf localhost:8000/health >/dev/null && break; sleep 0.5; done
  local rc=0
  for extra in '{}' '{"guided_regex": "[a-z ]+"}' '{"guided_json": {"type": "object"}}'; do
    python3 bench/serve_bench.py --concurrency 64 --requests 256 --prompt-words 100 --max-tokens 128 --extra-json "$extra" || rc=$?
  done
  kill -TERM "$pid"; wait "$pid"
  return $rc
}
step guided-cost-cuda guided_cost
step bench bash bench/gpu_bench.sh /tmp/ttl
echo "device: $(cat "$out/device.txt")"
grep -hE "max \|gpu - cpu\||gpu vs transformers" "$out/gpu-kernels-and-models.log" || true
grep -hE "test result" "$out"/*.log || true
cat "$out/readme-ttl-cuda.log" 2>/dev/null | grep -v INFO | tail -8
grep -v INFO "$out/serve-bench-cuda.log" 2>/dev/null | grep -E "^(concurrency|wall|TTFT|ITL|E2E)" || true
grep -E "^prefix cache" "$out/prefix-cache-ttft-cuda.log" 2>/dev/null || true
grep -v INFO "$out/guided-cost-cuda.log" 2>/dev/null | grep -E "^(concurrency|wall)" || true
cat "$out/bench.log" 2>/dev/null | tail -24
printf '%s\n' "${summary[@]}"
