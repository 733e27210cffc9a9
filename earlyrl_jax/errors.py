"""How a run ends when it does not finish: errors that are a user's to fix, and stops.

`earlyrl_jax.main` turns each error here (with `configs.ConfigError` and
`data.sources.DataError`) into one `error:` line and exit code 2. A stop signal
(STOP_SIGNALS) makes a training run save its checkpoint and end with exit code STOPPED.
This module imports nothing of the package, so models/, data/ and train/ can use it
without importing the entry point.
"""
from __future__ import annotations

import json
import signal

# Exit codes of `python -m earlyrl_jax.main` (README: "Exit codes").
FINISHED = 0
USAGE_ERROR = 2  # a user's mistake, reported as one `error:` line: fix it, do not retry
# Stopped by a signal after the checkpoint was written (or before there was anything to save):
# rerun the same command to resume. 75 is EX_TEMPFAIL of sysexits.h, "a temporary failure, the
# user is invited to retry", which schedulers and wrappers can match. Not 143 (128 + SIGTERM):
# that is also what a shell reports for a process the signal killed before it could save.
STOPPED = 75
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, the shell's convention): stops at once, no retry

# Signals that ask a run to save and stop: SIGTERM (preemption, SLURM's --signal=TERM@T, a
# scheduler's stop) and SIGUSR1 (clusters that send it ahead of a time limit).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class ConfigError(ValueError):
  """A config field has a bad value; the message names the field (`earlyrl_jax.configs`)."""


class CheckpointError(ValueError):
  """A model, teacher or tokenizer file that cannot be read: not JSON, an unsupported
  architecture, truncated or corrupt weights, a missing tensor. The message names the file."""


class MissingExtraError(ImportError):
  """An optional dependency (an extra of setup.py) is not installed; the message names the
  extra, the setting that needs it and the pip command."""


def json_problem(e: json.JSONDecodeError) -> str:
  """json's message with its column, said once: 'Unterminated string starting at column 7'
  (its messages that end in 'at' already point at the column)."""
  msg = e.msg[:-3] if e.msg.endswith(" at") else e.msg
  return f"{msg} at column {e.colno}"
