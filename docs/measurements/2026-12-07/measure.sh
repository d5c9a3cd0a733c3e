#!/bin/bash
# Idle-machine measurements for issues 18, 19, 22, 23: one session, sequential, nothing else running.
set -u
cd "$(git rev-parse --show-toplevel)"
OUT=results
IMHI=${IMHI_DIR:?a clone of github.com/SteveKGYang/MentalLLaMA}
lscpu | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-200; uptime
echo "=== A cpu-engine $(date +%T)"
.venv/bin/mentallama-bench cpu-engine --checkpoint bench --imhi-dir $IMHI --weight-formats int8,fp16 --concurrency 1,8,16,32 \
  --llama-server llama.cpp/build/bin/llama-server --gguf bench-q8_0.gguf --output $OUT/cpu_engine.json 2>&1 | grep -v "^[IWE][0-9]"
uptime
echo "=== B front-door $(date +%T)"
.venv/bin/mentallama-bench front-door --checkpoint bench --data $IMHI --concurrency 1,8,16,32 --requests 128 --output $OUT/front_door 2>&1 | grep -v "^[IWE][0-9]"
uptime
echo "=== C openai vs grpc $(date +%T)"
.venv/bin/mentallama-serve --checkpoint bench --grpc-port 18001 --http-port 18000 --metrics-port 18002 > $OUT/serve.log 2>&1 &
SERVE=$!
for i in $(seq 1 300); do curl -sf http://127.0.0.1:18000/v2/health/ready >/dev/null && break; sleep 1; done
.venv/bin/mentallama-bench -e 127.0.0.1:18001 --http-endpoint 127.0.0.1:18000 --backend triton-grpc,openai -c 1,8,16,32 \
  --data $IMHI --requests 64 --max-tokens 64 --force-output-len --output $OUT/openai 2>&1 | grep -v "^[IWE][0-9]" | tail -40
kill -INT $SERVE; wait $SERVE
uptime; echo "=== done $(date +%T)"
