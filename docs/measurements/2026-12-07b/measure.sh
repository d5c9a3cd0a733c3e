#!/bin/bash
# Idle-machine measurement for issue 23: one session, sequential, nothing else running. After: this checkout.
# Before: the server code before issue 23 (066db8e) in a worktree, driven by this checkout's benchmark code.
# SKIP_AFTER=1 or SKIP_BEFORE=1 leaves one out.
set -u
cd "$(git rev-parse --show-toplevel)"
OUT=${OUT:-results/2026-12-07b}
IMHI=${IMHI_DIR:?a clone of github.com/SteveKGYang/MentalLLaMA}
LLAMA=${LLAMA_SERVER:?llama.cpp/build/bin/llama-server}
GGUF=${GGUF:?bench-q8_0.gguf}
mkdir -p "$OUT"
lscpu | grep -E "Model name|^CPU\(s\)"; uptime
if [ "${SKIP_AFTER:-}" != 1 ]; then
echo "=== after $(date +%T) $(git rev-parse --short HEAD)"
.venv/bin/mentallama-bench cpu-engine --checkpoint bench --imhi-dir "$IMHI" --weight-formats int8,fp16 \
  --concurrency 1,8,16,32 --rounds 2 --llama-server "$LLAMA" --gguf "$GGUF" --footprint \
  --output "$OUT/cpu_engine_after.json" 2>&1 | grep -v "^[IWE][0-9]"
uptime
fi
if [ "${SKIP_BEFORE:-}" != 1 ]; then
echo "=== before $(date +%T) 066db8e"
[ -d /tmp/before-066db8e ] || git worktree add -f /tmp/before-066db8e 066db8e >/dev/null
PYTHONPATH=/tmp/before-066db8e/server:/tmp/before-066db8e/client MENTALLAMA_CACHE="$PWD/artifacts" \
  .venv/bin/mentallama-bench cpu-engine --checkpoint bench --imhi-dir "$IMHI" --weight-formats int8,fp16 \
  --concurrency 1,8,16,32 --rounds 2 --skip-authors --output "$OUT/cpu_engine_before.json" 2>&1 | grep -v "^[IWE][0-9]"
fi
uptime; echo "=== done $(date +%T)"
