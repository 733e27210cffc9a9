"""Judging that fails is counted, logged and stops the run: never silent ties.

Per SIP step (`JudgeHealth.step`): the share of the step's verdicts the teacher failed to give
(`sip/judge_failed_frac`: backend rows that failed after retries) or that could not be read
(`sip/judge_unparsable_frac`: a generated reply without a final answer), each scored as a tie,
and the run of consecutive steps where every group tied (`sip/all_tied_streak`). The run stops
with one `TeacherFailure` (main.py: one `error:` line, exit 2) that names the teacher and quotes
one raw output:

  - when failed + unparsable verdicts pass `teacher.max_failure_share` of a step's verdicts;
  - when every group tied for `sip.max_all_tied_steps` consecutive steps while nothing else is
    trained (sip.lm_coef = 0): every step would then train on nothing (DPO masks tied pairs, PG's
    advantages are 0, RF-NLL skips), and the curves would read as a run that learns.
"""
from __future__ import annotations

import numpy as np

from earlyrl_jax.teacher.backends.base import TeacherFailure
from earlyrl_jax.teacher.judges.base import judge_counts

DEFAULT_MAX_FAILURE_SHARE = 0.05
DEFAULT_MAX_ALL_TIED_STEPS = 3


def judge_name(judge) -> str:
  return getattr(judge, "name", None) or type(judge).__name__


class JudgeHealth:
  """Counts of one judge between steps, and the stops of the module docstring."""

  def __init__(self, judge, *, max_failure_share: float = DEFAULT_MAX_FAILURE_SHARE,
               max_all_tied_steps: int = DEFAULT_MAX_ALL_TIED_STEPS, others_train: bool = True):
    self.judge = judge
    self.max_failure_share = float(max_failure_share)
    self.max_all_tied_steps = int(max_all_tied_steps)
    self.others_train = bool(others_train)
    self.before = judge_counts(judge)
    self.streak = 0

  @classmethod
  def from_config(cls, judge, cfg) -> "JudgeHealth":
    t, s = cfg.get("teacher"), cfg.sip
    share = t.get("max_failure_share", DEFAULT_MAX_FAILURE_SHARE) if t is not None else DEFAULT_MAX_FAILURE_SHARE
    return cls(judge, max_failure_share=share,
               max_all_tied_steps=s.get("max_all_tied_steps", DEFAULT_MAX_ALL_TIED_STEPS),
               others_train=float(s.lm_coef) > 0)

  def step(self, all_tied_G: np.ndarray, step: int) -> dict[str, float]:
    """The step's stats; raises TeacherFailure past a threshold (module docstring)."""
    now = judge_counts(self.judge)
    calls, failed, unparsable = (a - b for a, b in zip(now, self.before))
    self.before = now
    tied = np.asarray(all_tied_G, bool)
    self.streak = self.streak + 1 if tied.size and tied.all() else 0
    out = {"sip/judge_verdicts": float(calls),
           "sip/judge_failed_frac": failed / calls if calls else 0.0,
           "sip/judge_unparsable_frac": unparsable / calls if calls else 0.0,
           "sip/all_tied_streak": float(self.streak)}
    name = judge_name(self.judge)
    if calls and (failed + unparsable) / calls > self.max_failure_share:
      raw = getattr(self.judge, "raw_example", "") or getattr(self.judge, "last_raw", "")
      raise TeacherFailure(
          f"judge {name}: at step {step}, {failed + unparsable} of {calls} verdicts failed ({failed}) "
          f"or could not be read ({unparsable}), more than teacher.max_failure_share="
          f"{self.max_failure_share:g}; one raw output: {_clip(raw)!r}")
    if (self.max_all_tied_steps and not self.others_train
        and self.streak >= self.max_all_tied_steps):
      raise TeacherFailure(
          f"judge {name}: every group tied on {self.streak} consecutive steps (to step {step}) "
          f"while nothing else is trained (sip.lm_coef=0): the judge ranks no candidate, so no "
          f"step trains (sip.max_all_tied_steps={self.max_all_tied_steps}); one raw output: "
          f"{_clip(getattr(self.judge, 'last_raw', ''))!r}")
    return out


def _clip(text: str, n: int = 300) -> str:
  text = str(text or "(none recorded)")
  return text if len(text) <= n else text[:n] + "..."


def check_prompt_fits(judge, cand_len: int, cand_field: str) -> None:
  """A judge of the paper's formats (one with `prompts`, possibly behind AxisJudges) holds two
  whole candidates of `cand_len` tokens in its quality prompt (counted as if the teacher's
  tokens were the policy's); else a ValueError naming the fields, before any step runs."""
  inner = getattr(judge, "default", judge)
  prompts = getattr(inner, "prompts", None)
  if prompts is None or not hasattr(prompts, "overhead"):
    return
  need = prompts.overhead("quality", inner.variant) + 2 * (int(cand_len) + 1)
  if need > prompts.max_len:
    from earlyrl_jax.configs import ConfigError
    raise ConfigError(
        f"teacher.max_len: the judge's quality prompt with two whole candidates of {cand_field}="
        f"{cand_len} tokens needs {need} tokens (template and answer room "
        f"{prompts.overhead('quality', inner.variant)}), more than the teacher's context "
        f"{prompts.max_len}; raise teacher.max_len or shorten {cand_field}")
