"""Metric writing: WORKDIR/metrics.jsonl always, TensorBoard through clu when available.

clu's `metric_writers` and `periodic_actions` import TensorFlow at import time.
earlyrl_jax depends on tensorflow-cpu so they work; if TensorFlow is missing or
broken anyway, training continues with JSONL + console output and a warning,
instead of failing at the first log line. Keep all writer choices here so
TensorBoard / W&B can be swapped without touching the loop.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
import warnings
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's import-time chatter


def _load_clu():
  try:
    from clu import metric_writers, periodic_actions
    return metric_writers, periodic_actions
  except Exception as e:  # ImportError, or a broken TensorFlow install
    warnings.warn(f"clu metric writers unavailable ({type(e).__name__}: {e}); "
                  "writing metrics.jsonl and console output only")
    return None, None


def _scalar(v) -> float:
  return float(np.asarray(v))


class MetricsLogger:
  """Writes scalars to metrics.jsonl (one JSON object per step) and TensorBoard."""

  def __init__(self, workdir: str, *, is_main: bool = True, num_steps: int | None = None,
               every_steps: int | None = None, tensorboard: bool = True):
    self.workdir = workdir
    self.is_main = is_main
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._file = open(self.path, "a", encoding="utf-8") if is_main else None
    self._writer = None
    self._progress = None
    if tensorboard:
      metric_writers, periodic_actions = _load_clu()
      if metric_writers is not None:
        self._writer = metric_writers.create_default_writer(
            os.path.join(workdir, "tensorboard"), just_logging=not is_main, asynchronous=True)
        self._progress = periodic_actions.ReportProgress(num_train_steps=num_steps,
                                                         writer=self._writer, every_secs=None,
                                                         every_steps=every_steps)

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    values = {k: _scalar(v) for k, v in scalars.items()}
    if self._file is not None:
      record = {"step": int(step), **{k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}}
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()
    if self._writer is not None:
      self._writer.write_scalars(int(step), values)

  def tick(self, step: int) -> None:
    """Per-step hook: clu's ReportProgress (steps/s and uptime into the writers)."""
    if self._progress is not None:
      self._progress(int(step))

  def write_text(self, step: int, texts: dict[str, str]) -> None:
    if self._writer is not None:
      self._writer.write_texts(int(step), texts)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
    if self._file is not None:
      self._file.close()
      self._file = None


def roll_back_jsonl(path: str, last_step: int) -> int:
  """Moves records with step > last_step (work undone by a resume) to *.rolled_back.jsonl.

  Keeps metrics.jsonl consistent with the checkpoint a run resumed from, without
  deleting anything that was written. Returns the number of records moved.
  """
  if not os.path.exists(path):
    return 0
  keep, moved = [], []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        step = json.loads(line).get("step", -1)
      except json.JSONDecodeError:
        step = math.inf  # a torn last line from a killed run
      (moved if step > last_step else keep).append(line if line.endswith("\n") else line + "\n")
  if moved:
    with open(path.replace(".jsonl", ".rolled_back.jsonl"), "a", encoding="utf-8") as f:
      f.writelines(moved)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(keep)
    os.replace(tmp, path)
  return len(moved)


class Progress:
  """Console progress: step, loss, tokens/s, steps/s, ETA."""

  def __init__(self, num_steps: int, start_step: int, stream=None):
    self.num_steps, self.stream = num_steps, stream or sys.stdout
    self._t0, self._s0 = time.monotonic(), start_step
    self._t_last, self._s_last, self._tok = self._t0, start_step, 0.0

  def add_tokens(self, n: float) -> None:
    self._tok += n

  def report(self, step: int, scalars: dict[str, Any]) -> dict[str, float]:
    now = time.monotonic()
    dt = max(now - self._t_last, 1e-9)
    steps_per_s = (step - self._s_last) / dt
    tokens_per_s = self._tok / dt
    remaining = (self.num_steps - step) / steps_per_s if steps_per_s > 0 else float("nan")
    eta = str(datetime.timedelta(seconds=int(remaining))) if math.isfinite(remaining) else "?"
    parts = [f"step {step}/{self.num_steps}"]
    for k in ("loss", "eval/loss"):
      if k in scalars:
        parts.append(f"{k} {_scalar(scalars[k]):.4f}")
    parts += [f"{tokens_per_s:,.0f} tok/s", f"{steps_per_s:.2f} steps/s", f"ETA {eta}"]
    print(" | ".join(parts), file=self.stream, flush=True)
    self._t_last, self._s_last, self._tok = now, step, 0.0
    return {"perf/tokens_per_s": tokens_per_s, "perf/steps_per_s": steps_per_s}
