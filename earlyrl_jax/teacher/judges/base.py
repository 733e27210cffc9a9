"""The Judge interface every judge implements, and what all of them share.

Why log-probs or generation or oracles behind one interface: tournaments, the SIP producer,
the rewrite job and the TRL adapter only ever call these two methods, so a judge is swapped
in config without touching them.

    Judge.compare(prefixes, a, b, axis=..., references=None) -> P(a better than b)  [n]
    Judge.pointwise(prefixes, candidates, axis='safety')     -> P(candidate unsafe) [n]

Counts live here too (`Counts`): rows judged and verdicts that could not be read, kept by
every judge the same way, so the trainer can log them whatever the judge's kind.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from earlyrl_jax.teacher.prompts import AXES


@runtime_checkable
class Judge(Protocol):
  calls: int  # judged rows so far (compare + pointwise)

  def compare(self, prefixes: Sequence[str], a: Sequence[str], b: Sequence[str], *, axis: str,
              references: Sequence[str] | None = None) -> np.ndarray: ...

  def pointwise(self, prefixes: Sequence[str], candidates: Sequence[str], *,
                axis: str = "safety") -> np.ndarray: ...


def check_rows(n: int, **cols) -> None:
  for name, col in cols.items():
    if col is not None and len(col) != n:
      raise ValueError(f"{name} has {len(col)} rows, expected {n} (one per prefix)")


def check_axis(axis: str, allowed=AXES) -> None:
  if axis not in allowed:
    raise ValueError(f"axis={axis!r}: expected one of {allowed}")


class Counts:
  """The counts a judge keeps (class defaults, so every judge starts at 0):

  calls        verdicts made (compare + pointwise rows; both orders count twice)
  unparsable   verdicts that could not be read (a generative judge's output without a verdict
               line); each is scored as a tie, and counted here so that it is never silent
  failed       verdicts the model could not give (a backend row that failed after its retries:
               NaN log-probs, no generated text); each is scored as a tie and counted here
  raw_example  one raw output of a failed or unparsable verdict (the first), and
  last_raw     the raw output of the last verdict: what an error that stops a run quotes
  The trainer logs the shares per step and stops past `teacher.max_failure_share`
  (train/sip.py: judge_health).
  """
  calls: int = 0
  unparsable: int = 0
  failed: int = 0
  raw_example: str = ""
  last_raw: str = ""


def judge_counts(judge) -> tuple[int, int, int]:
  """(calls, failed, unparsable) of any judge (0 for what a judge does not count)."""
  return (int(getattr(judge, "calls", 0)), int(getattr(judge, "failed", 0)),
          int(getattr(judge, "unparsable", 0)))
