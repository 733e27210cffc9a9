"""Ground truth behind the Judge interface, and one judge per axis.

The oracles are passed in (the synthetic world's `world.Oracles`, or anything with the same
`quality` / `factuality` / `safety` methods): the teacher layer never imports the world.
A run builds them with `OracleJudge(world.Oracles.from_dir(world_dir))`.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from earlyrl_jax.teacher.judges.base import AXES, Counts, Judge, check_axis, check_rows


class OracleJudge(Counts):
  """Ground truth from the world's oracles behind the Judge interface (ties -> 0.5).

  Quality is scored in the context of the prefix (topic drift is relative to it);
  safety pointwise is 1.0 for an unsafe candidate, 0.0 for a safe one.
  """

  def __init__(self, oracles, *, eps: float = 1e-6):
    self.oracles = oracles
    self.eps = eps
    self.calls = 0

  def axis_score(self, prefix: str, text: str, axis: str) -> float:
    if axis == "quality":
      return float(self.oracles.quality(text, prefix=prefix)["score"])
    if axis == "factuality":
      return float(self.oracles.factuality(text)["score"])
    if axis == "safety":
      return float(self.oracles.safety(text)["score"])
    raise ValueError(f"axis={axis!r}: expected one of {AXES}")

  def compare(self, prefixes, a, b, *, axis, references=None) -> np.ndarray:
    check_axis(axis)
    n = len(prefixes)
    check_rows(n, a=a, b=b, references=references)
    out = np.empty((n,), np.float32)
    for i in range(n):
      sa, sb = self.axis_score(prefixes[i], a[i], axis), self.axis_score(prefixes[i], b[i], axis)
      out[i] = 0.5 if abs(sa - sb) <= self.eps else float(sa > sb)
    self.calls += n
    return out

  def pointwise(self, prefixes, candidates, *, axis="safety") -> np.ndarray:
    check_axis(axis, ("safety",))
    check_rows(len(prefixes), candidates=candidates)
    self.calls += len(candidates)
    return np.asarray([float(self.oracles.safety(c)["unsafe"]) for c in candidates], np.float32)


class AxisJudges:
  """One judge per axis behind the Judge interface: the axes in `per_axis` go to their judge,
  the rest to `default`. Why: swapping the judge of one axis for the oracles (everything else
  unchanged) measures how much that axis's judging limits SIP (`sip.oracle_axes`), and it is
  the shape of a hybrid judge (say, human labels on safety, the teacher on the rest)."""

  def __init__(self, default: Judge, per_axis: Mapping[str, Judge]):
    for axis in per_axis:
      check_axis(axis)
    self.default, self.per_axis = default, dict(per_axis)

  def _judges(self) -> list[Judge]:
    return list({id(j): j for j in [self.default, *self.per_axis.values()]}.values())

  @property
  def calls(self) -> int:
    return sum(j.calls for j in self._judges())

  @property
  def unparsable(self) -> int:
    return sum(getattr(j, "unparsable", 0) for j in self._judges())

  @property
  def failed(self) -> int:
    return sum(getattr(j, "failed", 0) for j in self._judges())

  @property
  def name(self) -> str:
    return getattr(self.default, "name", type(self.default).__name__)

  @property
  def raw_example(self) -> str:
    return next((j.raw_example for j in self._judges() if getattr(j, "raw_example", "")), "")

  @property
  def last_raw(self) -> str:
    return getattr(self.default, "last_raw", "")

  def _judge(self, axis: str) -> Judge:
    return self.per_axis.get(axis, self.default)

  def compare(self, prefixes, a, b, *, axis, references=None) -> np.ndarray:
    return self._judge(axis).compare(prefixes, a, b, axis=axis, references=references)

  def compare_axes(self, prefixes, a, b, *, axes, references=None) -> dict[str, np.ndarray]:
    """Each judge's axes in one call where it batches axes (`compare_axes`), else one per axis."""
    out: dict[str, np.ndarray] = {}
    for judge in {id(self._judge(x)): self._judge(x) for x in axes}.values():
      mine = [x for x in axes if self._judge(x) is judge]
      if hasattr(judge, "compare_axes"):
        out.update(judge.compare_axes(prefixes, a, b, axes=mine, references=references))
      else:
        out.update({x: judge.compare(prefixes, a, b, axis=x, references=references) for x in mine})
    return {x: out[x] for x in axes}

  def pointwise(self, prefixes, candidates, *, axis="safety") -> np.ndarray:
    return self._judge(axis).pointwise(prefixes, candidates, axis=axis)
