"""GenerativeJudge: the model reasons, then ends with 'Answer: ...'; n samples averaged.

The paper's generative judge: each verdict is sampled `num_samples` times (the paper: 5 at
temperature 1.0, top_p 0.6) and the answers' values are averaged, so a verdict is an estimate
of the probability the log-prob judge reads exactly (judges/logprob.py, at a tenth of the cost
or less: benchmarks/instruct_judge.py). Generation runs through `Backend.generate`, so it works
in-process and served alike.

A sample without a readable final answer is left out of the average; a verdict with none is a
tie counted in `unparsable`, one whose samples all failed (None from the backend after its
retries) a tie counted in `failed`. An exception of the backend (TeacherFailure) is not
caught: it stops the run with its message instead of turning into ties.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from earlyrl_jax.teacher.judges.paper import NEUTRAL, PaperJudge
from earlyrl_jax.teacher.prompts.paper import Budgets, parse_answer


@dataclasses.dataclass(frozen=True)
class Sampling:
  """`teacher.generative.*`: how a generative verdict is sampled (the paper: 5, 1.0, 0.6)."""
  num_samples: int = 5
  temperature: float = 1.0
  top_p: float = 0.6
  max_new_tokens: int = 256
  seed: int = 0

  def __post_init__(self):
    if not (isinstance(self.num_samples, int) and self.num_samples >= 1):
      raise ValueError(f"teacher.generative.num_samples={self.num_samples!r}: expected >= 1")
    if not self.temperature >= 0:
      raise ValueError(f"teacher.generative.temperature={self.temperature!r}: expected >= 0")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"teacher.generative.top_p={self.top_p!r}: expected in (0, 1]")
    if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
      raise ValueError(f"teacher.generative.max_new_tokens={self.max_new_tokens!r}: expected >= 1")


class GenerativeJudge(PaperJudge):
  """The paper's formats, verdicts from `sampling.num_samples` generated answers each."""

  variant = "generative"

  def __init__(self, backend, *, sampling: Sampling = Sampling(), budgets: Budgets | None = None):
    if budgets is None:   # the reasoning needs room in the teacher's context
      budgets = Budgets(answer_tokens=sampling.max_new_tokens)
    elif budgets.answer_tokens < sampling.max_new_tokens:
      budgets = dataclasses.replace(budgets, answer_tokens=sampling.max_new_tokens)
    super().__init__(backend, budgets=budgets)
    self.sampling = sampling
    self.generate_calls = 0   # seeds each call's samples (a run's calls come in a fixed order)

  def _verdicts(self, fmt: str, prompts: list[str]) -> np.ndarray:
    s = self.sampling
    self.generate_calls += 1
    outs = self.backend.generate(prompts, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                                 top_p=s.top_p, n=s.num_samples, seed=s.seed + self.generate_calls)
    if len(outs) != len(prompts):
      raise ValueError(f"{self.name}: generate returned {len(outs)} rows for {len(prompts)} prompts")
    out = np.full((len(prompts),), NEUTRAL, np.float64)
    for i, samples in enumerate(outs):
      texts = [t for t in samples if t is not None]
      values = [v for v in (parse_answer(t, fmt) for t in texts) if v is not None]
      if values:
        out[i] = float(np.mean(values))
      elif texts:
        self.unparsable += 1
      else:
        self.failed += 1
      raw = texts[-1] if texts else "(no output: every sample failed)"
      self._note(raw, bad=not values)
    self.calls += len(prompts)
    return out
