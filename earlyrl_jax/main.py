"""Entry point: `python -m earlyrl_jax.main --config=configs/tiny.py --workdir=DIR`.

The config file's `mode` picks the job (override with `--config.mode=...`); the jobs
are listed in `earlyrl_jax/modes.py` and by `--help`. Any config field can be
overridden: `--config.num_steps=50 --config.data.batch_size=8`.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from earlyrl_jax.modes import help_text  # light: imports nothing heavy

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs", "tiny.py")
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Path to an ml_collections config file (get_config()); its `mode` "
    "field picks the job:\n" + help_text(), lock_config=True)
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    # Library INFO logs (orbax, jax backends) drown the progress lines; --verbosity=0 restores them.
    logging.set_verbosity(logging.WARNING)
  if _DISTRIBUTED.value:
    from earlyrl_jax.parallel import distributed
    distributed.initialize()
  from earlyrl_jax.configs import ConfigError
  from earlyrl_jax.data.sources import DataError
  try:
    run(_CONFIG.value, _WORKDIR.value)
  except (ConfigError, DataError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
