"""The embedded teacher's judge: the general LM judge, plus its recipe (surprise, claims verdict).

Why a subclass of `teacher.judges.lm.LMJudge` and not more arguments on it: the general judge
reads verdict-token log-probs for any in-process LM with one-token markers, and knows nothing
of surprise, claims or the synthetic world's sentences. It leaves three hooks, documented
there: `mix` (each axis's verdict and penalty weights), `penalties` (a per-candidate penalty)
and `safety_texts` (what P(unsafe) is the largest over). The embedded teacher fills them from
ONE frozen object, `recipe.JudgeRecipe`, and adds its claims verdict (`claim_probs`), so its
whole judging recipe lives here, apart from the layer that serves any model.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from earlyrl_jax.embedded.recipe import JudgeRecipe
from earlyrl_jax.teacher.judges.lm import LMJudge, two_way
from earlyrl_jax.teacher.prompts import markup as P
from earlyrl_jax.teacher.prompts.text import split_sentences


class EmbeddedJudge(LMJudge):
  """LMJudge configured by a `JudgeRecipe` (see its fields): surprise mixed into the verdicts,
  factuality counting only checkable claims, safety read sentence by sentence.

  The claims verdict (`claim_probs`, P.claims_head): a KEEP/DROP verdict per sentence, trained
  on the oracles' labels of world text and policy rollouts. Surprise knows which of two claims is
  true; it cannot tell a false claim from a sentence that claims nothing checkable (a filler
  naming an unexpected entity, an invented name, garbled text), which the oracles do not count.
  One row per sentence of each distinct candidate, one shared head.
  """

  def __init__(self, graphdef, params, tokenizer, *, recipe: JudgeRecipe = JudgeRecipe(), **lm_kw):
    super().__init__(graphdef, params, tokenizer, judge_format=recipe.format, **lm_kw)
    self.recipe = recipe
    self.mix = recipe.mix
    self.probe = None
    if recipe.uses_surprise:
      from earlyrl_jax.embedded.surprise import SurpriseProbe
      self.probe = SurpriseProbe(graphdef, tokenizer, max_len=lm_kw["max_len"], mesh=lm_kw.get("mesh"))

  @property
  def claim_check(self) -> bool:
    return self.recipe.claim_check

  def penalties(self, axes, prefixes, candidates) -> dict[str, np.ndarray] | None:
    """{axis: each candidate's surprise [n]} when an axis asked mixes it in (each distinct
    (prefix, candidate) scored once, one pass for all axes), else None."""
    if self.probe is None or not any(self.mix[x][1] for x in axes):
      return None
    r = self.recipe
    keys: dict[tuple, int] = {}
    slot = np.array([keys.setdefault((p, c), len(keys)) for p, c in zip(prefixes, candidates)], np.int64)
    cands = [k[1] for k in keys]
    checked = self.claim_probs(cands) if r.claim_check and "factuality" in axes else None
    every, claims = self.probe.candidates(self.params, [k[0] for k in keys], cands,
                                          broken=r.broken, total=r.claim_total,
                                          checkable=r.checkable, floor=r.claim_floor,
                                          claims=checked)
    pick = lambda x: x[slot] if len(slot) else np.zeros((0,), np.float32)
    return {"quality": pick(every), "factuality": pick(claims)}

  def safety_texts(self, candidate: str) -> list[str]:
    return sentence_cuts(candidate) if self.recipe.safety_by_sentence else [candidate]

  def claim_probs(self, candidates: Sequence[str]) -> list[np.ndarray]:
    """P(the sentence is a checkable claim) for each sentence of each candidate, float32
    [n_sentences] in split_sentences order (P.claims_head). Each distinct candidate is read
    once, one row per sentence cut after its CHECK, every row sharing the prompt's head;
    sentences past the prompt's budget (P.edit_checked) get 1.0, as without a check."""
    head_len = len(self.encoder._head("claims", ""))
    parts, rows_of = [], {}
    for c in dict.fromkeys(candidates):
      sentences = split_sentences(c)
      ids, checks = self.encoder.claims(sentences)
      rows_of[c] = (len(parts), len(checks), len(sentences))
      parts += [(ids[:head_len], ids[head_len:k + 1]) if k >= head_len else ([], ids[:k + 1]) for k in checks]
    self.calls += len(parts)
    p = two_way(self._score(parts, P.verdict_ids(self.tokenizer, P.CLAIM_VERDICTS)))   # P(KEEP)
    out = []
    for c in candidates:
      start, read, n = rows_of[c]
      out.append(np.concatenate([p[start:start + read], np.ones((n - read,), np.float32)]).astype(np.float32))
    return out


def sentence_cuts(candidate: str) -> list[str]:
  """The candidate cut after each of its sentences, shortest first; the last is the whole
  candidate (a blank one is its own single cut)."""
  pieces = split_sentences(candidate)
  if len(pieces) <= 1:
    return [candidate]
  return ["".join(pieces[:k]).rstrip() for k in range(1, len(pieces))] + [candidate]


def embedded_judge(teacher, *, recipe: JudgeRecipe | None = None, **lm_kw) -> EmbeddedJudge:
  """The judge of a loaded embedded teacher (`Teacher.judge('embedded')`): its recipe from its
  teacher_config.json (`recipe` replaces it), prompts within its limits, one prefill per head."""
  P.verdict_ids(teacher.tokenizer, P.VERDICTS)   # its markers are single tokens, or a clear error now
  recipe = JudgeRecipe.of(teacher) if recipe is None else recipe
  counts = teacher.info.get("sft_counts")
  if recipe.claim_check and counts is not None and not counts.get("claims"):
    raise ValueError("teacher.inference.claim_check: this teacher was trained without its "
                     "claims verdict (teacher.sft.claim_rollouts / claim_share); retrain it "
                     "or set claim_check=False")
  lm_kw.setdefault("model_cfg", teacher.model_cfg)
  return EmbeddedJudge(teacher.graphdef, teacher.params, teacher.tokenizer, recipe=recipe,
                       max_len=teacher.max_len, mesh=teacher.mesh, limits=teacher.limits, **lm_kw)
