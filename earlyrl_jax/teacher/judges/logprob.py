"""LogProbJudge: any instruct model's verdict read from its own probabilities of each answer.

Why: the paper samples a verdict five times to estimate P(A > B). The prompt here ends inside
the assistant's turn with the forced answer lead ('Answer:'), and the verdict is the model's
probability of each answer option (' Option 1' / ' Option 2', ' YES' / ' NO', ' No' / ' Possible'
/ ' Definite'), renormalised over the options: an exact expectation in one forward pass, no
sampling, nothing to parse. A multi-token option is scored as a sequence (the sum of its tokens'
log-probs). All rows of a call go to `backend.continuation_logprobs` at once, so the options of
one prompt share its prefill (in-process) or the server's prefix cache.

A row whose log-prob came back NaN (a served request that failed after its retries) is a tie,
counted in `failed`; an error of the backend itself (TeacherFailure) is not caught here.
"""
from __future__ import annotations

import numpy as np

from earlyrl_jax.teacher.judges.paper import NEUTRAL, PaperJudge
from earlyrl_jax.teacher.prompts.paper import option_values


def option_probs(logp_NxK: np.ndarray) -> np.ndarray:
  """Softmax over each row's option log-probs (the rest of the vocabulary renormalised away);
  rows with a NaN stay NaN."""
  lp = np.asarray(logp_NxK, np.float64)
  z = np.exp(lp - np.max(lp, axis=1, keepdims=True))
  return z / np.sum(z, axis=1, keepdims=True)


class LogProbJudge(PaperJudge):
  """The paper's formats, verdicts from the answer options' probabilities (module docstring).

      judge = LogProbJudge(InProcessBackend.from_teacher(load_teacher(hf_dir)))
      judge.compare(prefixes, a, b, axis="quality")   # P(a better) [n]
  """

  variant = "logprob"

  def _verdicts(self, fmt: str, prompts: list[str]) -> np.ndarray:
    options, values = option_values(fmt)
    n, k = len(prompts), len(options)
    lp = self.backend.continuation_logprobs([p for p in prompts for _ in options],
                                            list(options) * n).reshape(n, k)
    probs = option_probs(lp)
    ok = np.all(np.isfinite(lp), axis=1)
    out = np.where(ok, probs @ np.asarray(values, np.float64), NEUTRAL)
    self.calls += n
    self.failed += int(np.sum(~ok))
    for i in ([int(np.argmin(ok))] if not ok.all() else []) + [n - 1]:
      raw = ", ".join(f"log p({o!r})={x:.3f}" for o, x in zip(options, lp[i]))
      self._note(f"{raw} after ...{prompts[i][-80:]!r}", bad=not ok[i])
    return out
