#!/usr/bin/env bash
# Run one Triton server for the trtllm profile inside the NGC TensorRT-LLM container with Apptainer
# (or Singularity): one GPU, or tp x pp GPUs with one tritonserver rank per GPU under MPI.
#
# The server runs in the foreground (exec), so a caller can background it, track its PID and stop it with
# SIGTERM; Apptainer forwards the signal and Triton drains for --exit-timeout-secs.
#
# Usage: run_triton.sh --model-repo DIR [options] [-- extra tritonserver args for rank 0]
#   --model-repo DIR      rendered trtllm model repository (launcher's render step)
#   --image IMAGE         SIF file or docker://... (default: $ML_IMAGE or the 26.07 trtllm image)
#   --world-size N        tp x pp of the engine (default 1)
#   --http-port P --grpc-port P --metrics-port P   (default 8000 8001 8002)
#   --gpus LIST           CUDA_VISIBLE_DEVICES inside the container (default: inherited)
#   --bind DIR            folder bound at the same path (repeat: engine dir, tokenizer dir, ...)
#   --shm-prefix NAME     Python-backend shared-memory prefix, distinct per server on a node
#   --shm-pool-mib MIB    Python-backend pool per model instance, allocated whole (default 16, as mentallama-serve)
#   --log-file FILE       Triton log file (rank 0)
#   --dry-run             print the container command instead of running it
set -euo pipefail

REPO=${MENTALLAMA_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
# shellcheck source=../lib/common.sh
source "$REPO/deploy/lib/common.sh"
IMAGE=${ML_IMAGE:-docker://nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3}
MODEL_REPO=""
WORLD_SIZE=1
HTTP_PORT=8000
GRPC_PORT=8001
METRICS_PORT=8002
GPUS=${CUDA_VISIBLE_DEVICES:-}
SHM_PREFIX=prefix
SHM_POOL_MIB=16
LOG_FILE=""
DRY_RUN=0
BINDS=()
RANK0_ARGS=(--exit-timeout-secs=30 --strict-readiness=true)

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
  exit "${1:-0}"
}

while (($#)); do
  case $1 in
    --model-repo) MODEL_REPO=$2; shift 2 ;;
    --image) IMAGE=$2; shift 2 ;;
    --world-size) WORLD_SIZE=$2; shift 2 ;;
    --http-port) HTTP_PORT=$2; shift 2 ;;
    --grpc-port) GRPC_PORT=$2; shift 2 ;;
    --metrics-port) METRICS_PORT=$2; shift 2 ;;
    --gpus) GPUS=$2; shift 2 ;;
    --bind) BINDS+=("$2"); shift 2 ;;
    --shm-prefix) SHM_PREFIX=$2; shift 2 ;;
    --shm-pool-mib) SHM_POOL_MIB=$2; shift 2 ;;
    --log-file) LOG_FILE=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage 0 ;;
    --) shift; RANK0_ARGS+=("$@"); break ;;
    *) echo "run_triton.sh: unknown option $1" >&2; usage 2 ;;
  esac
done

[[ -n $MODEL_REPO ]] || { echo "run_triton.sh: --model-repo is required" >&2; exit 2; }
[[ $WORLD_SIZE =~ ^[1-9][0-9]*$ ]] || { echo "run_triton.sh: --world-size must be >= 1" >&2; exit 2; }
RUNTIME=$(ml_container_runtime)

# Same path inside and outside: the rendered configs name host paths (engine, tokenizer, code).
CONTAINER=("$RUNTIME" exec --nv --cleanenv --env "PYTHONPATH=$REPO/src")
if [[ -n $GPUS ]]; then
  CONTAINER+=(--env "CUDA_VISIBLE_DEVICES=$GPUS")
fi
for dir in "$REPO" "$MODEL_REPO" "${BINDS[@]}"; do
  CONTAINER+=(--bind "$dir:$dir")
done
if [[ -n $LOG_FILE ]]; then
  log_dir=$(dirname "$LOG_FILE")
  ((DRY_RUN)) || mkdir -p "$log_dir"
  CONTAINER+=(--bind "$log_dir:$log_dir")
fi
CONTAINER+=("$IMAGE")

GEN=(python3 -m mentallama_server.launch.trtllm_profile mpi-command --print0
  --world-size "$WORLD_SIZE" --model-repo "$MODEL_REPO" --shm-prefix "$SHM_PREFIX" --shm-pool-mib "$SHM_POOL_MIB"
  --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" --metrics-port "$METRICS_PORT")
if [[ -n $LOG_FILE ]]; then
  GEN+=(--log-file "$LOG_FILE")
fi
GEN+=(-- "${RANK0_ARGS[@]}")

# The launch argv comes from mentallama_server.launch.trtllm_profile.mpi_command (one definition, tested):
# host python3 when it can run it, else the container's.
argv_file=$(mktemp)
trap 'rm -f "$argv_file"' EXIT
if ! PYTHONPATH="$REPO/src" python3 "${GEN[@]:1}" >"$argv_file" 2>/dev/null; then
  if ((DRY_RUN)); then
    printf '%q ' "${CONTAINER[@]}" "${GEN[@]}"
    printf '\n'
    exit 0
  fi
  "${CONTAINER[@]}" "${GEN[@]}" >"$argv_file"
fi
mapfile -d '' -t SERVER <"$argv_file"
rm -f "$argv_file"
trap - EXIT
((${#SERVER[@]} > 0)) || { echo "run_triton.sh: could not build the tritonserver command" >&2; exit 1; }

if ((DRY_RUN)); then
  printf '%q ' "${CONTAINER[@]}" "${SERVER[@]}"
  printf '\n'
  exit 0
fi
exec "${CONTAINER[@]}" "${SERVER[@]}"
