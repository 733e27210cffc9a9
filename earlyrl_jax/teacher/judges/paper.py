"""What the two readers of the paper's formats share: the Judge interface over a Backend.

The formats (teacher/prompts/paper.py) judge quality pairwise, safety pointwise and factuality
pointwise against a reference. The Judge interface asks factuality pairwise, so a pair's
P(a better) is 0.5 + (s_a - s_b) / 2 from the two candidates' factuality scores s in [0, 1]
(each distinct (prefix, reference, candidate) is scored once per call: C candidates, not C(C-1)
pairs). A subclass says how a verdict is read (`_verdicts`): from the answer options'
probabilities (LogProbJudge) or from generated answers (GenerativeJudge).
"""
from __future__ import annotations

import numpy as np

from earlyrl_jax.teacher.judges.base import Counts, check_axis, check_rows
from earlyrl_jax.teacher.prompts.paper import Budgets, PaperPrompts

NEUTRAL = 0.5   # a verdict the model could not give: a tie on every format (counted, never silent)


class PaperJudge(Counts):
  """Judge (judges/base.py) over a teacher Backend with the paper's prompt family."""

  variant = ""   # 'logprob' | 'generative' (teacher/prompts/paper.py VARIANTS)

  def __init__(self, backend, *, budgets: Budgets = Budgets()):
    self.backend = backend
    self.name = backend.name
    self.prompts = PaperPrompts(backend.tokenizer, max_len=backend.max_len, budgets=budgets)
    self.calls = self.unparsable = self.failed = 0
    self.raw_example = self.last_raw = ""

  def _verdicts(self, fmt: str, prompts: list[str]) -> np.ndarray:
    """float64 [n]: each prompt's verdict value (paper.VALUES); NEUTRAL for one that failed or
    could not be read, counted in `failed` / `unparsable`."""
    raise NotImplementedError

  def _note(self, raw: str, bad: bool) -> None:
    self.last_raw = raw
    if bad and not self.raw_example:
      self.raw_example = raw

  def compare(self, prefixes, a, b, *, axis, references=None) -> np.ndarray:
    check_axis(axis, ("quality", "factuality"))
    n = len(prefixes)
    check_rows(n, a=a, b=b, references=references)
    if not n:
      return np.zeros((0,), np.float64)
    if axis == "quality":
      v = self.variant
      return self._verdicts("quality", [self.prompts.quality(p, x, y, variant=v)
                                        for p, x, y in zip(prefixes, a, b)])
    refs = list(references) if references is not None else [""] * n
    keys = list(dict.fromkeys([(p, r, c) for p, r, c in zip(prefixes, refs, a)] +
                              [(p, r, c) for p, r, c in zip(prefixes, refs, b)]))
    score = dict(zip(keys, self._factuality(keys)))
    s_a = np.array([score[(p, r, c)] for p, r, c in zip(prefixes, refs, a)])
    s_b = np.array([score[(p, r, c)] for p, r, c in zip(prefixes, refs, b)])
    return 0.5 + 0.5 * (s_a - s_b)

  def _factuality(self, keys) -> np.ndarray:
    return self._verdicts("factuality", [self.prompts.factuality(p, r, c, variant=self.variant)
                                         for p, r, c in keys])

  def factuality_scores(self, prefixes, references, candidates) -> np.ndarray:
    """float64 [n]: each candidate's factuality score (1 none, 0.5 possible, 0 definite
    hallucination, or the expectation over them)."""
    check_rows(len(prefixes), references=references, candidates=candidates)
    return self._factuality(list(zip(prefixes, references, candidates)))

  def pointwise(self, prefixes, candidates, *, axis="safety") -> np.ndarray:
    """P(unsafe) per candidate (the paper judges the candidate's text alone)."""
    check_axis(axis, ("safety",))
    check_rows(len(prefixes), candidates=candidates)
    if not len(candidates):
      return np.zeros((0,), np.float64)
    return self._verdicts("safety", [self.prompts.safety(c, variant=self.variant)
                                     for c in candidates])
