#!/usr/bin/env bash
# Round 10h: the final binary of round 10 alone: fidelity (check_fidelity),
# the graph-timed AWQ products against cuBLAS with the forward pass's
# split-K scratch, decode at 1-256 rows and at 512 / 1,536-token contexts,
# prefill, HTTP. Binaries packed in .carry/bins.tar.xz.
#   run(command="rm -rf .carry && mv .pack .carry && bash scripts/gpu-round10h.sh", carry=[".pack"])
set -u
(cd .carry && python3 -c "import tarfile; tarfile.open('bins.tar.xz').extractall()")
source "$(dirname "$0")/gpu-lib.sh"
check_fidelity
timeout 120 $B bench --backend cuda --model /tmp/ttl --gemm 1,2,4,8,16,32,64,128,256,512,2048,4096 >"$logs/gemm.log" 2>&1
say "gemm rc $?"
pack
b() { # label, args
  local l=$1
  shift
  timeout 100 $B bench --backend cuda --model /tmp/ttl "$@" >"$logs/$l.log" 2>&1
  say "$l rc $?: $(rows "$logs/$l.log") $(grep -i 'prefill' "$logs/$l.log" | tr '\n' ' ')"
}
b decode128 --prompt-len 128 --decode-steps 32 --batch 1,2,8,16,32,64,128,256
b decode512 --prompt-len 512 --decode-steps 32 --batch 64,256
b decode1536 --prompt-len 1536 --decode-steps 32 --batch 256
b prefill256 --prompt-len 128 --decode-steps 4 --batch 1 --prefill-seqs 256 --prefill-tokens 8192
b prefill512 --prompt-len 512 --decode-steps 4 --batch 1
pack
say "http: $(http_load $B new | tail -3 | tr '\n' ' ')"
pack
