#!/usr/bin/env bash
# One CPU-profile replica: run by srun once per Slurm task (cpu_replicas.sbatch), or started in the
# background by that script outside Slurm. Its ports come from its index on the node (SLURM_LOCALID), its
# OpenVINO threads from OV_THREADS (else the task's SLURM_CPUS_PER_TASK). It waits until the server is ready,
# publishes its endpoint file while it serves, stops the server on SIGTERM and exits non-zero when the server
# exits (srun --kill-on-bad-exit then ends the other replicas).
#
# Arguments: extra mentallama-serve options. Environment:
#   ENGINE_DIR         OpenVINO engine folder (required; build_cpu_engine.sh)
#   CHECKPOINT         the checkpoint it was built from (its manifest is checked against it)
#   RUN_DIR            logs and endpoints (default: $MENTALLAMA_REPO/artifacts/runs/slurm-$SLURM_JOB_ID)
#   OV_THREADS         OpenVINO threads (default: SLURM_CPUS_PER_TASK, else 0 = one per core)
#   SERVE_HOST         address the endpoints bind (default 0.0.0.0: reachable from other nodes)
#   BASE_HTTP_PORT BASE_GRPC_PORT BASE_METRICS_PORT PORT_STRIDE   replica i: BASE_* + i * PORT_STRIDE
#   READY_TIMEOUT_S    time allowed for loading the engine (default 1800)
#   ML_CPU_LIST        CPUs to pin the replica to with taskset (outside Slurm; srun binds tasks itself)
#   ML_BIND ML_IMAGE   extra folders to bind (colon-separated); the CPU image
#   ML_DRY_RUN=1       print the server command instead of running it
set -euo pipefail

REPO=${MENTALLAMA_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
# shellcheck source=../lib/common.sh
source "$REPO/deploy/lib/common.sh"

: "${ENGINE_DIR:?set ENGINE_DIR to the OpenVINO engine folder}"
RUN_DIR=${RUN_DIR:-$REPO/artifacts/runs/slurm-${SLURM_JOB_ID:-local}}
INDEX=${SLURM_LOCALID:-0}
THREADS=${OV_THREADS:-${SLURM_CPUS_PER_TASK:-0}}
SERVE_HOST=${SERVE_HOST:-0.0.0.0}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-1800}
HOST=$(hostname)
NAME="$HOST-replica$INDEX"
LOG="$RUN_DIR/$NAME"
ENDPOINT="$RUN_DIR/endpoints.d/$NAME"

ml_replica_ports "$INDEX"
ml_bind_args
SERVE=("$REPO/deploy/apptainer/run_cpu.sh" --engine "$ENGINE_DIR" --threads "$THREADS" --host "$SERVE_HOST"
  --http-port "$ML_HTTP_PORT" --grpc-port "$ML_GRPC_PORT" --metrics-port "$ML_METRICS_PORT"
  --run-dir "$LOG.run" --ready-timeout "$READY_TIMEOUT_S" "${ML_BIND_ARGS[@]}")
[[ -z ${CHECKPOINT:-} ]] || SERVE+=(--checkpoint "$CHECKPOINT")
PIN=()
if [[ -n ${ML_CPU_LIST:-} ]] && command -v taskset >/dev/null 2>&1; then
  PIN=(taskset -c "$ML_CPU_LIST")
fi

if [[ ${ML_DRY_RUN:-0} == 1 ]]; then
  ((${#PIN[@]} == 0)) || printf '%q ' "${PIN[@]}"
  "${SERVE[@]}" --dry-run -- "$@"
  exit 0
fi

mkdir -p "$RUN_DIR/endpoints.d"
ml_install_traps
# The endpoint file exists exactly while the replica serves.
trap 'rm -f "$ENDPOINT"; ml_cleanup' EXIT
ml_log "$NAME: $THREADS OpenVINO thread(s)${ML_CPU_LIST:+ on CPUs $ML_CPU_LIST}, http $ML_HTTP_PORT," \
  "grpc $ML_GRPC_PORT, metrics $ML_METRICS_PORT, logs $LOG.out"
"${PIN[@]}" "${SERVE[@]}" -- "$@" >"$LOG.out" 2>&1 &
server=$!
ml_track "$server"

probe=$SERVE_HOST
[[ $probe != 0.0.0.0 ]] || probe=127.0.0.1
ml_wait_ready "http://$probe:$ML_HTTP_PORT" "$READY_TIMEOUT_S" "$server" \
  || ml_die "$NAME did not become ready; see $LOG.out and $LOG.run/"
ml_write_endpoint "$ENDPOINT" "$HOST" "$ML_HTTP_PORT" "$ML_GRPC_PORT" "$ML_METRICS_PORT"
ml_log "$NAME ready: http://$HOST:$ML_HTTP_PORT"

status=0
wait "$server" || status=$?
ml_log "$NAME: server exited with status $status"
exit "$((status == 0 ? 1 : status))"
