#!/usr/bin/env bash
# After the kernel table (compile::KERNELS: prototypes for NVRTC, every
# launch's arguments checked against it): every GPU test but the ttl-460m
# one, and the engine paths the tests do not drive (bench decode with and
# without graphs, packed prefill, the server over HTTP briefly).
set -u
source "$(dirname "$0")/gpu-lib.sh"
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
gpu_tests --skip ttl460m
timeout 60 $B bench --backend cuda --model /tmp/ttl --prompt-len 128 --decode-steps 32 --batch 1,3,8,64,256 \
  --prefill-seqs 64 --prefill-tokens 2048 >"$logs/bench.log" 2>&1
say "bench rc $?: $(grep -E 'prompts of|^ +[0-9]+ +[0-9.]+ +[0-9.]+$' "$logs/bench.log" | tr -s ' ' | tr '\n' ';')"
LHAMA_CUDA_GRAPHS=0 LHAMA_CUDA_FUSED_DECODE=0 timeout 60 $B bench --backend cuda --model /tmp/ttl --prompt-len 128 \
  --decode-steps 8 --batch 1,64 --precision exact >"$logs/bench-exact.log" 2>&1
say "bench exact, no graphs, unfused decode rc $?: $(grep -E '^ +[0-9]+ +[0-9.]+ +[0-9.]+$' "$logs/bench-exact.log" | tr -s ' ' | tr '\n' ';')"
grep -h "error" "$logs"/bench*.log | head -3
$B serve --backend cuda --model /tmp/ttl --served-model-name ttl --port 8000 --max-num-seqs 256 >"$logs/serve.log" 2>&1 &
srv=$!
for _ in $(seq 120); do curl -sf localhost:8000/health >/dev/null 2>&1 && break; sleep 0.5; done
python3 bench/serve_bench.py --concurrency 64 --requests 128 --prompt-words 100 --max-tokens 64 2>&1 | head -3
python3 bench/serve_bench.py --concurrency 8 --requests 16 --prompt-words 20 --max-tokens 32 \
  --extra-json '{"guided_regex": "[a-z ]+", "logprobs": 2}' 2>&1 | head -2
kill $srv; wait $srv 2>/dev/null
grep -ci "error" "$logs/serve.log"
pack
