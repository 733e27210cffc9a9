"""Orbax checkpoints of (TrainState, data iterator) in WORKDIR/checkpoints/.

Saves are asynchronous (training continues while arrays are written) and atomic
(orbax writes to a temporary directory and renames it when complete), so a run
killed at any moment resumes from the newest *complete* checkpoint. Restoring
takes an abstract TrainState whose leaves carry the target shardings, which is
how a checkpoint written on one mesh is restored onto another.
"""
from __future__ import annotations

import os
from typing import Any

import grain
import orbax.checkpoint as ocp


class Checkpointer:

  def __init__(self, directory: str, *, keep: int = 3, every_steps: int = 100,
               async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=every_steps,
        enable_async_checkpointing=async_save, create=True)
    self._mngr = ocp.CheckpointManager(self.directory, options=options)

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

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()
