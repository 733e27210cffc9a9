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
from earlyrl_jax.models.scoring import any_process
from earlyrl_jax.teacher.judges.lm import LMJudge, two_way
from earlyrl_jax.teacher.prompts import markup as P
from earlyrl_jax.teacher.prompts.markup_ids import bos_ids
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
    from earlyrl_jax.models.tree_scorer import few_shapes_scorer
    super().__init__(graphdef, params, tokenizer, judge_format=recipe.format, **lm_kw)
    self.recipe = recipe
    self.mix = recipe.mix
    # Every row this judge reads (verdicts, claims, surprise) goes through one packed scorer:
    # rows of one window share its head, a candidate's sentence cuts share its earlier sentences.
    # A scorer given in lm_kw (a stand-in) reads row by row instead (LMJudge._score).
    tree = few_shapes_scorer(graphdef, lm_kw.get("mesh"), tokenizer.pad_id)
    self.tree = tree if lm_kw.get("scorer", "auto") == "auto" else None
    self.probe = None
    if recipe.uses_surprise:
      from earlyrl_jax.embedded.surprise import SurpriseProbe
      self.probe = SurpriseProbe(graphdef, tokenizer, max_len=lm_kw["max_len"], tree=tree)

  def _filler(self) -> list[int]:
    return bos_ids(self.tokenizer) or [self.tokenizer.pad_id]

  def _score(self, parts: list[tuple[list[int], list[int]]], ids: list[int]) -> np.ndarray:
    """Verdict log-probs of rows given as (head, tail), read as tries of each head's rows, all
    rows in one batch (every process takes part, with a one-token row when it has none)."""
    if self.tree is None:
      return super()._score(parts, ids)
    if not any_process(bool(parts)):
      return np.zeros((0, len(ids)), np.float32)
    self.forward_rows += len(parts)
    prompts = [list(h) + list(t) for h, t in parts] or [self._filler()]
    groups = [tuple(h) for h, _ in parts] or [()]
    return self.tree.verdict_logprobs(self.params, prompts, groups, ids)[:len(parts)]

  def _read_at(self, prompts: list[list[int]], reads: list[list[int]], ids) -> list[np.ndarray]:
    """Verdict log-probs [len(reads[i]), len(ids)] of each prompt at each of its read positions:
    one pass per prompt through the tree scorer (a row per read position with a stand-in)."""
    if self.tree is None:
      rows = [([], p[:k + 1]) for p, r in zip(prompts, reads) for k in r]
      lp, out, at = self._score(rows, ids), [], 0
      for r in reads:
        out.append(lp[at:at + len(r)])
        at += len(r)
      return out
    if not any_process(bool(prompts)):
      return []
    got = self.tree.read(self.params, prompts or [self._filler()], [0] * max(1, len(prompts)),
                         reads or [[]], candidate_ids=ids)
    return got.verdicts[:len(prompts)]

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
    prompts, reads, read_of = [], [], {}
    for c in dict.fromkeys(candidates):
      sentences = split_sentences(c)
      ids, checks = self.encoder.claims(sentences)
      read_of[c] = (len(prompts) if checks else None, len(sentences))
      if checks:   # the prompt up to its last CHECK, read at every CHECK
        prompts.append(ids[:checks[-1] + 1])
        reads.append(checks)
    self.calls += sum(len(r) for r in reads)
    got = self._read_at(prompts, reads, P.verdict_ids(self.tokenizer, P.CLAIM_VERDICTS))
    out = []
    for c in candidates:
      k, n = read_of[c]
      p = two_way(got[k]) if k is not None else np.zeros((0,), np.float32)   # P(KEEP)
      out.append(np.concatenate([p, np.ones((n - len(p),), np.float32)]).astype(np.float32))
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
