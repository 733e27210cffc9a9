"""Orbax checkpoints of (TrainState, data iterator) in WORKDIR/checkpoints/.

Saves are asynchronous (training continues while arrays are written) and atomic
(orbax writes to a temporary directory and renames it when complete), so a run
killed at any moment resumes from the newest *complete* checkpoint. Restoring
takes an abstract TrainState whose leaves carry the target shardings, which is
how a checkpoint written on one mesh is restored onto another.

Directories are `etils.epath` paths (what orbax uses), so `gs://bucket/run` and
other remote paths work like local ones: nothing here goes through `os.path`.

Preemption: `reached_preemption(step)` is True at the same step on every process.
On one process it reports a SIGTERM caught by `watch_preemption()`. On several it
asks JAX's preemption service (through orbax), which catches SIGTERM in C++ on
whichever host receives it and agrees on max(step over hosts) + 1 as the step at
which all hosts save and stop; a Python SIGTERM handler would replace that C++
handler, so `watch_preemption()` installs none when there are several processes.
"""
from __future__ import annotations

import contextlib
import os
import signal
import warnings
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath


def checkpoint_path(directory) -> epath.Path:
  """An epath.Path; local paths are made absolute, remote ones (gs://, s3://) kept as given."""
  text = str(directory)
  if "://" in text:
    return epath.Path(text)
  return epath.Path(text).expanduser().resolve()


def _preemption_service_available() -> bool:
  try:
    from jax._src import distributed
    return distributed.global_state.preemption_sync_manager is not None
  except Exception:  # a JAX without that internal: fall back to the agreed flag
    return False


class Checkpointer:

  def __init__(self, directory, *, keep: int = 3, every_steps: int = 100,
               async_save: bool = True):
    self.directory = checkpoint_path(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=every_steps,
        enable_async_checkpointing=async_save, create=True)
    self._mngr = ocp.CheckpointManager(self.directory, options=options)
    self._sigterm = False
    self._warned = False

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def should_save(self, step: int) -> bool:
    return self._mngr.should_save(step)

  def save(self, step: int, state, data_iter=None, *, force: bool = False) -> bool:
    """Starts saving `state` (and the iterator position) as `step`; returns whether it did."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    return self._mngr.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, abstract_state, data_iter=None, step: int | None = None) -> tuple[Any, int]:
    """Restores into `abstract_state`'s shapes/shardings (and sets `data_iter`'s position)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self._mngr.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], step

  # ------------------------------------------------------------------ preemption

  @contextlib.contextmanager
  def watch_preemption(self):
    """While active, SIGTERM on a single process sets the flag `reached_preemption` reports.

    With several processes it installs nothing when JAX's preemption service is
    running (that service catches SIGTERM itself; see the module docstring).
    """
    if jax.process_count() > 1 and _preemption_service_available():
      yield self
      return
    old = None
    try:
      old = signal.signal(signal.SIGTERM, self._on_sigterm)
    except ValueError:  # not the main thread (some notebook runners): no flag
      old = None
    try:
      yield self
    finally:
      if old is not None:
        signal.signal(signal.SIGTERM, old)

  def _on_sigterm(self, signum, frame):
    if self._sigterm:  # a second SIGTERM: the run is not reaching a step boundary; die now
      signal.signal(signal.SIGTERM, signal.SIG_DFL)
      os.kill(os.getpid(), signal.SIGTERM)
    self._sigterm = True

  def request_preemption(self) -> None:
    """Marks this process as preempted (what SIGTERM does); for tests and custom schedulers."""
    self._sigterm = True

  def reached_preemption(self, step: int) -> bool:
    """True when every process should save `step` and stop; the same answer on all of them.

    Call it once per step with the step just completed, on every process.
    """
    if jax.process_count() == 1:
      return self._sigterm
    if _preemption_service_available():
      return bool(self._mngr.reached_preemption(step) or False)
    if not self._warned:
      warnings.warn("JAX's preemption service is off (jax_enable_preemption_service); "
                    "hosts agree on preemption through a per-step all-gather instead")
      self._warned = True
    from earlyrl_jax.parallel.distributed import host_allgather
    return bool(host_allgather([int(self._sigterm)]).max())

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()
