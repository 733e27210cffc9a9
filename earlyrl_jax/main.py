"""Entry point: `python -m earlyrl_jax.main --config=configs/tiny.py --workdir=DIR`.

The config file's `mode` picks the job (override with `--config.mode=...`); the jobs
are listed in `earlyrl_jax/modes.py` and by `--help`. Any config field can be
overridden: `--config.num_steps=50 --config.data.batch_size=8`.

A mistake a user can make (an unknown or mistyped config field, a bad value, a
workdir that is a file, unusable data, an unreadable model directory, a missing
extra, a run that diverged) ends with one `error: ...` line on stderr and exit
code 2, before anything slow starts where possible; nothing already in the
workdir is removed. A setting that is legal but almost surely unintended prints
one `warning: ...` line and the run goes on.

Exit codes (earlyrl_jax/errors.py): 0 finished; 2 a user error (fix it, do not
retry); 75 (EX_TEMPFAIL) stopped by SIGTERM or SIGUSR1 after the checkpoint was
written: rerun the same command to resume (the SLURM and XManager launchers
requeue on it); 130 interrupted by Ctrl-C.
"""
from __future__ import annotations

import contextlib
import difflib
import os
import re
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from earlyrl_jax.errors import INTERRUPTED, STOP_SIGNALS, STOPPED, USAGE_ERROR  # light
from earlyrl_jax.modes import help_text  # light: imports nothing heavy

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs", "tiny.py")

# Defined by _define_flags(): ml_collections parses the default config and the
# `--config.*` overrides at definition time, so definition must happen where its
# errors are caught (inside _parse_flags), not at import.
_CONFIG = _WORKDIR = _DISTRIBUTED = None


def _define_flags(argv: list[str]) -> None:
  global _CONFIG, _WORKDIR, _DISTRIBUTED
  if _CONFIG is not None:
    return
  _CONFIG = config_flags.DEFINE_config_file(
      "config", _DEFAULT_CONFIG, "Path to an ml_collections config file (get_config()); its `mode` "
      "field picks the job:\n" + help_text(), lock_config=True, sys_argv=argv)
  _WORKDIR = flags.DEFINE_string("workdir", "/tmp/earlyrl_jax", "Run directory: checkpoints, "
                                 "metrics.jsonl, TensorBoard events, generated data.")
  _DISTRIBUTED = flags.DEFINE_bool(
      "distributed", False, "Call jax.distributed.initialize() (multi-host); see launch/.")


def run(cfg, workdir: str):
  """Dispatches on cfg.mode through the mode table; notebooks can call it like the CLI."""
  from earlyrl_jax.configs import ConfigError
  from earlyrl_jax.modes import MODES
  if cfg.mode not in MODES:
    raise ConfigError(f"mode: {cfg.mode!r} is not one of {sorted(MODES)}")
  return MODES[cfg.mode].load()(cfg, workdir)


def fail(msg: str) -> None:
  """Prints one `error:` line on stderr and exits with USAGE_ERROR."""
  one_line = " ".join(str(msg).split())
  print(f"error: {one_line}", file=sys.stderr, flush=True)
  sys.exit(USAGE_ERROR)


# --------------------------------------------------------------------------- flag parsing


def _config_path(argv: list[str]) -> str:
  """The config file named by --config (without a `:arg` suffix), else the default."""
  for i, arg in enumerate(argv):
    m = re.match(r"^--?config(=(.*))?$", arg)
    if m:
      value = m.group(2) if m.group(1) else (argv[i + 1] if i + 1 < len(argv) else "")
      return value.split(":", 1)[0]
  return _DEFAULT_CONFIG


def _overrides(argv: list[str]) -> list[str]:
  """Field paths of the `--config.a.b=v` overrides, in order."""
  out = []
  for arg in argv:
    m = re.match(r"^--?(?:no)?config\.([^=]+)", arg)
    if m and m.group(1) not in out:
      out.append(m.group(1))
  return out


def unknown_field(cfg, path: str) -> str | None:
  """A message if `path` (e.g. 'model.nonexistent') names no field of `cfg`, else None."""
  import ml_collections
  node, done = cfg, []
  for part in path.split("."):
    if not isinstance(node, (ml_collections.ConfigDict, dict)):
      return (f"--config.{path}: {'.'.join(done)} holds a value of type {type(node).__name__}, "
              "not a section with fields")
    keys = sorted(node.keys())
    if part not in keys:
      close = difflib.get_close_matches(part, keys, n=1)
      hint = f"did you mean {'.'.join(done + [close[0]])!r}? " if close else ""
      which = "" if len(done) + 1 == len(path.split(".")) else f" {'.'.join(done + [part])!r}"
      return f"--config.{path}: unknown field{which} ({hint}known: {', '.join(keys)})"
    node, done = node[part], done + [part]
  return None


