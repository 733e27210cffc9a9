"""The teacher's claims verdict: which sentences state a fact the judge should check.

Its prompt (no prefix, a CHECK after each sentence), its labels (the oracles' claims), how the
judge reads it (one row per sentence of each distinct candidate; unread sentences count as
claims) and how factuality's surprise leaves out the sentences it reads as no claim."""
from __future__ import annotations

import random

import numpy as np
import pytest

from earlyrl_jax import world as W
from earlyrl_jax.embedded import recipe as R
from earlyrl_jax.embedded.judge import EmbeddedJudge
from earlyrl_jax.embedded.recipe import JudgeRecipe
from earlyrl_jax.teacher.judges.lm import two_way
from earlyrl_jax.teacher.prompts.markup_ids import PromptEncoder
from earlyrl_jax.teacher.prompts import markup as P
from earlyrl_jax.teacher.prompts.text import split_sentences
from earlyrl_jax.embedded import surprise as S
from earlyrl_jax.embedded import data as D
from earlyrl_jax.embedded import job as TT
from tests.helpers import default_world, random_teacher, world_tokenizer


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
  return world_tokenizer(str(tmp_path_factory.mktemp("tok") / "tokenizer.model"),
                         [P.claims_head() + P.edit_tail(["a. ", "b."]) + P.VERDICT_KEEP + P.VERDICT_DROP])


def _facts(kb):
  """(a true claim, a false claim, a filler, a claim about a name the world does not have)."""
  (subj, rel), = [k for k in sorted(kb.facts) if k[1] == "capital"][:1]
  rng = random.Random(0)
  true = W.fact_sentence(kb, subj, rel, rng, connective=False).text
  false = W.fact_sentence(kb, subj, rel, rng, false=True, connective=False).text
  unknown = true.replace(subj, "Qqzzyx")
  return true, false, f"Little else is recorded about {subj}.", unknown


def test_the_oracles_label_true_and_false_claims_as_claims_and_nothing_else():
  _, kb, oracles = default_world()
  true, false, filler, unknown = _facts(kb)
  assert D.claim_labels(oracles, [true, false, filler, unknown, "Tal tal tal the of."]) == [
      True, True, False, False, False]


def test_claims_prompt_has_no_prefix_and_a_check_after_each_sentence(sp):
  enc = PromptEncoder(sp, max_len=256, limits=P.PromptLimits(80, 100, 100))
  ids, checks = enc.claims(["Tal is old. ", "It lies in Vexmoor."])
  head = list(enc._head("claims", ""))
  assert ids[:len(head)] == head and len(checks) == 2 and checks[-1] == len(ids) - 1
  check = P.verdict_ids(sp, (P.CHECK,))[0]
  assert [ids[c] for c in checks] == [check, check]
  assert sp.decode(ids[checks[0] + 1:checks[1]]).strip() == "It lies in Vexmoor."
  assert P.claims_head("any prefix") == P.claims_head()        # a property of the sentence alone


def test_claim_examples_put_keep_or_drop_at_each_check(sp):
  _, kb, oracles = default_world()
  true, false, filler, unknown = _facts(kb)
  enc = PromptEncoder(sp, max_len=256, limits=P.PromptLimits(80, 200, 100))
  keep, drop = P.verdict_ids(sp, P.CLAIM_VERDICTS)
  ex, = D.claim_examples(enc, oracles, [f"{true} {filler} {false} {unknown}", "  "], 8.0)
  ids, checks = enc.claims(split_sentences(f"{true} {filler} {false} {unknown}"))
  assert ex.ids == ids and ex.weight == 8.0
  assert [ex.targets[c] for c in checks] == [keep, drop, keep, drop]


class _ClaimScorer:
  """KEEP (log p -0.1 vs -3) where the row's last sentence says 'lies in', DROP otherwise."""

  def __init__(self, sp):
    self.sp, self.rows = sp, []

  def verdict_logprobs(self, params, prompts, ids):
    self.rows += [self.sp.decode(p) for p in prompts]
    last = [self.sp.decode(p).split(P.CHECK)[-2] if P.CHECK in self.sp.decode(p) else "" for p in prompts]
    return np.array([[-0.1, -3.0] if "lies in" in s else [-3.0, -0.1] for s in last], np.float32)


