#!/usr/bin/env bash
# Same-machine CPU comparison against llama.cpp: convert an AWQ checkpoint to
# GGUF (bench/llamacpp_gguf.py), quantize it to Q4_0 with llama.cpp's own
# quantizer (lm_head and embeddings left in f16, as lhama keeps them), and run
# llama-bench for prefill 128 and decode 32 tokens.
#
#   bench/llamacpp_bench.sh LLAMA_CPP_BUILD_DIR MODEL_DIR [extra llama-bench args...]
#
# LLAMA_CPP_BUILD_DIR holds bin/llama-bench and bin/llama-quantize (a CMake
# build dir of llama.cpp). Environment:
#   THREADS  llama-bench threads (default 2)
#   REPS     llama-bench repetitions (default 5)
#   PYTHON   interpreter with numpy, safetensors and gguf (default python3)
#   GGUF_PY  llama.cpp's gguf-py dir (default: BUILD_DIR/../gguf-py if present)
#   OUT_DIR  where the GGUF files go (default /tmp/lhama-llamacpp/<model name>)
#   FORCE=1  redo the conversion and quantization even if the files exist
#
# On a CPU with AMX, llama.cpp 0c1e57098 built by GCC 12 stops with SIGILL at
# its first tile load (the `_tile_loadconfig` builtin is declared to read 8
# bytes, so the stores that fill the 64-byte configuration are dropped);
# replace that call in ggml/src/ggml-cpu/amx/mmq.cpp by an inline `ldtilecfg`
# of the whole structure, or pass --repack 0 (which understates llama.cpp).
# docs/BENCHMARKS.md has the figures of 2026-12-03.
set -euo pipefail

if [ $# -lt 2 ]; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
build=$(cd "$1" && pwd)
model=$(cd "$2" && pwd)
shift 2

here=$(cd "$(dirname "$0")" && pwd)
threads=${THREADS:-2}
reps=${REPS:-5}
python=${PYTHON:-python3}
out_dir=${OUT_DIR:-/tmp/lhama-llamacpp/$(basename "$model")}
gguf_py=${GGUF_PY:-}
if [ -z "$gguf_py" ] && [ -d "$build/../gguf-py" ]; then
    gguf_py=$(cd "$build/../gguf-py" && pwd)
fi

bench_bin=$build/bin/llama-bench
quant_bin=$build/bin/llama-quantize
for b in "$bench_bin" "$quant_bin"; do
    [ -x "$b" ] || { echo "missing $b (build the llama-bench and llama-quantize targets)" >&2; exit 1; }
done

mkdir -p "$out_dir"
f16=$out_dir/model-f16.gguf
q4=$out_dir/model-q4_0.gguf

if [ "${FORCE:-0}" = 1 ] || [ ! -s "$f16" ]; then
    echo "== converting $model -> $f16" >&2
    "$python" "$here/llamacpp_gguf.py" "$model" "$f16" ${gguf_py:+--gguf-py "$gguf_py"} 2>"$out_dir/convert.log" \
        || { tail -20 "$out_dir/convert.log" >&2; exit 1; }
fi
if [ "${FORCE:-0}" = 1 ] || [ ! -s "$q4" ]; then
    echo "== quantizing -> $q4 (Q4_0; output.weight and token_embd.weight stay f16)" >&2
    "$quant_bin" --leave-output-tensor --token-embedding-type f16 "$f16" "$q4" Q4_0 "$threads" \
        >"$out_dir/quantize.log" 2>&1 || { tail -20 "$out_dir/quantize.log" >&2; exit 1; }
fi

"$bench_bin" --version 2>&1 | head -1 >&2
echo "== llama-bench -m $q4 -t $threads -p 128 -n 32 -r $reps $*" >&2
"$bench_bin" -m "$q4" -t "$threads" -p 128 -n 32 -r "$reps" "$@"
