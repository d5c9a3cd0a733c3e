#!/bin/bash
# Concurrency 1, int8, the engine on one OpenVINO thread (both sides) instead of two: with a core left to the
# serving path, does served / in-process close? (2026-12-07, seventh session, server code of 3def674.)
set -u
cd "$(git rev-parse --show-toplevel)"
.venv/bin/mentallama-bench cpu-engine --checkpoint bench --imhi-dir "$IMHI_DIR" --weight-formats int8 \
  --concurrency 1 --rounds 2 --skip-authors --engine-option num_threads=1 \
  --output results/2026-12-07e/c1_threads1.json 2>&1 | grep -v "^[IWE][0-9]\|^engine:"