def test_judge_reads_each_distinct_candidate_once_and_counts_unread_sentences_as_claims(sp):
  scorer = _ClaimScorer(sp)
  judge = EmbeddedJudge(None, None, sp, max_len=256, scorer=scorer, limits=P.PromptLimits(80, 55, 100))
  a = "Tal lies in Vexmoor. Tal is nice."
  long = "Tal is nice. Tal lies in Vexmoor. Rot lies in Kex. Rot is big."   # past 55 characters
  got = judge.claim_probs([a, "", a, long])
  hi, lo = two_way(np.array([[-0.1, -3.0]]))[0], two_way(np.array([[-3.0, -0.1]]))[0]
  np.testing.assert_allclose(got[0], [hi, lo], rtol=1e-6)
  np.testing.assert_allclose(got[2], got[0])
  assert got[1].shape == (0,)
  assert P.edit_checked(split_sentences(long), judge.encoder.limits) == 3
  np.testing.assert_allclose(got[3], [lo, hi, hi, 1.0], rtol=1e-6)      # the 4th is not read
  assert len(scorer.rows) == 5 and judge.calls == 5                    # 2 rows for a (once) + 3 for long
  assert all(r.startswith(P.claims_head().split("\n")[0]) for r in scorer.rows)


def test_factuality_surprise_leaves_out_sentences_read_as_no_claim(sp):
  teacher = random_teacher(sp, max_seq_len=128)
  probe = S.SurpriseProbe(teacher.graphdef, teacher.tokenizer, max_len=teacher.max_len)
  pre, cands = ["The capital of Vexmoor is Tal."], ["Tal is old. It lies in Vexmoor. Rot is big."]
  gaps = probe.sentence_gaps(teacher.params, pre, cands)[0]
  every, all_claims = probe.candidates(teacher.params, pre, cands, claims=[np.ones((3,), np.float32)])
  assert all_claims[0] == pytest.approx(every[0]) == pytest.approx(max(g.max() for g in gaps))
  _, second = probe.candidates(teacher.params, pre, cands, claims=[np.array([0.2, 0.9, 0.49], np.float32)])
  assert second[0] == pytest.approx(gaps[1].max())
  _, none = probe.candidates(teacher.params, pre, cands, claims=[np.zeros((3,), np.float32)])
  assert none[0] == 0.0
  # With the checkable rule as well: a sentence stays only when both keep it (indices stay aligned).
  _, both = probe.candidates(teacher.params, pre, cands, claims=[np.array([0.2, 0.9, 0.9], np.float32)],
                             checkable=(1e9, 1e9))
  assert both[0] == pytest.approx(max(gaps[1].max(), gaps[2].max()))


def test_judge_passes_its_claim_probs_to_factuality_only_when_asked(sp, monkeypatch):
  seen = []

  def candidates(self, params, pre, cands, claims=None, **_):
    seen.append(claims)
    n = len(cands)
    return np.zeros((n,), np.float32), np.array([2.0 * len(c) for c in cands], np.float32)
  monkeypatch.setattr(S.SurpriseProbe, "candidates", candidates)
  mix = {"quality": (0.0, 1.0), "factuality": (0.0, 1.0)}
  plain = EmbeddedJudge(None, None, sp, max_len=256, scorer=_ClaimScorer(sp), recipe=JudgeRecipe(mix=mix))
  plain.compare(["p"], ["Tal lies in Vexmoor."], ["Tal is nice."], axis="factuality")
  checked = EmbeddedJudge(None, None, sp, max_len=256, scorer=_ClaimScorer(sp),
                          recipe=JudgeRecipe(mix=mix, claim_check=True))
  checked.compare(["p"], ["Tal lies in Vexmoor."], ["Tal is nice."], axis="quality")
  assert seen == [None, None]                                          # quality needs no claims
  checked.compare(["p"], ["Tal lies in Vexmoor."], ["Tal is nice."], axis="factuality")
  assert [len(x) for x in seen[-1]] == [1, 1] and seen[-1][0][0] > 0.5 > seen[-1][1][0]


def test_claim_check_setting_is_checked_and_reaches_the_judge(sp):
  assert R.inference_settings(None)["claim_check"] is False
  assert R.inference_settings({"claim_check": True})["claim_check"] is True
  with pytest.raises(ValueError, match="claim_check"):
    R.inference_settings({"claim_check": "yes"})
  teacher = random_teacher(sp, max_seq_len=128)
  teacher.info["inference"] = {"claim_check": True, "factuality_mix": (0.0, 1.0)}
  assert teacher.judge().claim_check and not random_teacher(sp, max_seq_len=128).judge().claim_check
  teacher.info["sft_counts"] = {"scored": 10, "claims": 0}             # trained without the verdict
  with pytest.raises(ValueError, match="without its claims verdict"):
    teacher.judge()
  teacher.info["sft_counts"]["claims"] = 5
  assert teacher.judge().claim_check


def test_the_claims_verdict_learning_from_rollouts_makes_the_corpus_part_of_the_hash():
  from configs import teacher_tiny
  cfg = teacher_tiny.get_config()
  cfg.world.myth_rate = 0.0
  other = teacher_tiny.get_config()
  other.world.myth_rate = 0.1
  assert TT.config_hash(cfg) != TT.config_hash(other)                 # rollouts read the corpus
  cfg.teacher.sft.claim_rollouts = other.teacher.sft.claim_rollouts = 0
  assert TT.config_hash(cfg) == TT.config_hash(other)                 # clean documents only

