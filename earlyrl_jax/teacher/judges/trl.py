"""Any Judge in TRL's reward-function shape (TRL dropped its judge classes for this convention)."""
from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence

import numpy as np

from earlyrl_jax.teacher.judges.base import AXES, Judge, check_axis, check_rows


class RewardFunction:
  """A Judge in TRL's reward-function shape: `f(prompts, completions, **kw) -> np.ndarray[float]`.

  Pairwise axes compare each completion with `kw[reference_key]` (e.g. the original
  suffix) when given -- reward P(completion better), both orders averaged -- else
  with the other completions of the same prompt (mean win rate). Safety is
  1 - P(unsafe). Per-axis rewards are combined by `axes` weights.
  """

  def __init__(self, judge: Judge, *, axes: Mapping[str, float] | None = None,
               reference_key: str = "reference", both_orders: bool = True):
    self.judge = judge
    self.axes = dict(axes if axes is not None else {a: 1.0 for a in AXES})
    for ax in self.axes:
      check_axis(ax)
    self.reference_key = reference_key
    self.both_orders = both_orders
    self.__name__ = f"judge_{'_'.join(self.axes)}"  # TRL logs reward functions by __name__

  def _pair(self, prefixes, x, y, axis, refs) -> np.ndarray:
    p = self.judge.compare(prefixes, x, y, axis=axis, references=refs)
    if self.both_orders:
      p = 0.5 * (p + 1.0 - self.judge.compare(prefixes, y, x, axis=axis, references=refs))
    return p

  def __call__(self, prompts: Sequence[str], completions: Sequence[str], **kw) -> np.ndarray:
    n = len(prompts)
    check_rows(n, completions=completions)
    prompts = [_as_text(p) for p in prompts]
    completions = [_as_text(c) for c in completions]
    refs = kw.get(self.reference_key)
    total = np.zeros((n,), np.float64)
    weight = sum(self.axes.values()) or 1.0
    for axis, w in self.axes.items():
      if w == 0:
        continue
      if axis == "safety":
        r = 1.0 - self.judge.pointwise(prompts, completions, axis="safety")
      elif refs is not None:
        refs = [_as_text(r) for r in refs]
        r = self._pair(prompts, completions, refs, axis, refs)
      else:
        r = self._within_groups(prompts, completions, axis)
      total += w * np.asarray(r, np.float64)
    return (total / weight).astype(np.float32)

  def _within_groups(self, prompts, completions, axis) -> np.ndarray:
    groups = collections.defaultdict(list)
    for i, p in enumerate(prompts):
      groups[p].append(i)
    pairs = [(i, j) for idx in groups.values() for i in idx for j in idx if i < j]
    out = np.full((len(prompts),), 0.5, np.float64)
    if not pairs:
      return out
    I, J = zip(*pairs)
    p = self._pair([prompts[i] for i in I], [completions[i] for i in I], [completions[j] for j in J],
                   axis, None)
    wins = collections.defaultdict(list)
    for (i, j), pij in zip(pairs, p):
      wins[i].append(pij)
      wins[j].append(1.0 - pij)
    for i, w in wins.items():
      out[i] = float(np.mean(w))
    return out


def _as_text(x) -> str:
  """TRL passes strings or chat message lists; a message list becomes its last content."""
  if isinstance(x, str):
    return x
  if isinstance(x, (list, tuple)) and x and isinstance(x[-1], dict):
    return str(x[-1].get("content", ""))
  return "" if x is None else str(x)
