#!/usr/bin/env bash
# Run one server for the trtllm profile inside the NGC TensorRT-LLM container with Apptainer (or Singularity):
# one GPU, or tp x pp GPUs with one tritonserver rank per GPU under MPI. Clients reach the front door
# (mentallama_server.front_door) on the public HTTP and gRPC ports; tritonserver listens on 127.0.0.1 only, on
# private ports (public + ML_TRITON_PORT_OFFSET, 10000); its metrics page stays public for Prometheus. Both run
# in one container under deploy/container/serve_with_front_door.sh, which stops both when either exits.
#
# The container runs in the foreground (exec), so a caller can background it, track its PID and stop it with
# SIGTERM; Apptainer forwards the signal, the supervisor stops both and Triton drains for --exit-timeout-secs.
# Our tools run from their environment on a bind mount (deploy/container/install_tools.sh, once per image and
# checkout): the front door with its python, tritonserver's Python models from its site-packages (the rendered
# repository names them), TensorRT-LLM with the image's own packages.
#
# Usage: run_triton.sh --model-repo DIR [options] [-- extra tritonserver args for rank 0]
#   --model-repo DIR      rendered trtllm model repository (launcher's render step)
#   --image IMAGE         SIF file or docker://... (default: $ML_IMAGE or the 26.07 trtllm image)
#   --world-size N        tp x pp of the engine (default 1)
#   --http-port P --grpc-port P --metrics-port P   public ports (default 8000 8001 8002)
#   --triton-http-port P --triton-grpc-port P      tritonserver's own, on 127.0.0.1 (default: public + 10000)
#   --host ADDR           address the front door binds (default 0.0.0.0)
#   --venv DIR            our tools' environment (default: $ML_VENV or artifacts/ngc-venv of the checkout)
#   --api-key-file F      API keys, one per line (or MENTALLAMA_API_KEYS, passed in as APPTAINERENV_)
#   --tls-cert F --tls-key F [--tls-ca F]          TLS (mutual with --tls-ca) on both public ports
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
TRITON_HTTP_PORT=""
TRITON_GRPC_PORT=""
SERVE_ADDR=0.0.0.0
VENV=${ML_VENV:-$REPO/artifacts/ngc-venv}
FRONT_FILES=()
GPUS=${CUDA_VISIBLE_DEVICES:-}
SHM_PREFIX=prefix
SHM_POOL_MIB=16
LOG_FILE=""
DRY_RUN=0
BINDS=()
RANK0_ARGS=(--exit-timeout-secs=30 --strict-readiness=true)

while (($#)); do
  case $1 in
    --model-repo) MODEL_REPO=$2; shift 2 ;;
    --image) IMAGE=$2; shift 2 ;;
    --world-size) WORLD_SIZE=$2; shift 2 ;;
    --http-port) HTTP_PORT=$2; shift 2 ;;
    --grpc-port) GRPC_PORT=$2; shift 2 ;;
    --metrics-port) METRICS_PORT=$2; shift 2 ;;
    --triton-http-port) TRITON_HTTP_PORT=$2; shift 2 ;;
    --triton-grpc-port) TRITON_GRPC_PORT=$2; shift 2 ;;
    --host) SERVE_ADDR=$2; shift 2 ;;
    --venv) VENV=$2; shift 2 ;;
    --api-key-file | --tls-cert | --tls-key | --tls-ca) FRONT_FILES+=("$1" "$(realpath -m "$2")"); shift 2 ;;
    --gpus) GPUS=$2; shift 2 ;;
    --bind) BINDS+=("$2"); shift 2 ;;
    --shm-prefix) SHM_PREFIX=$2; shift 2 ;;
    --shm-pool-mib) SHM_POOL_MIB=$2; shift 2 ;;
    --log-file) LOG_FILE=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) ml_usage 0 ;;
    --) shift; RANK0_ARGS+=("$@"); break ;;
    *) echo "run_triton.sh: unknown option $1" >&2; ml_usage 2 ;;
  esac
done

