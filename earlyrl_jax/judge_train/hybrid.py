"""Hybrid labels: a budget of human labels, the rest from an AI judge (issue 39 item 2).

`judge_train.human_budget` = N > 0 keeps the human labels (the training file's, label noise
included: the annotator's) of N training items drawn by the seed (pairs and pointwise safety
items alike); `judge_train.ai_labels` says what becomes of the others:

  'none'   they are left out (training on the N human labels only: the budget's baseline)
  'self'   the model being trained labels them, before training, as its log-prob judge
  DIR      another judge directory (any HF judge `teacher.path` loads) labels them

An AI label is the judge's verdict read as `agreement.py` reads it: P(a better) per axis (> 0.5
'a', < 0.5 'b', exactly 0.5 'tie'), on the axes being trained; P(unsafe) > 0.5 'unsafe' for a
pointwise item. The job's output records how many labels came from each source and how often the
AI's agree with the human labels they replaced (a measurement the real setting cannot make: here
the replaced labels are known).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from earlyrl_jax.judge_train import agreement as A
from earlyrl_jax.judge_train.data import Pair, Point, label_counts


def split_budget(items, budget: int, seed: int) -> tuple[list, list]:
  """(the `budget` items that keep their human labels, the rest), drawn by `seed`; both keep the
  file's order. budget 0 or >= len(items): all human."""
  if budget <= 0 or budget >= len(items):
    return list(items), []
  keep = set(np.random.default_rng(seed).permutation(len(items))[:budget].tolist())
  return ([it for i, it in enumerate(items) if i in keep],
          [it for i, it in enumerate(items) if i not in keep])


def _label(p: float, first: str, second: str) -> str:
  return first if p > 0.5 else second if p < 0.5 else "tie"


def ai_label(judge, items, axes) -> list:
  """`items` relabelled by `judge`'s verdicts on `axes` (pairs) and P(unsafe) (points)."""
  pairs = [i for i, it in enumerate(items) if isinstance(it, Pair)]
  points = [i for i, it in enumerate(items) if isinstance(it, Point)]
  out = list(items)
  labels = {i: {} for i in pairs}
  for axis in axes:
    if pairs:
      for i, p in zip(pairs, A.pair_verdicts(judge, [items[i] for i in pairs], axis)):
        labels[i][axis] = _label(p, "a", "b")
  for i in pairs:
    out[i] = dataclasses.replace(items[i], labels=labels[i])
  if points and "safety" in axes:
    for i, p in zip(points, A.point_verdicts(judge, [items[i] for i in points])):
      out[i] = dataclasses.replace(items[i], safety=_label(p, "unsafe", "safe"))
  return out


def agreement_with_human(human, ai) -> dict[str, dict]:
  """{axis: {'agreement', 'n'}}: the share of the replaced human (non-tie) labels the AI label
  matches (an AI tie counts half)."""
  hits: dict[str, list] = {}
  for h, a in zip(human, ai):
    if isinstance(h, Point):
      hits.setdefault("safety_point", []).append(float(h.safety == a.safety))
      continue
    for axis, v in h.labels.items():
      if v == "tie" or axis not in a.labels:
        continue
      w = a.labels[axis]
      hits.setdefault(axis, []).append(0.5 if w == "tie" else float(w == v))
  return {k: {"agreement": float(np.mean(v)), "n": len(v)} for k, v in hits.items()}


def hybrid_items(items, *, budget: int, ai_labels: str, judge, axes, seed: int) -> tuple[list, dict]:
  """(training items: the budget's human-labelled ones then the AI-labelled rest, or the human
  ones alone for ai_labels='none'; counts for the job's output)."""
  human, rest = split_budget(items, budget, seed)
  info = {"human_budget": budget, "ai_labels": ai_labels, "human_items": len(human),
          "human_labels": label_counts(human)}
  if not rest:
    return human, {**info, "ai_items": 0, "unlabelled_left_out": 0}
  if ai_labels == "none":
    return human, {**info, "ai_items": 0, "unlabelled_left_out": len(rest)}
  labelled = ai_label(judge, rest, axes)
  info.update(ai_items=len(labelled), unlabelled_left_out=0, ai_label_counts=label_counts(labelled),
              ai_agreement_with_human=agreement_with_human(rest, labelled))
  return human + labelled, info
