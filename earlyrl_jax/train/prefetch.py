"""One batch ahead: the producer makes step N+1's batch while step N's update runs (`sip.max_staleness=1`).

    call N:   return batch N (made during update N-1) ─┐
              snapshot params θ_N, start batch N+1 ────┼─▶ thread: rollouts, rewrite, judge from θ_N
    loop:     dispatch update N (θ_N → θ_N+1) ─────────┘    (overlaps the update)

Batch N is made from the params before update N-1 (one step old), batch 0 and 1 both from
the starting params. The snapshot is a device copy taken before the update is dispatched,
because the step donates (frees) the params it is given.

Checkpoints stay exact: the loop saves the data iterator, and this object stands in for it.
Its state is the window iterator's position *after* the batch made ahead, plus that batch
itself (a checkpoint at step N+1 waits for batch N+1, made from θ_N, which the checkpoint
does not hold). Resumed, the first call returns that batch and the run goes on as if never
stopped. At staleness 0 (`ahead=0`) it produces each batch when asked, from the current
params, and its state is the window iterator's alone (as without it); a checkpoint of either
kind resumes at either staleness (a batch made ahead is used first).
"""
from __future__ import annotations

import base64
import json
from concurrent.futures import Future, ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any, Callable

import jax
import numpy as np


def encode_batch(batch: dict[str, np.ndarray], stats: dict[str, float]) -> dict[str, Any]:
  """A host batch and its stats as JSON-ready data (exact: raw bytes of each array)."""
  arrays = {k: {"dtype": str(np.asarray(v).dtype), "shape": list(np.shape(v)),
                "data": base64.b64encode(np.ascontiguousarray(v).tobytes()).decode()}
            for k, v in batch.items()}
  return {"arrays": arrays, "stats": {k: float(v) for k, v in stats.items()}}


def decode_batch(data: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
  batch = {k: np.frombuffer(base64.b64decode(a["data"]), np.dtype(a["dtype"])).reshape(a["shape"]).copy()
           for k, a in data["arrays"].items()}
  return batch, dict(data["stats"])


class Prefetcher:
  """`next_batch(state, step)` one step ahead of the update, checkpointable as the data iterator.

  produce(state, step) -> (batch, stats): the synchronous producer (reads `state.params`
  only, and `window_iter` for its windows). num_steps: nothing is made past the last step.
  ahead: 1 (make the next batch during the update) or 0 (each batch when asked).
  """

  def __init__(self, produce: Callable, window_iter, *, mesh=None, num_steps: int, ahead: int = 1):
    self.produce, self.window_iter, self.mesh = produce, window_iter, mesh
    self.num_steps = int(num_steps)
    if ahead not in (0, 1):
      raise ValueError(f"ahead={ahead!r}: expected 0 or 1")
    self.ahead = int(ahead)
    self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sip-producer")
    self._ahead: tuple[int, Future] | None = None          # (step, batch being made)
    self._restored: tuple[int, tuple[dict, dict]] | None = None
    self.params_step: dict[int, int] = {}                  # batch step -> step of the params it used

  def _make(self, params, step: int, params_step: int):
    with jax.set_mesh(self.mesh) if self.mesh is not None else _nothing():
      out = self.produce(SimpleNamespace(params=params), step)
    self.params_step[step] = params_step
    return out

  def __call__(self, state, step: int):
    if self._restored is not None and self._restored[0] == step:
      out = self._restored[1]
    elif self._ahead is not None and self._ahead[0] == step:
      out = self._ahead[1].result()
    elif not self.ahead:   # staleness 0: the current params, on this thread
      out = self.produce(state, step)
      self.params_step[step] = step
    else:   # the first batch of a run (or of a resume without a batch made ahead): current params
      self._discard()
      out = self._make(state.params, step, step)
    self._restored = self._ahead = None
    if self.ahead and step + 1 < self.num_steps:
      snapshot = jax.tree.map(lambda x: x.copy(), state.params)   # before the update donates them
      self._ahead = (step + 1, self._pool.submit(self._make, snapshot, step + 1, step))
    return out

  def _discard(self) -> None:
    if self._ahead is not None:
      self._ahead[1].result()
      self._ahead = None

  # ----------------------------------------------------------------- the data iterator's part
  def get_state(self) -> bytes:
    """The window iterator's position after the batch made ahead, and that batch (waited for)."""
    pending = None
    if self._ahead is not None:
      step, fut = self._ahead
      pending = {"step": step, **encode_batch(*fut.result())}
    elif self._restored is not None:
      pending = {"step": self._restored[0], **encode_batch(*self._restored[1])}
    if pending is None:   # the window iterator's own state, as a checkpoint without this object
      return json.dumps(self.window_iter.get_state(), indent=4).encode()
    return json.dumps({"windows": self.window_iter.get_state(), "ahead": pending}).encode()

  def set_state(self, state: bytes) -> None:
    self._discard()
    data = json.loads(state.decode() if isinstance(state, (bytes, bytearray)) else state)
    if "ahead" not in data:   # no batch made ahead: the window iterator's own state
      self.window_iter.set_state(data)
      self._restored = None
      return
    self.window_iter.set_state(data["windows"])
    ahead = data.get("ahead")
    self._restored = None if ahead is None else (int(ahead["step"]), decode_batch(ahead))

  def start_prefetch(self) -> None:   # called by grain's checkpoint handler after a restore
    start = getattr(self.window_iter, "start_prefetch", None)
    if start is not None:
      start()

  def __next__(self):
    raise TypeError("Prefetcher is driven by next_batch(state, step), not next()")


class _nothing:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False
