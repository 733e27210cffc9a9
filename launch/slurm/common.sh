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

# The exit code of a run that a signal stopped after writing its checkpoint (EX_TEMPFAIL;
# earlyrl_jax/errors.py STOPPED): the job is requeued and resumes from that checkpoint.
EARLYRL_STOPPED=75

# earlyrl_srun ARG... : one process per node runs earlyrl_jax.main --distributed ARG...
# jax.distributed.initialize() reads SLURM's environment (coordinator, process count and id).
# --signal=TERM@T (or USR1) makes every host save at the same step and exit with
# EARLYRL_STOPPED; then `scontrol requeue` puts the job back in the queue (at most
# EARLYRL_MAX_REQUEUES times, default 100: SLURM_RESTART_COUNT counts them) and the batch
# script exits with that code. Any other exit code ends the job with it: 0 finished, 2 a
# user error (the `error:` line says which setting), anything else a crash.
earlyrl_srun() {
  local cmd=(srun --kill-on-bad-exit=1 "${PYTHON:-python}" -m earlyrl_jax.main --distributed "$@")
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    local line
    printf -v line '%q ' "${cmd[@]}"
    echo "${line% }"
    return 0
  fi
  cd "$REPO"
  local rc=0
  "${cmd[@]}" || rc=$?
  if [[ $rc -eq $EARLYRL_STOPPED ]]; then
    earlyrl_requeue
  fi
  exit "$rc"
}

# earlyrl_requeue : puts this job back in the queue (the run stopped after saving).
earlyrl_requeue() {
  local count=${SLURM_RESTART_COUNT:-0} most=${EARLYRL_MAX_REQUEUES:-100}
  if [[ -z "${SLURM_JOB_ID:-}" ]]; then
    echo "earlyrl: the run stopped after saving (exit $EARLYRL_STOPPED); not under SLURM, nothing requeued" >&2
  elif (( count >= most )); then
    echo "earlyrl: the run stopped after saving; job $SLURM_JOB_ID was requeued $count times" \
      "(EARLYRL_MAX_REQUEUES=$most), not again: resubmit it to continue" >&2
  else
    echo "earlyrl: the run stopped after saving; requeueing job $SLURM_JOB_ID (restart $((count + 1)))" >&2
    # (SLURM's own preemption may be requeueing it already: a refusal here changes nothing.)
    scontrol requeue "$SLURM_JOB_ID" || echo "earlyrl: scontrol requeue $SLURM_JOB_ID failed" >&2
  fi
}
