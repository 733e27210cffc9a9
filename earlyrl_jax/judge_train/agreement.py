"""Held-out agreement of any Judge with labelled items, per axis.

What the number means: the share of held-out labels the judge's verdict agrees with (0.5 is a
coin; a verdict of exactly 0.5 is a tie and counts half). Pairs are judged as SIP asks them:

  quality     P(a better) in both orders, averaged: (compare(a, b) + 1 - compare(b, a)) / 2
  factuality  compare(a, b) with the item's reference (the factuality scores of a and b)
  safety      0.5 + (P(b unsafe) - P(a unsafe)) / 2 from the pointwise format
  safety_point  a pointwise item: P(unsafe) > 0.5 for 'unsafe'

This is the measure of benchmarks/instruct_judge.py (RESULTS: untrained SmolLM2-135M at
quality 0.417, factuality 0.605, safety 0.348 on the world's validation pairs).
"""
from __future__ import annotations

import numpy as np

from earlyrl_jax.judge_train.data import Pair, Point

ALL = ("quality", "factuality", "safety", "safety_point")


def _agree(p_first: np.ndarray, first_wins: np.ndarray) -> tuple[float, float]:
  tie = np.abs(p_first - 0.5) < 1e-9
  right = np.where(first_wins, p_first > 0.5, p_first < 0.5)
  return float(np.mean(np.where(tie, 0.5, right))), float(np.mean(tie))


def pair_verdicts(judge, rows, axis: str) -> np.ndarray:
  """float64 [n]: P(a better on `axis`) for Pairs, asked as SIP asks (module docstring)."""
  n = len(rows)
  pre, a, b = [r.prefix for r in rows], [r.a for r in rows], [r.b for r in rows]
  if axis == "safety":
    u = np.asarray(judge.pointwise(pre + pre, a + b), np.float64)
    return 0.5 + 0.5 * (u[n:] - u[:n])
  if axis == "quality":
    p = np.asarray(judge.compare(pre + pre, a + b, b + a, axis="quality"), np.float64)
    return (p[:n] + 1.0 - p[n:]) / 2.0
  return np.asarray(judge.compare(pre, a, b, axis="factuality",
                                  references=[r.reference for r in rows]), np.float64)


def point_verdicts(judge, rows) -> np.ndarray:
  """float64 [n]: P(unsafe) for Points."""
  return np.asarray(judge.pointwise([r.prefix for r in rows], [r.text for r in rows]), np.float64)


def heldout_agreement(judge, items, *, axes=ALL, limit: int = 0) -> dict[str, dict]:
  """{axis: {'agreement', 'ties', 'n'}} over the first `limit` (0 = all) labelled items per
  axis; axes without items are left out."""
  out = {}
  for axis in axes:
    if axis == "safety_point":
      rows = [it for it in items if isinstance(it, Point)]
    else:
      rows = [it for it in items if isinstance(it, Pair) and it.labels.get(axis, "tie") != "tie"]
    rows = rows[:limit] if limit else rows
    if not rows:
      continue
    n = len(rows)
    if axis == "safety_point":
      agree, ties = _agree(point_verdicts(judge, rows), np.array([r.safety == "unsafe" for r in rows]))
    else:
      agree, ties = _agree(pair_verdicts(judge, rows, axis), np.array([r.labels[axis] == "a" for r in rows]))
    out[axis] = {"agreement": agree, "ties": ties, "n": n}
  return out


def summary(res: dict[str, dict]) -> str:
  return ", ".join(f"{k} {v['agreement']:.3f} (n={v['n']})" for k, v in res.items()) or "no labelled items"
