"""The surprise probe and the teacher's inference settings: token spans per sentence, the probe's
values on a real model, the editor's surprise and cut-off rules, judge mixes, settings that
change the report but not the teacher."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from earlyrl_jax.models.scoring import Scorer
from earlyrl_jax.embedded import recipe as R
from earlyrl_jax.embedded.judge import EmbeddedJudge
from earlyrl_jax.embedded.recipe import JudgeRecipe, check_mix
from earlyrl_jax.teacher.judges.lm import sigmoid
from earlyrl_jax.teacher.prompts import markup as P
from earlyrl_jax.teacher.prompts.text import split_sentences
from earlyrl_jax.embedded import surprise as S
from earlyrl_jax.teacher import teacher as T
from earlyrl_jax.embedded import job as TT
from earlyrl_jax.embedded.editor import EditRewriter, first_sentences
from tests.helpers import random_teacher, save_reusable_teacher, world_tokenizer


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
  return world_tokenizer(str(tmp_path_factory.mktemp("tok") / "tokenizer.model"),
                         [P.edit_head("p") + P.edit_tail(["a. ", "b."]) + P.VERDICT_KEEP + P.VERDICT_DROP])


@pytest.fixture(scope="module")
def teacher(sp):
  return random_teacher(sp, max_seq_len=128)


# ------------------------------------------------------------------ token spans


def test_junction_follows_how_world_suffixes_are_stored():
  assert S.junction("Tal is old.", "It is big.") == " "
  assert S.junction("Facts about Tal:", "- Tal is old.") == "\n"
  assert S.junction("Q: Where is Tal?", "A: In Vexmoor.") == "\n"
  assert S.junction("Tal is old.\n", "It is big.") == ""
  assert S.junction("Tal is old.", " It is big.") == ""
  assert S.junction("", "It is big.") == ""


def test_sentence_spans_cover_the_candidate_tokens_of_the_joined_text(sp):
  prefix, cand = "The capital of Vexmoor is Tal.", "Tal is old.  It lies in Vexmoor.\nNobody knows more"
  prompt, cont, spans = S.sentence_tokens(sp, prefix, cand, max_len=128)
  assert prompt + cont == [sp.bos_id] + sp.encode(prefix + " " + cand)   # one encoding of the whole
  assert len(spans) == len(split_sentences(cand)) == 3
  assert spans[0][0] == 0 and spans[-1][1] == len(cont)
  assert all(a < b for a, b in spans) and all(spans[i][1] == spans[i + 1][0] for i in range(2))
  texts = [sp.decode(cont[a:b]).strip() for a, b in spans]
  assert texts == ["Tal is old.", "It lies in Vexmoor.", "Nobody knows more"]


def test_sentence_spans_fit_max_len_giving_up_the_prefix_first(sp):
  prefix = "Tal is old. " * 40
  prompt, cont, spans = S.sentence_tokens(sp, prefix, "It is big. It lies in Vexmoor.", max_len=32)
  assert len(prompt) + len(cont) <= 32 and prompt[0] == sp.bos_id
  assert sp.decode(cont).strip() == "It is big. It lies in Vexmoor."
  long_cand = "It is big. " * 20 + "It lies in Vexmoor."
  prompt, cont, spans = S.sentence_tokens(sp, "Tal is old.", long_cand, max_len=24)
  assert len(prompt) >= 1 and len(prompt) + len(cont) <= 24
  assert spans[-1] == (len(cont), len(cont))           # past the cut: an empty span (surprise 0)


def test_probe_takes_each_sentences_largest_gap(teacher):
  probe = S.SurpriseProbe(teacher.graphdef, teacher.tokenizer, max_len=teacher.max_len)
  pre = ["The capital of Vexmoor is Tal.", "Facts about Tal:"]
  cands = ["Tal is old. It lies in Vexmoor.", "- Tal is old."]
  got = probe.sentences(teacher.params, pre, cands)
  gaps = Scorer(teacher.graphdef).surprise(
      teacher.params, *zip(*[S.sentence_tokens(teacher.tokenizer, p, c, teacher.max_len)[:2]
                             for p, c in zip(pre, cands)]))
  for i, (p, c) in enumerate(zip(pre, cands)):
    spans = S.sentence_tokens(teacher.tokenizer, p, c, teacher.max_len)[2]
    np.testing.assert_allclose(got[i], [gaps[i, a:b].max() for a, b in spans], rtol=1e-6)
  every, claims = probe.candidates(teacher.params, pre, cands)
  np.testing.assert_allclose(every, [g.max() for g in got])
  np.testing.assert_array_equal(claims, every)                        # no broken-text rule: the same
  assert probe.candidates(teacher.params, ["Tal."], [""])[0][0] == 0.0   # nothing said, nothing surprising
  # Broken text (more than `tokens` gaps above `nats`) leaves factuality's surprise, not quality's.
  gaps = probe.sentence_gaps(teacher.params, pre[:1], cands[:1])[0]
  first = gaps[0]
  nats = float(np.sort(first)[-2]) - 1e-4                             # the first sentence: 2 gaps above
  every, claims = probe.candidates(teacher.params, pre[:1], cands[:1], broken=(nats, 1))
  assert S.is_broken(first, (nats, 1)) and not S.is_broken(first, (nats, 2))
  want = max([g.max() for g in gaps if not S.is_broken(g, (nats, 1))], default=0.0)
  assert every[0] == pytest.approx(max(g.max() for g in gaps)) and claims[0] == pytest.approx(want)
  _, summed = probe.candidates(teacher.params, pre[:1], cands[:1], broken=(nats, 1), total=0.5)
  kept = sum(float(g.sum()) for g in gaps if not S.is_broken(g, (nats, 1)))
  assert summed[0] == pytest.approx(want + 0.5 * kept, rel=1e-5)
  # Uncheckable sentences leave it too: none at huge thresholds, every one of several words at tiny.
  _, lax = probe.candidates(teacher.params, pre[:1], cands[:1], checkable=(1e9, 1e9))
  _, strict = probe.candidates(teacher.params, pre[:1], cands[:1], checkable=(1e-6, 1e-6))
  assert lax[0] == pytest.approx(max(g.max() for g in gaps)) and strict[0] == 0.0
  _, floored = probe.candidates(teacher.params, pre[:1], cands[:1], floor=1.0)
  assert floored[0] == pytest.approx(max(0.0, max(g.max() for g in gaps) - 1.0), abs=1e-5)


def test_a_false_claim_misses_once_broken_text_many_times():
  assert not S.is_broken(np.array([0.5, 9.0, 0.2, 0.1]), (8.0, 2))     # one confident miss: a claim
  assert S.is_broken(np.array([12.0, 9.0, 0.2, 15.0]), (8.0, 2))       # three: typos, salad
  assert not S.is_broken(np.array([], np.float32), (8.0, 2))


def test_word_marks_group_pieces_into_words_and_flag_later_pieces_of_names(sp):
  sentence = "Tal lies in Vexmoor, not Quelcusheim."
  word, later = S.word_marks(sp, sentence)
  ids, _ = sp.encode_with_offsets(" " + sentence)
  assert len(word) == len(later) == len(ids) and list(word) == sorted(word)
  groups = [[k for k in range(len(ids)) if word[k] == w] for w in range(word.max() + 1)]
  assert [sp.decode([ids[k] for k in g]).strip() for g in groups] == \
      ["Tal", "lies", "in", "Vexmoor", ",", "not", "Quelcusheim", "."]
  for g, name in zip(groups, (True, False, False, True, False, False, True, False)):
    lead = next(i for i, k in enumerate(g) if sp.decode([ids[k]]).strip())   # a lone space piece first
    assert list(later[g]) == [False] * (lead + 1) + [name] * (len(g) - lead - 1)
  assert any(len(groups[i]) > 1 for i in (3, 6))     # the test sees a name of several pieces


def test_a_checkable_claim_surprises_in_one_word_of_known_names():
  marks = (np.array([0, 0, 1, 2, 3, 3]), np.array([False, True, False, False, False, True]))
  claim = np.array([0.5, 0.2, 1.0, 0.3, 9.0, 0.1])        # "Tal|ia lies in Vex|moor": the object misses
  assert not S.is_uncheckable(claim, marks, (6.0, 7.0))
  assert S.is_uncheckable(np.array([0.5, 8.0, 1.0, 0.3, 9.0, 0.1]), marks, (6.0, 7.0))   # "Tal|xq": unknown
  assert S.is_uncheckable(np.array([6.5, 0.2, 1.0, 0.3, 9.0, 0.1]), marks, (6.0, 7.0))   # two places
  assert not S.is_uncheckable(np.array([0.5, 0.2, 1.0, 0.3, 9.0, 6.5]), marks, (6.0, 7.0))  # one word
  assert S.is_uncheckable(np.array([0.5, 0.2, 1.0, 0.3, 9.0, 6.5]), marks, (6.0, 6.0))
  assert S.is_uncheckable(np.array([8.0, 1.0, 0.3, 9.0, 0.1]), marks, (6.0, 7.0))   # aligned from the end
  assert not S.is_uncheckable(np.array([0.1, 0.1, 0.5, 0.2, 1.0, 0.3, 9.0, 0.1]), marks, (6.0, 7.0))
  assert not S.is_uncheckable(np.array([], np.float32), marks, (6.0, 7.0))


def test_claim_surprise_floor_makes_true_claims_tie_with_saying_nothing():
  true, false = [np.array([2.5, 0.0, 0.2, 0.1])], [np.array([2.5, 0.0, 0.2, 7.0])]
  assert S.claim_surprise(true, None, 0.1, 3.0) == 0.0 == S.claim_surprise([], None, 0.1, 3.0)
  assert S.claim_surprise(false, None, 0.1, 3.0) == pytest.approx(4.0 + 0.1 * 4.0)
  assert S.claim_surprise(true, None, 0.1) > 0.0                            # without it: true < nothing


def test_claim_surprise_breaks_the_tie_of_a_minimal_pair():
  # "R|uth|la|dale lies in Quelcusheim." vs "... Maxtirkia.": both largest gaps are the shared
  # name piece (3.0); only the object differs (0.1 vs 2.0).
  true, false = [np.array([3.0, 0.0, 0.2, 0.1, 0.0])], [np.array([3.0, 0.0, 0.2, 2.0, 0.0])]
  assert S.claim_surprise(true, None, 0.0) == S.claim_surprise(false, None, 0.0) == 3.0
  assert S.claim_surprise(true, None, 0.1) < S.claim_surprise(false, None, 0.1)
  assert S.claim_surprise(false, None, 0.1) == pytest.approx(3.0 + 0.1 * 5.2)
  broken = [np.array([12.0, 9.0, 15.0]), np.array([1.0, 0.5])]      # typos, then a claim
  assert S.claim_surprise(broken, (8.0, 2), 0.1) == pytest.approx(1.0 + 0.1 * 1.5)
  assert S.claim_surprise([], (8.0, 2), 0.1) == 0.0


# ------------------------------------------------------------------ the editor


def _fixed_verdicts(monkeypatch, drop):
  monkeypatch.setattr(EditRewriter, "drop_probs", lambda self, params, plans: [
      np.array([drop.get(s.strip(), 0.1) for s in pl.sentences[:len(pl.checks)]]) for pl in plans])


def test_editor_drops_surprising_sentences_the_verdicts_kept(teacher, monkeypatch):
  _fixed_verdicts(monkeypatch, {"Rot is vile.": 0.9})
  surprise = {"Tal is old.": 1.0, "Tal lies in Vexmor.": 12.0, "Rot is vile.": 0.5, "It is big.": 6.9}
  monkeypatch.setattr(S.SurpriseProbe, "sentences", lambda self, params, pre, cands: [
      np.array([surprise[s.strip()] for s in split_sentences(c)], np.float32) for c in cands])
  ed = teacher.rewriter(surprise_threshold=7.0)
  out = ed.rewrite(["A prefix."] * 2, ["Tal is old. Tal lies in Vexmor. It is big.", "Rot is vile. Tal is old."],
                   key=jax.random.key(0))
  assert out == ["Tal is old. It is big.", "Tal is old."]   # the typo by surprise, the insult by verdict
  plain = teacher.rewriter()                                 # no threshold: verdicts alone
  assert plain.probe is None
  assert plain.rewrite(["A prefix."], ["Tal is old. Tal lies in Vexmor."], key=jax.random.key(0)) == \
      ["Tal is old. Tal lies in Vexmor."]


def test_editor_drops_a_complete_suffixs_cut_off_sentence_unless_a_window_cut_it(teacher, monkeypatch):
  _fixed_verdicts(monkeypatch, {})
  ed = teacher.rewriter(drop_unfinished=True)
  plan = ed.plan("A prefix.", "Tal is old. Scholars continue to")
  assert len(plan.checks) == 1 and plan.drop_last and plan.apply([True]) == "Tal is old."
  win = teacher.rewriter(drop_unfinished=True, window_cut=True)   # the window's edge stays
  plan = win.plan("A prefix.", "Tal is old. Scholars continue to")
  assert not plan.drop_last and plan.apply([True]) == "Tal is old. Scholars continue to"
  assert not teacher.rewriter().plan("A prefix.", "Tal is old. Scholars continue to").drop_last


def test_written_anew_text_continues_the_prefix_without_a_trailing_space(teacher, monkeypatch):
  assert first_sentences("\nTal is old. It is big. Tal is old.", 1) == "Tal is old."
  assert first_sentences(" Tal is old. It is big. Tal", 2) == "Tal is old. It is big."
  assert first_sentences(" Tal is", 1) == ""
  ed = teacher.rewriter()
  seen = []
  real = ed.sampler.sample

  def spy(params, ids, **kw):
    seen.extend(ids)
    return real(params, ids, **kw)
  monkeypatch.setattr(ed.sampler, "sample", spy)
  ed.write_anew(teacher.params, ["Tal is old. "], jax.random.key(0))
  assert seen == [[teacher.tokenizer.bos_id] + teacher.tokenizer.encode("Tal is old.")]


# ------------------------------------------------------------------ judge mixes


class _ConstScorer:
  """Verdict logit +1 for candidate text containing 'good', -1 otherwise (any prompt format)."""

  def __init__(self):
    self.rows = 0

  def verdict_logprobs(self, params, prompts, ids):
    self.rows += len(prompts)
    return np.array([[0.0, -1.0] if len(p) % 2 else [-1.0, 0.0] for p in prompts], np.float32)


@pytest.mark.parametrize("fmt", ["scored", "pairwise"])
def test_judge_mix_is_verdict_logit_minus_weighted_surprise(sp, monkeypatch, fmt):
  sur = {"Tal is old.": 2.0, "Tal is olld.": 9.0}
  claims = {"Tal is old.": 2.0, "Tal is olld.": 0.0}           # the typo is broken text, not a claim
  asked = {}

  def candidates(self, params, pre, cands, broken=None, total=0.0, **rules):
    asked.update(rules)
    return (np.array([sur[c] for c in cands], np.float32),   # claim_total's stand-in: total x characters
            np.array([(claims if broken else sur)[c] + total * len(c) for c in cands], np.float32))
  monkeypatch.setattr(S.SurpriseProbe, "candidates", candidates)
  pre, a, b = ["A prefix."], ["Tal is old."], ["Tal is olld."]
  base = EmbeddedJudge(None, None, sp, max_len=256, scorer=_ConstScorer(), recipe=JudgeRecipe(format=fmt))
  mixed = EmbeddedJudge(None, None, sp, max_len=256, scorer=_ConstScorer(),
                        recipe=JudgeRecipe(format=fmt, mix={"quality": (1.0, 0.25), "factuality": (0.0, 1.0)}))
  assert base.probe is None and mixed.probe is not None
  for axis, (vw, sw) in (("quality", (1.0, 0.25)), ("factuality", (0.0, 1.0))):
    p0 = base.compare(pre, a, b, axis=axis, references=["r"])
    logit0 = np.log(p0 / (1 - p0))
    want = sigmoid(vw * logit0 - sw * (sur[a[0]] - sur[b[0]]))
    np.testing.assert_allclose(mixed.compare(pre, a, b, axis=axis, references=["r"]), want, rtol=1e-5)
  sharp = EmbeddedJudge(None, None, sp, max_len=256, scorer=_ConstScorer(),   # a verdict weight alone scales it
                        recipe=JudgeRecipe(format=fmt, mix={"quality": (2.0, 0.0)}))
  p0 = base.compare(pre, a, b, axis="quality")
  np.testing.assert_allclose(sharp.compare(pre, a, b, axis="quality"), sigmoid(2 * np.log(p0 / (1 - p0))),
                             rtol=1e-5)
  calls = mixed.calls
  mixed.compare(pre, a, b, axis="factuality", references=["r"])   # v = 0: no verdict row asked
  assert mixed.calls == calls
  strict = EmbeddedJudge(None, None, sp, max_len=256, scorer=_ConstScorer(), recipe=JudgeRecipe(
      format=fmt, mix={"quality": (0.0, 1.0), "factuality": (0.0, 1.0)}, broken=(8.0, 2),
      claim_total=0.5, checkable=(6, 7), claim_floor=3))
  p = strict.compare_axes(pre, a, b, axes=["quality", "factuality"], references=["r"])
  assert asked == {"checkable": (6.0, 7.0), "floor": 3.0, "claims": None}
  np.testing.assert_allclose(p["quality"], sigmoid(np.float32(9.0 - 2.0)), rtol=1e-5)
  np.testing.assert_allclose(p["factuality"], sigmoid(np.float32(0.5 * 12 - (2.0 + 0.5 * 11))), rtol=1e-5)


def test_mix_and_inference_settings_are_checked():
  assert check_mix(None) == {"quality": (1.0, 0.0), "factuality": (1.0, 0.0)}
  for bad, match in (({"safety": (1, 1)}, "not one of"), ({"quality": (0, 0)}, "not both 0"),
                     ({"quality": (1, -1)}, ">= 0")):
    with pytest.raises(ValueError, match=match):
      check_mix(bad)
  got = R.inference_settings({"edit_surprise": 6, "quality_mix": (1, 0.5), "broken_sentence": (8, 2)})
  assert got["broken_sentence"] == [8.0, 2]
  assert got["edit_surprise"] == 6.0 and got["quality_mix"] == [1.0, 0.5]
  assert got["factuality_mix"] == [1.0, 0.0] and not got["drop_unfinished"]
  with pytest.raises(ValueError, match="unknown settings"):
    R.inference_settings({"edit_surprize": 6})
  with pytest.raises(ValueError, match="positive"):
    R.inference_settings({"edit_surprise": 0})
  with pytest.raises(ValueError, match="broken_sentence"):
    R.inference_settings({"broken_sentence": (0, 2)})
  assert got["claim_total"] == 0.0 and R.inference_settings({"claim_total": 0.1})["claim_total"] == 0.1
  with pytest.raises(ValueError, match="claim_total"):
    R.inference_settings({"claim_total": -1})
  assert got["checkable_claim"] is None and got["claim_floor"] == 0.0
  assert R.inference_settings({"checkable_claim": (6, 7), "claim_floor": 3})["checkable_claim"] == [6.0, 7.0]
  for bad in ((0, 7), (6,), "6,7"):
    with pytest.raises(ValueError, match="checkable_claim"):
      R.inference_settings({"checkable_claim": bad})
  with pytest.raises(ValueError, match="claim_floor"):
    R.inference_settings({"claim_floor": -1})
  assert got["safety_by_sentence"] is False
  assert R.inference_settings({"safety_by_sentence": True})["safety_by_sentence"] is True
  with pytest.raises(ValueError, match="safety_by_sentence"):
    R.inference_settings({"safety_by_sentence": "yes"})


# ------------------------------------------------------------------ settings vs the config hash


def test_inference_settings_recompute_the_report_not_the_teacher(tmp_path, teacher, sp, monkeypatch):
  from configs import teacher_tiny
  cfg = teacher_tiny.get_config()
  h = TT.config_hash(cfg)
  cfg2 = teacher_tiny.get_config()
  cfg2.teacher.inference.edit_surprise = 5.0
  cfg2.teacher.inference.quality_mix = (1.0, 0.5)
  assert TT.config_hash(cfg2) == h                     # the weights do not depend on them
  path = save_reusable_teacher(tmp_path, teacher, sp, cfg)

  def no_training(*a, **k):
    raise AssertionError("retrained although only inference settings changed")
  monkeypatch.setattr(TT, "train_tokenizer", no_training)
  monkeypatch.setattr(TT, "lm_stage", no_training)
  assert TT.run(cfg, str(tmp_path))["report"]["config_hash"] == h   # unchanged: the cached report
  reports = []
  monkeypatch.setattr(TT, "noisy_policies", lambda *a, **k: [])
  monkeypatch.setattr(TT, "build_heldout", lambda *a, **k: {})
  monkeypatch.setattr(TT, "report", lambda c, w, t, o, hd, extra: reports.append(R.settings_of(t)) or
                      {"bars": {}, "inference": R.settings_of(t)})
  out = TT.run(cfg2, str(tmp_path))
  assert reports == [TT.inference_settings(cfg2)] and R.settings_of(out["teacher"])["edit_surprise"] == 5.0
  assert T.read_teacher_config(path)["inference"] == TT.inference_settings(cfg2)  # recorded with it
  assert T.load_teacher(path).rewriter().surprise_threshold == 5.0
  cfg2.teacher.inference.factuality_mix = (0.0, 0.0)
  with pytest.raises(Exception, match="teacher.inference"):
    TT.run(cfg2, str(tmp_path))