def _describe_parse_error(e: Exception, argv: list[str]) -> str:
  """One line for a failure inside absl / ml_collections flag parsing."""
  if isinstance(e, (KeyError, AttributeError)):
    # ml_collections raises these (chained several deep) for an unknown override;
    # load the config ourselves to name the field and the known ones.
    try:
      from earlyrl_jax.configs import load_config_file
      cfg = load_config_file(_config_path(argv))
      for path in _overrides(argv):
        msg = unknown_field(cfg, path)
        if msg:
          return msg
    except Exception:  # the config itself is broken: fall through to the raw message
      pass
    return f"bad --config override: {e}"
  return str(e)


def _last_line(e: BaseException) -> str:
  """The most specific line of a (possibly multi-line, chained) error message."""
  while e.__cause__ is not None:
    e = e.__cause__
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  return f"{type(e).__name__}: {lines[-1] if lines else ''}"


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every failure turned into one `error:` line and exit 2."""
  try:
    _define_flags(argv)
    rest = flags.FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError, OSError) as e:
    fail(_describe_parse_error(e, argv))
  try:
    _CONFIG.value.keys()  # ml_collections defers a config file's load error to first use
  except Exception as e:  # the file is missing, or its get_config() raised
    fail(f"--config={_config_path(argv)}: cannot load the config file: {_last_line(e)}")
  if len(rest) > 1:
    fail(f"unexpected arguments {rest[1:]}: flags are written --name=value "
         "(config fields --config.section.field=value)")
  return rest


# --------------------------------------------------------------------------- main


def _user_errors() -> tuple[type[BaseException], ...]:
  """Exceptions that are a user's mistake (bad config, data, paths, model directories, a
  missing extra, a diverged run)."""
  from earlyrl_jax.configs import ConfigError
  from earlyrl_jax.data.sources import DataError
  from earlyrl_jax.errors import CheckpointError, MissingExtraError
  from earlyrl_jax.teacher.backends.base import TeacherFailure
  # FloatingPointError: the loop's NonFiniteLossError (names the step and the last good checkpoint).
  # TeacherFailure: a teacher that fails past its thresholds (names it, quotes one raw output).
  return (ConfigError, DataError, CheckpointError, MissingExtraError, FloatingPointError, TeacherFailure,
          FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
          PermissionError)


class _Stopped(BaseException):
  """A stop signal outside a training step (world, tokenizer, teacher training, compile):
  nothing of the step loop to save. A BaseException, like KeyboardInterrupt, so that no
  `except Exception` on the way swallows it."""


@contextlib.contextmanager
def _stop_on_signals(enabled: bool):
  """Outside the training loop (which saves first: train/loop.py), SIGTERM / SIGUSR1 end the
  run with STOPPED as well, so a scheduler requeues it whatever it was doing. Not with
  several processes: JAX's preemption service owns SIGTERM there."""
  def handle(signum, _frame):
    raise _Stopped(signal.Signals(signum).name)
  old = {}
  if enabled:
    for sig in STOP_SIGNALS:
      old[sig] = signal.signal(sig, handle)
  try:
    yield
  finally:
    for sig, handler in old.items():
      signal.signal(sig, handler)


def _stopped(out) -> bool:
  """Whether a job's result says a stop signal ended it early (train_loop, the report)."""
  return isinstance(out, dict) and bool(out.get("preempted"))


def _message(e: BaseException) -> str:
  if isinstance(e, OSError) and e.filename and e.strerror:
    return f"{e.filename}: {e.strerror}"
  return str(e)


def main(argv):
  del argv  # checked by _parse_flags
  if not flags.FLAGS["verbosity"].present:
    # Library INFO logs (orbax, jax backends) drown the progress lines; --verbosity=0 restores them.
    logging.set_verbosity(logging.WARNING)
  from earlyrl_jax import configs
  cfg, workdir = _CONFIG.value, _WORKDIR.value
  try:
    # Cheap checks first: nothing is written, loaded, trained or compiled before they pass.
    configs.check_workdir(workdir)
    configs.validate_fields(cfg)
    if _DISTRIBUTED.value:
      from earlyrl_jax.parallel import distributed
      distributed.initialize()
    configs.validate(cfg)
    configs.check_data(cfg)
    configs.check_models(cfg)
    import jax
    with _stop_on_signals(enabled=jax.process_count() == 1):
      out = run(cfg, workdir)
  except _user_errors() as e:
    fail(_message(e))
  except _Stopped as e:
    print(f"stopped by {e} outside a training step (what was saved before is kept); rerun the "
          "same command to continue", file=sys.stderr, flush=True)
    sys.exit(STOPPED)
  except KeyboardInterrupt:
    print("interrupted (Ctrl-C): stopped without saving; the newest checkpoint is kept",
          file=sys.stderr, flush=True)
    sys.exit(INTERRUPTED)
  if _stopped(out):
    sys.exit(STOPPED)


def cli(argv: list[str] | None = None) -> None:
  """Console-script entry (`python -m earlyrl_jax.main` runs the same)."""
  app.run(main, argv=list(sys.argv if argv is None else argv), flags_parser=_parse_flags)


if __name__ == "__main__":
  cli()
