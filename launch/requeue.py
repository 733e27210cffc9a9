"""Runs a training command again when it stops with exit code 75: the requeue of an XManager job.

  python -m launch.requeue --max_requeues=100 -- python -m earlyrl_jax.main --distributed ...

A run that a signal stops saves its checkpoint and exits with 75 (EX_TEMPFAIL,
earlyrl_jax/errors.py STOPPED); run again, it resumes from that checkpoint. XManager's
executors restart nothing by exit code (its GKE jobs run with backoffLimit 0, its Vertex AI
jobs have no restart policy), so launch/xm_launch.py makes this wrapper the job's command:

- the command exits 75 and this process received no stop signal itself (a host that stopped
  because another host was preempted, a SIGTERM / SIGUSR1 sent to the training process by
  a watchdog): it starts the command again, at most `--max_requeues` times;
- this process receives SIGTERM / SIGUSR1 / SIGINT (the container itself is being stopped):
  it passes the signal on, waits for the command to save and exit, and exits with its code
  without restarting (the platform ends the job; the same launch command resumes it);
- any other exit code (0 finished, 2 a user error, a crash) is returned at once.
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys

STOPPED = 75  # earlyrl_jax.errors.STOPPED (this module runs without the package installed)
_FORWARDED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def run(argv: list[str], max_requeues: int, log=lambda msg: print(msg, file=sys.stderr,
                                                                   flush=True)) -> int:
  """Runs `argv` until it exits with anything but STOPPED, or this process is told to stop."""
  told_to_stop = []
  child: list[subprocess.Popen] = []

  def forward(signum, _frame):
    told_to_stop.append(signum)
    if child and child[0].poll() is None:
      child[0].send_signal(signum)

  old = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
  try:
    for attempt in range(max_requeues + 1):
      child[:] = [subprocess.Popen(argv)]
      rc = child[0].wait()
      if rc != STOPPED or told_to_stop:
        return rc
      if attempt == max_requeues:
        log(f"requeue: the run stopped after saving (exit {STOPPED}) {attempt + 1} times; "
            f"--max_requeues={max_requeues} reached, not restarting")
        return rc
      log(f"requeue: the run stopped after saving (exit {STOPPED}); restarting it "
          f"({attempt + 1}/{max_requeues}), it resumes from its checkpoint")
    return STOPPED
  finally:
    for sig, handler in old.items():
      signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  p.add_argument("--max_requeues", type=int, default=100,
                 help="restarts after exit code 75 before giving up (0: run once)")
  p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARG...")
  args = p.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    p.error("no command after --")
  if args.max_requeues < 0:
    p.error(f"--max_requeues={args.max_requeues} must be >= 0")
  return run(command, args.max_requeues)


if __name__ == "__main__":
  sys.exit(main())
