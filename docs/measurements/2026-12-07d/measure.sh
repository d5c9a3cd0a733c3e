#!/bin/bash
# Idle-machine A/B for issue 23 (2026-12-07, sixth session): engine steps that release the GIL (41b98a7's server
# code, in a worktree; the run recorded here used that change as first written, see docs/SERVING_PROFILE.md) against
# steps that hold it (1e4dccf's, in a worktree), both driven by this checkout's benchmark code, one format at a
# time, each arm right after the other: cpu-engine, warm-up on, 2 rounds, 1/8/16/32.
set -u
cd "$(git rev-parse --show-toplevel)"
OUT=${OUT:-results/2026-12-07d}
IMHI=${IMHI_DIR:?a clone of github.com/SteveKGYang/MentalLLaMA}
mkdir -p "$OUT"
lscpu | grep -E "Model name|^CPU\(s\)"; uptime
quiet() { grep --line-buffered -v "^[IWE][0-9]\|^engine:"; }
[ -d /tmp/held-1e4dccf ] || git worktree add -f /tmp/held-1e4dccf 1e4dccf >/dev/null
[ -d /tmp/free-41b98a7 ] || git worktree add -f /tmp/free-41b98a7 41b98a7 >/dev/null
for fmt in int8 fp16; do
  echo "=== GIL released (41b98a7), $fmt $(date +%T)"
  PYTHONPATH=/tmp/free-41b98a7/server:/tmp/free-41b98a7/client MENTALLAMA_CACHE="$PWD/artifacts" \
    .venv/bin/mentallama-bench cpu-engine --checkpoint bench --imhi-dir "$IMHI" --weight-formats $fmt \
    --concurrency 1,8,16,32 --rounds 2 --skip-authors --output "$OUT/free_$fmt.json" 2>&1 | quiet
  echo "=== GIL held (1e4dccf), $fmt $(date +%T)"
  PYTHONPATH=/tmp/held-1e4dccf/server:/tmp/held-1e4dccf/client MENTALLAMA_CACHE="$PWD/artifacts" \
    .venv/bin/mentallama-bench cpu-engine --checkpoint bench --imhi-dir "$IMHI" --weight-formats $fmt \
    --concurrency 1,8,16,32 --rounds 2 --skip-authors --output "$OUT/held_$fmt.json" 2>&1 | quiet
done
uptime; echo "=== done $(date +%T)"
