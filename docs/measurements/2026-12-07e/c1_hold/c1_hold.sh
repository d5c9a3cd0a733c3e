#!/bin/bash
# Concurrency 1, int8: the default stream hold (640 ms at a full batch, 20 ms for one stream) vs ten times it,
# both sides (2026-12-07, seventh session, GIL-free steps at fe5fdfe).
set -u
cd "$(git rev-parse --show-toplevel)"
for hold in 640 6400; do
  echo "=== hold $hold $(date +%T)"
  .venv/bin/mentallama-bench cpu-engine --checkpoint bench --imhi-dir "$IMHI_DIR" --weight-formats int8 \
    --concurrency 1 --rounds 2 --skip-authors --engine-option stream_hold_ms=$hold --output results/2026-12-07e/c1_hold$hold.json 2>&1 | grep -v "^[IWE][0-9]\|^engine:"
done
echo "=== done $(date +%T)"
