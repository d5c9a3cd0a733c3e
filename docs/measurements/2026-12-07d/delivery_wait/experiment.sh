#!/bin/bash
# Experiment: GIL-free step, with vs without the between-steps delivery wait; int8 then fp16 at 1,8, 2 rounds
cd /work/main
quiet() { grep --line-buffered -v "^[IWE][0-9]\|^engine:"; }
for fmt in int8 fp16; do
for arm in await noawait; do
echo "=== $arm $fmt $(date +%T)"
A=0; [ $arm = await ] && A=1
MENTALLAMA_EXPERIMENT_AWAIT=$A .venv/bin/mentallama-bench cpu-engine --checkpoint bench --imhi-dir /work/shared/imhi --weight-formats $fmt \
  --concurrency 1,8 --rounds 2 --skip-authors --output /tmp/ab/await/${arm}_$fmt.json 2>&1 | quiet
done; done
echo "=== done $(date +%T)"
