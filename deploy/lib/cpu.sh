# shellcheck shell=bash
# Helpers of the CPU (OpenVINO) profile's deploy scripts, sourced after common.sh: replicas and OpenVINO threads
# derived from a Slurm allocation, the CPU image's container command, and the project's own Python (engine
# naming, manifest check) run with the host's python3 when it can import the project, else inside the image.

# ml_cpu_image: $ML_IMAGE, else the image built from deploy/apptainer/mentallama-cpu.def into artifacts/.
ml_cpu_image() {
  echo "${ML_IMAGE:-$REPO/artifacts/mentallama-cpu.sif}"
}

# ml_tasks_per_node SPEC: Slurm's SLURM_TASKS_PER_NODE ("2(x3),1") as one count per node ("2 2 2 1").
ml_tasks_per_node() {
  local item count reps k items=() out=()
  IFS=, read -r -a items <<<"$1"
  for item in "${items[@]}"; do
    if [[ $item =~ ^([0-9]+)\(x([0-9]+)\)$ ]]; then
      count=${BASH_REMATCH[1]} reps=${BASH_REMATCH[2]}
    elif [[ $item =~ ^[0-9]+$ ]]; then
      count=$item reps=1
    else
      return 1
    fi
    for ((k = 0; k < reps; k++)); do
      out+=("$count")
    done
  done
  echo "${out[*]}"
}

# ml_spread TOTAL NODES: TOTAL replicas over at most NODES nodes as evenly as Slurm spreads tasks ("3 2").
ml_spread() {
  local total=$1 nodes=$2 n out=()
  ((nodes > total)) && nodes=$total
  for ((n = 0; n < nodes; n++)); do
    out+=("$((total / nodes + (n < total % nodes ? 1 : 0)))")
  done
  echo "${out[*]}"
}

# ml_cpu_plan: replicas and threads from the allocation (or the overrides NUM_REPLICAS, OV_THREADS):
#   ML_NODE_REPLICAS     replicas on each node: NUM_REPLICAS spread over the nodes, else Slurm's tasks per node
#                        (one replica per task), else 1
#   ML_REPLICAS          their sum
#   ML_CPUS_PER_REPLICA  SLURM_CPUS_PER_TASK when replicas are Slurm's tasks, else the node's CPUs
#                        (SLURM_CPUS_ON_NODE, else nproc) divided by the most replicas on one node
#   ML_THREADS           OpenVINO threads: OV_THREADS, else ML_CPUS_PER_REPLICA (0 = OpenVINO's default)
# shellcheck disable=SC2034  # the caller reads them
ml_cpu_plan() {
  local nodes=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}} from_tasks=1 n max=0 cpus_on_node spec
  if [[ -n ${NUM_REPLICAS:-} ]]; then
    [[ $NUM_REPLICAS =~ ^[1-9][0-9]*$ ]] || ml_die "NUM_REPLICAS must be >= 1, got '$NUM_REPLICAS'"
    read -r -a ML_NODE_REPLICAS <<<"$(ml_spread "$NUM_REPLICAS" "$nodes")"
    from_tasks=0
  elif [[ -n ${SLURM_TASKS_PER_NODE:-} ]]; then
    spec=$(ml_tasks_per_node "$SLURM_TASKS_PER_NODE") \
      || ml_die "cannot read SLURM_TASKS_PER_NODE='$SLURM_TASKS_PER_NODE'"
    read -r -a ML_NODE_REPLICAS <<<"$spec"
  elif [[ -n ${SLURM_NTASKS:-} ]]; then
    read -r -a ML_NODE_REPLICAS <<<"$(ml_spread "$SLURM_NTASKS" "$nodes")"
  else
    ML_NODE_REPLICAS=(1)
    from_tasks=0
  fi
  ML_REPLICAS=0
  for n in "${ML_NODE_REPLICAS[@]}"; do
    ML_REPLICAS=$((ML_REPLICAS + n))
    ((n > max)) && max=$n
  done
  ((ML_REPLICAS >= 1)) || ml_die "no replicas to start"
  if ((from_tasks)) && [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then
    ML_CPUS_PER_REPLICA=$SLURM_CPUS_PER_TASK
  else
    cpus_on_node=${SLURM_CPUS_ON_NODE:-$(nproc)}
    ML_CPUS_PER_REPLICA=$((cpus_on_node / max))
    ((ML_CPUS_PER_REPLICA >= 1)) || ml_die "$max replicas on a node with $cpus_on_node CPUs: fewer replicas"
  fi
  ML_THREADS=${OV_THREADS:-$ML_CPUS_PER_REPLICA}
  [[ $ML_THREADS =~ ^[0-9]+$ ]] || ml_die "OV_THREADS must be a number >= 0, got '$ML_THREADS'"
}

# ml_allowed_cpus: the CPUs this process may run on (its affinity list), one number each, in order.
ml_allowed_cpus() {
  local spec part first last c parts=() out=()
  spec=$(awk '/^Cpus_allowed_list:/ {print $2}' /proc/self/status 2>/dev/null || true)
  [[ -n $spec ]] || spec="0-$(($(nproc) - 1))"
  IFS=, read -r -a parts <<<"$spec"
  for part in "${parts[@]}"; do
    first=${part%-*} last=${part#*-}
    for ((c = first; c <= last; c++)); do
      out+=("$c")
    done
  done
  echo "${out[*]}"
}

# ml_cpu_container IMAGE DIR...: ML_CPU_CONTAINER=(runtime exec --cleanenv --bind DIR:DIR ... IMAGE).
# Same paths inside and outside: engine, checkpoint and run folders are named by host paths.
ml_cpu_container() {
  local image=$1 dir
  shift
  ML_CPU_CONTAINER=("$(ml_container_runtime)" exec --cleanenv)
  for dir in "$@"; do
    ML_CPU_CONTAINER+=(--bind "$dir:$dir")
  done
  ML_CPU_CONTAINER+=("$image")
}

# ml_cpu_python CODE ARG...: run the project's Python with the host's python3 when it imports the project
# (a checkout with its .venv on PATH), else with the image's (ML_CPU_CONTAINER, set by the caller).
ml_cpu_python() {
  if [[ -z ${ML_CPU_HOST_PYTHON:-} ]]; then
    ML_CPU_HOST_PYTHON=0
    if PYTHONPATH="$REPO/client:$REPO/engine_build${PYTHONPATH:+:$PYTHONPATH}" python3 -c 'import mentallama_build.openvino_build' \
      >/dev/null 2>&1; then
      ML_CPU_HOST_PYTHON=1
    fi
  fi
  if ((ML_CPU_HOST_PYTHON)); then
    PYTHONPATH="$REPO/client:$REPO/engine_build${PYTHONPATH:+:$PYTHONPATH}" python3 -c "$@"
  else
    "${ML_CPU_CONTAINER[@]}" python3 -c "$@"
  fi
}
