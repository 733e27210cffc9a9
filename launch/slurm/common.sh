# Shared by launch/slurm/*.sbatch (sourced, not run): environment and the srun line.
#
# Each script finds the repository first (under sbatch, $0 is a copy in SLURM's spool
# directory, so the script's own location says nothing): $EARLYRL_REPO if set, else the
# directory sbatch was called from when it holds launch/slurm/, else the script's
# grandparent directory (running the script with bash, e.g. DRY_RUN=1).
#
# DRY_RUN=1 prints the srun command line (shell-quoted, one line) instead of running it.

# earlyrl_positional VAR... : the leading non-flag arguments fill VAR... (a variable already
# set in the environment is used when its argument is missing); the rest, after an optional
# `--`, are left in EARLYRL_OVERRIDES for earlyrl_jax.main.
earlyrl_positional() {
  local names=("$@")
  local name
  for name in "${names[@]}"; do
    if [[ ${#EARLYRL_ARGS[@]} -gt 0 && "${EARLYRL_ARGS[0]}" != -* ]]; then
      printf -v "$name" '%s' "${EARLYRL_ARGS[0]}"
      EARLYRL_ARGS=("${EARLYRL_ARGS[@]:1}")
    fi
  done
  if [[ ${#EARLYRL_ARGS[@]} -gt 0 && "${EARLYRL_ARGS[0]}" == "--" ]]; then
    EARLYRL_ARGS=("${EARLYRL_ARGS[@]:1}")
  fi
  EARLYRL_OVERRIDES=("${EARLYRL_ARGS[@]}")
}

# earlyrl_require USAGE VAR... : exits with USAGE naming the first empty VAR.
earlyrl_require() {
  local usage=$1; shift
  local name
  for name in "$@"; do
    if [[ -z "${!name:-}" ]]; then
      echo "error: $name is not set (argument or environment variable)" >&2
      echo "usage: $usage" >&2
      exit 2
    fi
  done
}

# GPU hosts: XLA may take most of the memory; overlap collectives with compute.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
export XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true ${XLA_FLAGS:-}"
export PYTHONUNBUFFERED=1
# The clone runs without `pip install -e .` too.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

# earlyrl_srun ARG... : one process per node runs earlyrl_jax.main --distributed ARG...
# jax.distributed.initialize() reads SLURM's environment (coordinator, process count and id).
earlyrl_srun() {
  local cmd=(srun --kill-on-bad-exit=1 "${PYTHON:-python}" -m earlyrl_jax.main --distributed "$@")
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    local line
    printf -v line '%q ' "${cmd[@]}"
    echo "${line% }"
    return 0
  fi
  cd "$REPO"
  exec "${cmd[@]}"
}