[[ -n $MODEL_REPO ]] || { echo "run_triton.sh: --model-repo is required" >&2; exit 2; }
[[ $WORLD_SIZE =~ ^[1-9][0-9]*$ ]] || { echo "run_triton.sh: --world-size must be >= 1" >&2; exit 2; }
RUNTIME=$(ml_container_runtime)
TRITON_HTTP_PORT=${TRITON_HTTP_PORT:-$((HTTP_PORT + ML_TRITON_PORT_OFFSET))}
TRITON_GRPC_PORT=${TRITON_GRPC_PORT:-$((GRPC_PORT + ML_TRITON_PORT_OFFSET))}
VENV=$(realpath -m "$VENV")
((DRY_RUN)) || [[ -x $VENV/bin/python ]] || {
  echo "run_triton.sh: no tools environment in $VENV: make it once with deploy/container/install_tools.sh" \
    "--venv $VENV (deploy/README.md, 'Our tools in the NGC image'), or pass --venv DIR" >&2
  exit 2
}

# Same path inside and outside: the rendered configs name host paths (engine, tokenizer, code).
CONTAINER=("$RUNTIME" exec --nv --cleanenv --env "ML_VENV=$VENV")
if [[ -n $GPUS ]]; then
  CONTAINER+=(--env "CUDA_VISIBLE_DEVICES=$GPUS")
fi
# Keys travel in the environment (--cleanenv passes APPTAINERENV_*), never on a command line `ps` shows.
if [[ -n ${MENTALLAMA_API_KEYS:-} ]]; then
  export APPTAINERENV_MENTALLAMA_API_KEYS=$MENTALLAMA_API_KEYS SINGULARITYENV_MENTALLAMA_API_KEYS=$MENTALLAMA_API_KEYS
fi
file_dirs=()
for ((i = 1; i < ${#FRONT_FILES[@]}; i += 2)); do
  file_dirs+=("$(dirname "${FRONT_FILES[i]}")")
done
for dir in "$REPO" "$MODEL_REPO" "$VENV" "${BINDS[@]}" "${file_dirs[@]}"; do
  CONTAINER+=(--bind "$dir:$dir")
done
if [[ -n $LOG_FILE ]]; then
  log_dir=$(dirname "$LOG_FILE")
  ((DRY_RUN)) || mkdir -p "$log_dir"
  CONTAINER+=(--bind "$log_dir:$log_dir")
fi
CONTAINER+=("$IMAGE")

GEN=("$VENV/bin/python" -m mentallama_server.launch.trtllm_profile mpi-command --print0
  --world-size "$WORLD_SIZE" --model-repo "$MODEL_REPO" --shm-prefix "$SHM_PREFIX" --shm-pool-mib "$SHM_POOL_MIB"
  --http-port "$TRITON_HTTP_PORT" --grpc-port "$TRITON_GRPC_PORT" --metrics-port "$METRICS_PORT")
if [[ -n $LOG_FILE ]]; then
  GEN+=(--log-file "$LOG_FILE")
fi
# tritonserver on loopback only (its metrics page keeps Triton's default address: Prometheus scrapes it).
GEN+=(-- --http-address=127.0.0.1 --grpc-address=127.0.0.1 "${RANK0_ARGS[@]}")

# The front door on the public ports, in front of tritonserver's private ones.
FRONT=(bash "$REPO/deploy/container/serve_with_front_door.sh" --upstream-grpc "127.0.0.1:$TRITON_GRPC_PORT"
  --upstream-http "http://127.0.0.1:$TRITON_HTTP_PORT" --host "$SERVE_ADDR" --http-port "$HTTP_PORT"
  --grpc-port "$GRPC_PORT" "${FRONT_FILES[@]}" --)

# The launch argv comes from mentallama_server.launch.trtllm_profile.mpi_command (one definition, tested): the
# host's python3 runs the module's file (it imports only the standard library), else the tools' environment in
# the container does.
argv_file=$(mktemp)
trap 'rm -f "$argv_file"' EXIT
if ! python3 "$REPO/server/mentallama_server/launch/trtllm_profile.py" "${GEN[@]:3}" >"$argv_file" 2>/dev/null; then
  if ((DRY_RUN)); then
    printf '%q ' "${CONTAINER[@]}" "${GEN[@]}"  # how the argv would be made, in the container
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
  printf '%q ' "${CONTAINER[@]}" "${FRONT[@]}" "${SERVER[@]}"
  printf '\n'
  exit 0
fi
exec "${CONTAINER[@]}" "${FRONT[@]}" "${SERVER[@]}"
