#!/bin/bash
set -u
cd "$(git rev-parse --show-toplevel)"
OUT=results
IMHI=${IMHI_DIR:?a clone of github.com/SteveKGYang/MentalLLaMA}
uptime
.venv/bin/mentallama-serve --checkpoint bench --grpc-port 18001 --http-port 18000 --metrics-port 18002 > $OUT/serve2.log 2>&1 &
SERVE=$!
for i in $(seq 1 300); do curl -sf http://127.0.0.1:18000/v2/health/ready >/dev/null && break; sleep 1; done
for order in triton-grpc,openai openai,triton-grpc; do
.venv/bin/mentallama-bench -e 127.0.0.1:18001 --http-endpoint 127.0.0.1:18000 --backend $order -c 1,8,16,32 \
  --data $IMHI --requests 64 --max-tokens 64 --force-output-len --output $OUT/openai_abba 2>&1 | grep -v "^[IWE][0-9]" | grep -A12 "  run  ok"
uptime
done
kill -INT $SERVE; wait $SERVE
