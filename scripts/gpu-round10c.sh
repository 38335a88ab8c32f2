source scripts/gpu-lib.sh
$B synth --preset ttl-460m --seed 0 --out /tmp/ttl >/dev/null
for round in 1 2; do for v in 0 1; do
LHAMA_CLUSTER_SPLITS=$v LHAMA_CLUSTER_GEMV_ROWS=$((v*2)) timeout 120 $B bench --backend cuda --model /tmp/ttl --gemm 1,2,4,8,16,32,64,128,256,512,2048,4096 > $logs/gemm-c$v-$round.log 2>&1; say "gemm c$v $round rc $?"; tail -2 $logs/gemm-c$v-$round.log; done; done; pack
