# shellcheck shell=bash
# Helpers shared by the deploy scripts (sourced, not run): logging, readiness wait on /v2/health/ready (the
# front door's, which asks Triton), tracking of the processes a script starts, and a teardown that stops them on exit,
# SIGTERM (Slurm's --signal=B:TERM, scancel, pod shutdown) or Ctrl-C; container runtime, binds, replica
# ports and endpoint files as every profile (GPU and CPU) uses them.

ML_CHILD_PIDS=()
ML_STOP_GRACE_S=${ML_STOP_GRACE_S:-45}  # Triton drains in-flight requests for --exit-timeout-secs (30)
ML_POLL_S=${ML_POLL_S:-5}
ML_CLEANED=0
# GPU servers: tritonserver's own HTTP and gRPC ports, on 127.0.0.1 behind the front door, are the public ones
# plus this offset (replica i: 18000 + 10 i, ...), so that replicas on a node never collide.
ML_TRITON_PORT_OFFSET=${ML_TRITON_PORT_OFFSET:-10000}

ml_log() {
  printf '[%s] %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2
}

ml_die() {
  ml_log "error: $*"
  exit 1
}

# ml_usage [CODE]: print the calling script's help, its header comment (from line 2 to `set -euo`), and exit CODE.
ml_usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[1]}" | sed -e '$d' -e 's/^# \{0,1\}//'
  exit "${1:-0}"
}

# ml_http_ok URL: true when URL answers 2xx (curl, else python3's urllib).
ml_http_ok() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -o /dev/null --max-time 5 "$1" 2>/dev/null
  else
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$1" \
      >/dev/null 2>&1
  fi
}

# ml_wait_ready BASE_URL TIMEOUT_S [PID]: wait until BASE_URL/v2/health/ready answers 200.
# Returns 0 when ready, 1 on timeout, 2 when PID (the server) exited first.
ml_wait_ready() {
  local url="$1/v2/health/ready" timeout_s=$2 pid=${3:-} start=$SECONDS
  while ((SECONDS - start < timeout_s)); do
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
      ml_log "process $pid exited before $url was ready"
      return 2
    fi
    if ml_http_ok "$url"; then
      return 0
    fi
    sleep "$ML_POLL_S"
  done
  ml_log "timed out after ${timeout_s}s waiting for $url"
  return 1
}

# ml_track PID: stop PID in ml_cleanup.
ml_track() {
  ML_CHILD_PIDS+=("$1")
}

# ml_cleanup: SIGTERM every tracked process, give them ML_STOP_GRACE_S to drain, then SIGKILL. Idempotent.
ml_cleanup() {
  local pid alive deadline
  if ((ML_CLEANED)); then
    return 0
  fi
  ML_CLEANED=1
  if ((${#ML_CHILD_PIDS[@]} == 0)); then
    return 0
  fi
  ml_log "stopping ${#ML_CHILD_PIDS[@]} process(es): ${ML_CHILD_PIDS[*]}"
  for pid in "${ML_CHILD_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  deadline=$((SECONDS + ML_STOP_GRACE_S))
  while ((SECONDS < deadline)); do
    alive=0
    for pid in "${ML_CHILD_PIDS[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then
        alive=1
      fi
    done
    if ((alive == 0)); then
      break
    fi
    sleep 1
  done
  for pid in "${ML_CHILD_PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      ml_log "process $pid ignored SIGTERM for ${ML_STOP_GRACE_S}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  wait 2>/dev/null || true
}

# ml_install_traps: clean up on normal exit, SIGTERM (exit 143) and SIGINT (exit 130).
ml_install_traps() {
  trap 'ml_cleanup' EXIT
  trap 'ml_log "SIGTERM received"; ml_cleanup; exit 143' TERM
  trap 'ml_log "SIGINT received"; ml_cleanup; exit 130' INT
}

# ml_container_runtime: $ML_CONTAINER_RUNTIME, else apptainer or singularity, whichever is installed.
ml_container_runtime() {
  if [[ -n ${ML_CONTAINER_RUNTIME:-} ]]; then
    echo "$ML_CONTAINER_RUNTIME"
  else
    command -v apptainer || command -v singularity || echo apptainer
  fi
}

# ml_bind_args: ML_BIND_ARGS=(--bind DIR ...) for every folder of the colon-separated $ML_BIND.
ml_bind_args() {
  local dir bind_dirs=()
  ML_BIND_ARGS=()
  if [[ -n ${ML_BIND:-} ]]; then
    IFS=: read -r -a bind_dirs <<<"$ML_BIND"
  fi
  for dir in "${bind_dirs[@]}"; do
    ML_BIND_ARGS+=(--bind "$dir")
  done
}

# ml_replica_ports I: ML_HTTP_PORT, ML_GRPC_PORT, ML_METRICS_PORT of replica I on a node:
# BASE_{HTTP,GRPC,METRICS}_PORT (8000, 8001, 8002) + I * PORT_STRIDE (10).
# shellcheck disable=SC2034  # the caller reads them
ml_replica_ports() {
  local stride=${PORT_STRIDE:-10}
  ML_HTTP_PORT=$((${BASE_HTTP_PORT:-8000} + $1 * stride))
  ML_GRPC_PORT=$((${BASE_GRPC_PORT:-8001} + $1 * stride))
  ML_METRICS_PORT=$((${BASE_METRICS_PORT:-8002} + $1 * stride))
}

# ml_write_endpoint FILE HOST HTTP GRPC METRICS: the one-line endpoint file a load balancer or benchmark reads.
ml_write_endpoint() {
  printf '%s http=%d grpc=%d metrics=%d\n' "$2" "$3" "$4" "$5" >"$1"
}

# ml_front_door_flags: ML_FRONT_DOOR_FLAGS, run_triton.sh's front door options from the Slurm jobs' environment:
# SERVE_HOST (address the front door binds, default 0.0.0.0), API_KEY_FILE, TLS_CERT, TLS_KEY, TLS_CA.
ml_front_door_flags() {
  ML_FRONT_DOOR_FLAGS=(--host "${SERVE_HOST:-0.0.0.0}")
  [[ -z ${API_KEY_FILE:-} ]] || ML_FRONT_DOOR_FLAGS+=(--api-key-file "$API_KEY_FILE")
  [[ -z ${TLS_CERT:-} ]] || ML_FRONT_DOOR_FLAGS+=(--tls-cert "$TLS_CERT")
  [[ -z ${TLS_KEY:-} ]] || ML_FRONT_DOOR_FLAGS+=(--tls-key "$TLS_KEY")
  [[ -z ${TLS_CA:-} ]] || ML_FRONT_DOOR_FLAGS+=(--tls-ca "$TLS_CA")
}

# ml_gpu_ready_url HTTP_PORT: where a GPU job waits for readiness: the front door's plain HTTP, which forwards
# to Triton; with TLS_CERT set (HTTPS, perhaps mutual), tritonserver's own loopback HTTP port instead.
ml_gpu_ready_url() {
  local host=${SERVE_HOST:-0.0.0.0}
  [[ $host != 0.0.0.0 ]] || host=127.0.0.1
  if [[ -n ${TLS_CERT:-} ]]; then
    echo "http://127.0.0.1:$(($1 + ML_TRITON_PORT_OFFSET))"
  else
    echo "http://$host:$1"
  fi
}
