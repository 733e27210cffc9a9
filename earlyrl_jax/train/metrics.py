"""Metric writing: WORKDIR/metrics.jsonl, TensorBoard events, optional Weights & Biases.

No TensorFlow anywhere: TensorBoard event files are written by tensorboardX (a
core dependency), so the core install always gives `tensorboard/events.out.tfevents.*`.
clu's writers and periodic actions import TensorFlow and are not used; clu's
`parameter_overview` works without it and formats the parameter table.
Progress (steps/s, tokens/s, ETA) is `Progress` below. W&B (`metrics.wandb_project`,
'' = off) sits behind the same `write` / `write_text`; `wandb` is imported only
when asked for. Only the main process writes anything.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
from typing import Any, Protocol

import numpy as np


def _scalar(v) -> float:
  return float(np.asarray(v))


class Writer(Protocol):
  """What MetricsLogger fans out to (TensorBoard, W&B, or a test double)."""

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None: ...
  def write_texts(self, step: int, texts: dict[str, str]) -> None: ...
  def flush(self) -> None: ...
  def close(self) -> None: ...


class TensorBoardWriter:
  """Event files through tensorboardX (`tensorboard --logdir WORKDIR` reads them)."""

  def __init__(self, logdir: str):
    from tensorboardX import SummaryWriter  # core dependency; lazy to keep imports light
    self._w = SummaryWriter(logdir=logdir, flush_secs=30)

  def write_scalars(self, step, scalars):
    for k, v in scalars.items():
      self._w.add_scalar(k, v, global_step=step)

  def write_texts(self, step, texts):
    for k, v in texts.items():
      self._w.add_text(k, v, global_step=step)

  def flush(self):
    self._w.flush()

  def close(self):
    self._w.close()


class WandbWriter:
  """Weights & Biases run (`pip install -e '.[wandb]'`); offline mode works without a network."""

  def __init__(self, project: str, *, workdir: str, config: dict | None = None,
               name: str | None = None):
    try:
      import wandb
    except ImportError as e:
      raise ImportError(f"metrics.wandb_project={project!r} needs the wandb package: "
                        "pip install -e '.[wandb]' (or set metrics.wandb_project='' to turn "
                        "W&B off)") from e
    self._wandb = wandb
    # resume='allow' with a stable id: a resumed run appends to the same W&B run.
    run_id = _stable_run_id(workdir)
    self._run = wandb.init(project=project, name=name or os.path.basename(os.path.normpath(workdir)),
                           id=run_id, resume="allow", dir=workdir, config=config or {})

  def write_scalars(self, step, scalars):
    self._run.log(dict(scalars), step=step)

  def write_texts(self, step, texts):
    self._run.log({k: self._wandb.Html(f"<pre>{_escape(v)}</pre>") for k, v in texts.items()},
                  step=step)

  def flush(self):
    pass

  def close(self):
    self._run.finish()


def _escape(s: str) -> str:
  return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _stable_run_id(workdir: str) -> str:
  import hashlib
  return hashlib.sha1(os.path.abspath(workdir).encode()).hexdigest()[:16]


class MetricsLogger:
  """Writes scalars to metrics.jsonl (one JSON object per write), TensorBoard and W&B."""

  def __init__(self, workdir: str, *, is_main: bool = True, num_steps: int | None = None,
               every_steps: int | None = None, tensorboard: bool = True,
               wandb_project: str = "", wandb_config: dict | None = None,
               writers: list[Writer] | None = None):
    self.workdir = workdir
    self.is_main = is_main
    self.num_steps, self.every_steps = num_steps, every_steps
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._file = None
    self._writers: list[Writer] = []
    self._t0 = time.monotonic()
    self.last_tick: int | None = None
    if not is_main:
      return
    self._file = open(self.path, "a", encoding="utf-8")
    if tensorboard:
      self._writers.append(TensorBoardWriter(os.path.join(workdir, "tensorboard")))
    if wandb_project:
      self._writers.append(WandbWriter(wandb_project, workdir=workdir, config=wandb_config))
    self._writers += list(writers or [])

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    if not self.is_main:
      return
    values = {k: _scalar(v) for k, v in scalars.items()}
    if self._file is not None:
      record = {"step": int(step), **{k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}}
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()
    for w in self._writers:
      w.write_scalars(int(step), values)

  def tick(self, step: int) -> None:
    """Per-step hook (cheap, never blocks): remembers the last step dispatched."""
    self.last_tick = int(step)

  def write_text(self, step: int, texts: dict[str, str]) -> None:
    if not self.is_main:
      return
    for w in self._writers:
      w.write_texts(int(step), texts)

  def uptime(self) -> float:
    return time.monotonic() - self._t0

  def flush(self) -> None:
    for w in self._writers:
      w.flush()

  def close(self) -> None:
    for w in self._writers:
      w.close()
    self._writers = []
    if self._file is not None:
      self._file.close()
      self._file = None


def parameter_overview(params) -> str:
  """A table of parameter names, shapes, dtypes and sizes (clu, TF-free)."""
  from clu import parameter_overview as po
  from flax import nnx
  tree = nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params
  return po.get_parameter_overview(tree, include_stats=False)


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
  """Console progress: step, loss, tokens/s, steps/s, ETA (rates since the last report)."""

  def __init__(self, num_steps: int, start_step: int, stream=None, clock=time.monotonic):
    self.num_steps, self.stream, self._clock = num_steps, stream or sys.stdout, clock
    self._t0, self._s0 = clock(), start_step
    self._t_last, self._s_last, self._tok = self._t0, start_step, 0.0

  def add_tokens(self, n: float) -> None:
    self._tok += n

  def report(self, step: int, scalars: dict[str, Any]) -> dict[str, float]:
    now = self._clock()
    dt = max(now - self._t_last, 1e-9)
    steps_per_s = (step - self._s_last) / dt
    tokens_per_s = self._tok / dt
    # ETA from the rate since the start of this process (steadier than the last interval).
    overall = (step - self._s0) / max(now - self._t0, 1e-9)
    remaining = (self.num_steps - step) / overall if overall > 0 else float("nan")
    eta = str(datetime.timedelta(seconds=int(remaining))) if math.isfinite(remaining) else "?"
    parts = [f"step {step}/{self.num_steps}"]
    # Loss first, then whatever else the job shows (SIP win shares, data skip counts).
    for k in sorted(scalars, key=lambda k: (k not in ("loss", "eval/loss"), k)):
      v = _scalar(scalars[k])
      parts.append(f"{k} {int(v)}" if k.startswith("data/") else f"{k} {v:.4f}")  # counts
    parts += [f"{tokens_per_s:,.0f} tok/s", f"{steps_per_s:.2f} steps/s", f"ETA {eta}"]
    print(" | ".join(parts), file=self.stream, flush=True)
    self._t_last, self._s_last, self._tok = now, step, 0.0
    return {"perf/tokens_per_s": tokens_per_s, "perf/steps_per_s": steps_per_s,
            "perf/eta_s": remaining if math.isfinite(remaining) else -1.0}
