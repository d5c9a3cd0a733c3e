#!/bin/bash
# Idle-machine measurement for issues 18 and 23 (2026-12-07, fifth session): one session, sequential, nothing else
# running. 1) front door vs direct: throughput in separate loads (direct, door, door, direct) and the TTFT the door
# adds, paired within one load; 2) cpu-engine after (this checkout), warm-up on, 3 rounds; 3) cpu-engine before
# (the server code before issue 23, 066db8e, in a worktree, driven by this checkout's benchmark code), 2 rounds;
# 4) the front door on the tiny engine (fast: the door's own latency is not hidden by the engine's).
# SKIP_DOOR=1, SKIP_AFTER=1, SKIP_BEFORE=1 or SKIP_TINY=1 leaves one out.
set -u
cd "$(git rev-parse --show-toplevel)"
OUT=${OUT:-results/2026-12-07c}
IMHI=${IMHI_DIR:?a clone of github.com/SteveKGYang/MentalLLaMA}
mkdir -p "$OUT"
lscpu | grep -E "Model name|^CPU\(s\)"; uptime
quiet() { grep --line-buffered -v "^[IWE][0-9]"; }
if [ "${SKIP_DOOR:-}" != 1 ]; then
echo "=== front door $(date +%T) $(git rev-parse --short HEAD)"
.venv/bin/mentallama-bench front-door --checkpoint bench --data "$IMHI" --concurrency 1,8,16,32 --requests 128 \
  --paired-requests 128 --output "$OUT/front_door" 2>&1 | quiet
uptime
fi
if [ "${SKIP_AFTER:-}" != 1 ]; then
echo "=== after $(date +%T) $(git rev-parse --short HEAD)"
.venv/bin/mentallama-bench cpu-engine --checkpoint bench --imhi-dir "$IMHI" --weight-formats int8,fp16 \
  --concurrency 1,8,16,32 --rounds 3 --skip-authors --output "$OUT/cpu_engine_after.json" 2>&1 | quiet
uptime
fi
if [ "${SKIP_BEFORE:-}" != 1 ]; then
echo "=== before $(date +%T) 066db8e"
[ -d /tmp/before-066db8e ] || git worktree add -f /tmp/before-066db8e 066db8e >/dev/null
PYTHONPATH=/tmp/before-066db8e/server:/tmp/before-066db8e/client MENTALLAMA_CACHE="$PWD/artifacts" \
  .venv/bin/mentallama-bench cpu-engine --checkpoint bench --imhi-dir "$IMHI" --weight-formats int8,fp16 \
  --concurrency 1,8,16,32 --rounds 2 --skip-authors --output "$OUT/cpu_engine_before.json" 2>&1 | quiet
fi
if [ "${SKIP_TINY:-}" != 1 ]; then
echo "=== front door, tiny $(date +%T) $(git rev-parse --short HEAD)"
.venv/bin/mentallama-bench front-door --checkpoint tiny --data "$IMHI" --concurrency 1,8,16,32 --requests 256 \
  --max-tokens 16 --paired-requests 512 --output "$OUT/front_door_tiny" 2>&1 | quiet
fi
uptime; echo "=== done $(date +%T)"
