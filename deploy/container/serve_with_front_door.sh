#!/usr/bin/env bash
# Inside the GPU container: tritonserver (its argv after --, bound to 127.0.0.1 on private ports) and the front
# door (`python3 -m mentallama_server.front_door` with the options before --, on the public ports), supervised
# together. Used by run_triton.sh (Apptainer, and through it the Slurm jobs) and by Kubernetes (deploy/k8s).
#
# Either process exiting stops the other and ends this script non-zero, so that the caller (a Slurm job,
# Kubernetes' restart policy) restarts both: a front door without Triton answers nothing, a Triton without
# the front door is unreachable. SIGTERM/SIGINT stop both (Triton drains for its --exit-timeout-secs),
# SIGKILL after ML_STOP_GRACE_S (45 s).
#
# Usage: serve_with_front_door.sh FRONT-DOOR-OPTIONS... -- TRITONSERVER-ARGV...
# Environment:
#   ML_VENV    the environment of our tools (deploy/container/install_tools.sh, made with this image's python3):
#              its python runs the front door; tritonserver and TensorRT-LLM keep the image's own packages
#   ML_PYTHON  the interpreter instead (default: $ML_VENV/bin/python, else python3)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib/common.sh
source "$HERE/../lib/common.sh"

FRONT=()
while (($#)) && [[ $1 != -- ]]; do
  FRONT+=("$1")
  shift
done
(($#)) || ml_die "usage: serve_with_front_door.sh FRONT-DOOR-OPTIONS... -- TRITONSERVER-ARGV..."
shift
SERVER=("$@")
((${#FRONT[@]} > 0 && ${#SERVER[@]} > 0)) \
  || ml_die "usage: serve_with_front_door.sh FRONT-DOOR-OPTIONS... -- TRITONSERVER-ARGV..."

PYTHON=${ML_PYTHON:-${ML_VENV:+$ML_VENV/bin/python}}
PYTHON=${PYTHON:-python3}
# Fail before minutes of engine loading when the front door cannot even be imported.
if ! "$PYTHON" -c 'import fastapi, uvicorn, tritonclient.grpc, mentallama_server.front_door.server' 2>/dev/null; then
  ml_die "the front door does not import with $PYTHON: install our tools once with" \
    "deploy/container/install_tools.sh --venv DIR and pass ML_VENV=DIR (deploy/README.md, 'Our tools in the NGC image')"
fi

ml_install_traps
"${SERVER[@]}" &
triton=$!
ml_track "$triton"
# The front door starts at once: it answers 503 / UNAVAILABLE (not ready) until Triton is, and reconnects
# when Triton restarts.
"$PYTHON" -m mentallama_server.front_door "${FRONT[@]}" &
front=$!
ml_track "$front"
ml_log "tritonserver (pid $triton) and the front door (pid $front) started"

status=0
wait -n "$triton" "$front" || status=$?
if ! kill -0 "$front" 2>/dev/null; then
  ml_log "the front door exited (status $status); stopping tritonserver"
else
  ml_log "tritonserver exited (status $status); stopping the front door"
fi
exit "$((status == 0 ? 1 : status))"
