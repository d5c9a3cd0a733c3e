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
#   ML_FRONT_DOOR_PYTHONPATH  folder(s) holding the front door's packages (deploy/container/front_door_requirements.txt,
#                             installed with this container's python3), put first on the front door's PYTHONPATH
#                             only: Triton and TensorRT-LLM keep the container's own packages
#   PYTHONPATH                must reach the repository's server/ and client/ (mentallama_server, mentallama)
#   ML_PYTHON                 the interpreter (default python3, the container's)
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

PYTHON=${ML_PYTHON:-python3}
FRONT_PATH=${ML_FRONT_DOOR_PYTHONPATH:+$ML_FRONT_DOOR_PYTHONPATH:}${PYTHONPATH:-}
# Fail before minutes of engine loading when the front door cannot even be imported.
if ! PYTHONPATH=$FRONT_PATH "$PYTHON" -c 'import fastapi, uvicorn, tritonclient.grpc, mentallama_server.front_door.server' \
  2>/dev/null; then
  ml_die "the front door does not import with $PYTHON (PYTHONPATH=$FRONT_PATH): install" \
    "deploy/container/front_door_requirements.txt into ML_FRONT_DOOR_PYTHONPATH (deploy/README.md, 'Front door')"
fi

ml_install_traps
"${SERVER[@]}" &
triton=$!
ml_track "$triton"
# The front door starts at once: it answers 503 / UNAVAILABLE (not ready) until Triton is, and reconnects
# when Triton restarts.
PYTHONPATH=$FRONT_PATH "$PYTHON" -m mentallama_server.front_door "${FRONT[@]}" &
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
