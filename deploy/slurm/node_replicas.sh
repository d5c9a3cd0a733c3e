#!/usr/bin/env bash
# Start independent Triton replicas on this node, GPUS_PER_REPLICA GPUs each, wait until every one is
# ready, publish their endpoints, then stay until one exits or the job is stopped (then stop them all).
# Each replica's public ports are its front door's; its tritonserver listens on 127.0.0.1 (ports + 10000).
# Run directly (one node) or once per node under `srun --ntasks-per-node=1` (several nodes).
#
# Environment:
#   MODEL_REPO         rendered trtllm model repository (required)
#   RUN_DIR            logs and endpoints (default: $MENTALLAMA_REPO/artifacts/runs/slurm-$SLURM_JOB_ID)
#   GPUS_PER_REPLICA   GPUs per replica = the engine's tp x pp (default 1)
#   NUM_REPLICAS       replicas on this node (default: visible GPUs / GPUS_PER_REPLICA)
#   BASE_HTTP_PORT     replica i uses BASE_*_PORT + i * PORT_STRIDE (defaults 8000 8001 8002, stride 10)
#   BASE_GRPC_PORT BASE_METRICS_PORT PORT_STRIDE
#   READY_TIMEOUT_S    time allowed for engine loading (default 1800)
#   ML_BIND            colon-separated folders to bind (engine dir, tokenizer dir)
#   ML_IMAGE           container image (SIF or docker://)
#   SERVE_HOST         address the front doors bind (default 0.0.0.0)
#   API_KEY_FILE       API keys, one per line (or MENTALLAMA_API_KEYS); TLS_CERT TLS_KEY [TLS_CA]: TLS
#   ML_VENV            our tools' environment (default artifacts/ngc-venv; deploy/container/install_tools.sh)
set -euo pipefail

REPO=${MENTALLAMA_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
# shellcheck source=../lib/common.sh
source "$REPO/deploy/lib/common.sh"

: "${MODEL_REPO:?set MODEL_REPO to the rendered trtllm model repository}"
RUN_DIR=${RUN_DIR:-$REPO/artifacts/runs/slurm-${SLURM_JOB_ID:-local}}
GPUS_PER_REPLICA=${GPUS_PER_REPLICA:-1}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-1800}
HOST=$(hostname)

# GPUs this task may use: Slurm's CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi lists.
if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
  IFS=, read -r -a GPU_LIST <<<"$CUDA_VISIBLE_DEVICES"
else
  mapfile -t GPU_LIST < <(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null || true)
fi
((${#GPU_LIST[@]} >= GPUS_PER_REPLICA)) \
  || ml_die "$HOST: ${#GPU_LIST[@]} GPU(s) visible, a replica needs $GPUS_PER_REPLICA"
NUM_REPLICAS=${NUM_REPLICAS:-$((${#GPU_LIST[@]} / GPUS_PER_REPLICA))}
((NUM_REPLICAS * GPUS_PER_REPLICA <= ${#GPU_LIST[@]})) \
  || ml_die "$HOST: $NUM_REPLICAS replicas x $GPUS_PER_REPLICA GPUs > ${#GPU_LIST[@]} visible GPUs"

ml_bind_args
ml_front_door_flags

mkdir -p "$RUN_DIR/endpoints.d"
ml_install_traps
# An endpoint file exists exactly while its replica serves.
trap 'rm -f "$RUN_DIR/endpoints.d/$HOST-replica"*; ml_cleanup' EXIT

PIDS=()
URLS=()
for ((i = 0; i < NUM_REPLICAS; i++)); do
  gpus=$(IFS=,; echo "${GPU_LIST[*]:i*GPUS_PER_REPLICA:GPUS_PER_REPLICA}")
  ml_replica_ports "$i"
  log="$RUN_DIR/$HOST-replica$i"
  ml_log "$HOST replica $i: GPUs $gpus, http $ML_HTTP_PORT, grpc $ML_GRPC_PORT, metrics $ML_METRICS_PORT, logs $log.*"
  "$REPO/deploy/apptainer/run_triton.sh" --model-repo "$MODEL_REPO" --world-size "$GPUS_PER_REPLICA" \
    --gpus "$gpus" --http-port "$ML_HTTP_PORT" --grpc-port "$ML_GRPC_PORT" --metrics-port "$ML_METRICS_PORT" \
    --shm-prefix "${HOST//[^A-Za-z0-9]/_}_r${i}_" --log-file "$log.triton.log" "${ML_BIND_ARGS[@]}" \
    "${ML_FRONT_DOOR_FLAGS[@]}" >"$log.out" 2>&1 &
  PIDS+=("$!")
  ml_track "$!"
  URLS+=("$(ml_gpu_ready_url "$ML_HTTP_PORT")")
done

for ((i = 0; i < NUM_REPLICAS; i++)); do
  ml_wait_ready "${URLS[i]}" "$READY_TIMEOUT_S" "${PIDS[i]}" \
    || ml_die "$HOST replica $i did not become ready; see $RUN_DIR/$HOST-replica$i.out"
  ml_replica_ports "$i"
  ml_write_endpoint "$RUN_DIR/endpoints.d/$HOST-replica$i" "$HOST" "$ML_HTTP_PORT" "$ML_GRPC_PORT" "$ML_METRICS_PORT"
done
ml_log "$HOST: $NUM_REPLICAS replica(s) ready; endpoints in $RUN_DIR/endpoints.d"

# Fail fast: one replica exiting ends the task (and, under srun --kill-on-bad-exit, the job).
status=0
wait -n || status=$?
ml_log "$HOST: a replica exited (status $status); stopping the others"
exit "$((status == 0 ? 1 : status))"
