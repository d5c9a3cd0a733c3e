#!/usr/bin/env bash
# Run one CPU-profile server (`mentallama-serve --profile cpu`: Triton with the OpenVINO engine) inside the CPU
# image built from mentallama-cpu.def, with Apptainer (or Singularity). No GPU, no --nv.
#
# The server runs in the foreground (exec), so a caller can background it, track its PID and stop it with
# SIGTERM; mentallama-serve stops Triton (30 s drain) and removes its /dev/shm regions.
#
# Usage: run_cpu.sh --engine DIR [options] [-- extra mentallama-serve options]
#   --engine DIR          OpenVINO engine folder (build_cpu_engine.sh or `mentallama-build openvino`)
#   --checkpoint DIR      the checkpoint it was built from: its manifest is checked against it too
#   --threads N           OpenVINO inference threads (default 0: one per core the process may use)
#   --host ADDR           address the endpoints bind (default 127.0.0.1)
#   --http-port P --grpc-port P --metrics-port P   (default 8000 8001 8002)
#   --run-dir DIR         rendered repository and Triton's logs (default: artifacts/runs/cpu-<time>-<pid>)
#   --ready-timeout S     time allowed for loading the engine (default 1800)
#   --image IMAGE         the CPU image (default: $ML_IMAGE or artifacts/mentallama-cpu.sif)
#   --bind DIR            another folder bound at the same path (repeat)
#   --dry-run             print the container command instead of running it
set -euo pipefail

REPO=${MENTALLAMA_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
# shellcheck source=../lib/common.sh
source "$REPO/deploy/lib/common.sh"
# shellcheck source=../lib/cpu.sh
source "$REPO/deploy/lib/cpu.sh"

ENGINE=""
CHECKPOINT=""
THREADS=0
HOST_ADDR=127.0.0.1
HTTP_PORT=8000
GRPC_PORT=8001
METRICS_PORT=8002
RUN_DIR=""
READY_TIMEOUT_S=1800
IMAGE=$(ml_cpu_image)
BINDS=()
EXTRA=()
DRY_RUN=0

while (($#)); do
  case $1 in
    --engine) ENGINE=$2; shift 2 ;;
    --checkpoint) CHECKPOINT=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --host) HOST_ADDR=$2; shift 2 ;;
    --http-port) HTTP_PORT=$2; shift 2 ;;
    --grpc-port) GRPC_PORT=$2; shift 2 ;;
    --metrics-port) METRICS_PORT=$2; shift 2 ;;
    --run-dir) RUN_DIR=$2; shift 2 ;;
    --ready-timeout) READY_TIMEOUT_S=$2; shift 2 ;;
    --image) IMAGE=$2; shift 2 ;;
    --bind) BINDS+=("$2"); shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) ml_usage 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "run_cpu.sh: unknown option $1" >&2; ml_usage 2 ;;
  esac
done

[[ -n $ENGINE ]] || { echo "run_cpu.sh: --engine is required" >&2; exit 2; }
[[ $THREADS =~ ^[0-9]+$ ]] || { echo "run_cpu.sh: --threads must be a number >= 0" >&2; exit 2; }
RUN_DIR=${RUN_DIR:-$REPO/artifacts/runs/cpu-$(date +%Y%m%d-%H%M%S)-$$}
# Absolute paths: each is bound at the same path inside the container.
ENGINE=$(realpath -m "$ENGINE")
RUN_DIR=$(realpath -m "$RUN_DIR")
[[ -z $CHECKPOINT ]] || CHECKPOINT=$(realpath -m "$CHECKPOINT")
((DRY_RUN)) || mkdir -p "$RUN_DIR"

dirs=("$ENGINE" "$RUN_DIR" "${BINDS[@]}")
SERVER=(mentallama-serve --profile cpu --engine "$ENGINE")
if [[ -n $CHECKPOINT ]]; then
  dirs+=("$CHECKPOINT")
  SERVER+=(--model "$CHECKPOINT")
fi
SERVER+=(--num-threads "$THREADS" --host "$HOST_ADDR" --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT"
  --metrics-port "$METRICS_PORT" --run-dir "$RUN_DIR" --ready-timeout "$READY_TIMEOUT_S" "${EXTRA[@]}")
ml_cpu_container "$IMAGE" "${dirs[@]}"

if ((DRY_RUN)); then
  printf '%q ' "${ML_CPU_CONTAINER[@]}" "${SERVER[@]}"
  printf '\n'
  exit 0
fi
exec "${ML_CPU_CONTAINER[@]}" "${SERVER[@]}"
