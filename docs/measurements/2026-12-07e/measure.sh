#!/bin/bash
# Idle-machine runs of the seventh session of 2026-12-07 (issues 18 and 23), on this checkout: the front door's
# added TTFT on `tiny` (paired), then for each format cpu-engine with engine steps that release the GIL (the
# default again) and right after it with steps that hold it (`--engine-option release_gil=false`, both sides).
set -u
cd "$(git rev-parse --show-toplevel)"
OUT=${OUT:-results/2026-12-07e}
IMHI=${IMHI_DIR:?a clone of github.com/SteveKGYang/MentalLLaMA}
mkdir -p "$OUT"
lscpu | grep -E "Model name|^CPU\(s\)"; uptime; git rev-parse --short HEAD
quiet() { grep --line-buffered -v "^[IWE][0-9]\|^engine:"; }
echo "=== front door, tiny $(date +%T)"
.venv/bin/mentallama-bench front-door --checkpoint tiny --data "$IMHI" --concurrency 1,8,16,32 --requests 256 \
  --max-tokens 16 --paired-requests 512 --output "$OUT/front_door_tiny" 2>&1 | quiet
for fmt in int8 fp16; do
  for gil in released held; do
    echo "=== cpu-engine, $fmt, steps: GIL $gil $(date +%T)"
    option=()
    [ "$gil" = held ] && option=(--engine-option release_gil=false)
    .venv/bin/mentallama-bench cpu-engine --checkpoint bench --imhi-dir "$IMHI" --weight-formats "$fmt" \
      --concurrency 1,8,16,32 --rounds 2 --skip-authors "${option[@]}" --output "$OUT/${gil}_$fmt.json" 2>&1 | quiet
  done
done
uptime; echo "=== done $(date +%T)"
