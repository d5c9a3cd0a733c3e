#!/bin/bash
# The front door on asyncio vs uvloop (2026-12-07, seventh session), tiny, paired TTFT, runs alternated. Needs
# uvloop_switch.diff applied (not committed) and uvloop installed (0.23.0 was in the venv; not a dependency).
set -u
cd "$(git rev-parse --show-toplevel)"
for loop in asyncio uvloop asyncio uvloop; do
  echo "=== door loop $loop $(date +%T)"
  MENTALLAMA_DOOR_LOOP=$loop .venv/bin/mentallama-bench front-door --checkpoint tiny --data "$IMHI_DIR" --concurrency 1,8,16,32 --requests 256 \
    --max-tokens 16 --paired-requests 512 --output results/2026-12-07e/door_${loop}_$(date +%H%M%S) 2>&1 | grep -v "^[IWE][0-9]\|^engine:"
done
echo "=== done $(date +%T)"
