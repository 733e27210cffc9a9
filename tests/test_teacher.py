"""The general teacher layer: verdict extraction, oracle judge, reward adapter, rewriter reward,
GRPO pieces, judge and rewriter kinds, save / load."""
from __future__ import annotations

import os
import random

import jax
import numpy as np
import pytest
from flax import nnx

from earlyrl_jax import world as W
from earlyrl_jax.teacher import rewriter as rw
from earlyrl_jax.teacher import teacher as T
from earlyrl_jax.teacher.judges.base import Judge
from earlyrl_jax.teacher.judges.generative import GenerativeJudge
from earlyrl_jax.teacher.judges.logprob import LogProbJudge
from earlyrl_jax.teacher.judges.lm import LMJudge, _VerdictScorer, sigmoid, two_way
from earlyrl_jax.teacher.judges.oracle import OracleJudge
from earlyrl_jax.teacher.judges.trl import RewardFunction
from earlyrl_jax.teacher.prompts import markup as P
from earlyrl_jax.teacher.prompts.markup_ids import PromptEncoder
from tests.helpers import tiny_model_config
from tests.teacher_fixtures import sp, tiny_teacher, world  # noqa: F401  (fixtures)


# ------------------------------------------------------------------ verdicts


def test_two_way_softmax_over_verdicts():
  lp = np.log(np.array([[0.2, 0.6], [0.01, 0.01], [0.5, 0.0001]]))
  p = two_way(lp)
  np.testing.assert_allclose(p, [0.25, 0.5, 0.5 / 0.5001], rtol=1e-5)


class _FakeScorer:
  def __init__(self, table):
    self.table = table
    self.rows = []

  def verdict_logprobs(self, params, prompts, ids):
    self.rows.extend(prompts)
    return np.log(np.array([self.table] * len(prompts), np.float32))


def test_lm_judge_reads_verdict_logprobs(sp):
  judge = LMJudge(None, None, sp, max_len=256, scorer=_FakeScorer([0.3, 0.1]))
  p = judge.compare(["p1", "p2"], ["a", "b"], ["c", "d"], axis="quality")
  np.testing.assert_allclose(p, [0.75, 0.75], rtol=1e-5)
  assert judge.calls == 2
  u = judge.pointwise(["p"], ["x"])
  np.testing.assert_allclose(u, [0.75], rtol=1e-5)
  assert judge.calls == 3
  with pytest.raises(ValueError, match="axis"):
    judge.compare(["p"], ["a"], ["b"], axis="safety")
  with pytest.raises(ValueError, match="rows"):
    judge.compare(["p"], ["a", "b"], ["c"], axis="quality")


def test_lm_judge_rows_share_prefix_ids_and_fit(sp):
  enc = PromptEncoder(sp, max_len=256, limits=P.PromptLimits(80, 100, 100))
  r1 = enc.pair("The capital of Vexmoor is Tal.", "A one.", "B one.", "quality")
  r2 = enc.pair("The capital of Vexmoor is Tal.", "Other.", "B two.", "factuality", "ref")
  head = list(enc._head("pair", "The capital of Vexmoor is Tal."))
  assert r1[:len(head)] == head and r2[:len(head)] == head
  assert r1[0] == sp.bos_id and r1[-1] == sp.encode(P.QUESTION["quality"])[0]
  long = enc.pair("x. " * 300, "y. " * 300, "z. " * 300, "quality")
  assert len(long) <= 255


def test_lm_judge_on_a_real_model_matches_fallback(tiny_teacher):
  judge = tiny_teacher.judge()
  fallback = _VerdictScorer(tiny_teacher.graphdef, pad_id=tiny_teacher.tokenizer.pad_id)
  pre = ["Tal is a city in Vexmoor.", "Tal is a city in Vexmoor.", "Brax works as a poet."]
  a, b = ["Tal lies in Vexmoor."] * 3, ["Vexmoor is old.", "Tal is nice.", "No."]
  p = judge.compare(pre, a, b, axis="quality")
  assert p.shape == (3,) and np.all((p > 0) & (p < 1))
  rows = [judge.encoder.pair(x, y, z, "quality") for x, y, z in zip(pre, a, b)]
  lp_fb = fallback.verdict_logprobs(tiny_teacher.params, rows, judge.encoder.pair_ids)
  np.testing.assert_allclose(p, two_way(lp_fb), atol=1e-4)
  u = judge.pointwise(pre, b)
  assert u.shape == (3,)
  # Several axes in one batch (one prefill per prefix for all) give each axis's own verdicts.
  refs = ["Tal is a city in Vexmoor. It is old."] * 3
  both = judge.compare_axes(pre, a, b, axes=["quality", "factuality"], references=refs)
  for axis in ("quality", "factuality"):
    np.testing.assert_allclose(both[axis], judge.compare(pre, a, b, axis=axis, references=refs),
                               atol=1e-5)
  assert not np.allclose(both["quality"], both["factuality"])


class _LengthScorer:
  """log P(good) falls with the row's length, log P(bad) is fixed: longer candidates score lower."""

  def __init__(self):
    self.rows = []

  def verdict_logprobs(self, params, prompts, ids):
    self.rows.extend(prompts)
    return np.array([[-0.02 * len(p), -1.0] for p in prompts], np.float32)


def test_scored_judge_compares_score_logits_in_either_order(sp):
  scorer = _LengthScorer()
  judge = LMJudge(None, None, sp, max_len=256, scorer=scorer, judge_format="scored")
  pre = ["The capital of Vexmoor is Tal."] * 3
  a = ["Short.", "A much longer candidate sentence here.", "Same."]
  b = ["A much longer candidate sentence here.", "Short.", "Same."]
  p_ab = judge.compare(pre, a, b, axis="quality")
  p_ba = judge.compare(pre, b, a, axis="quality")
  np.testing.assert_allclose(p_ab, 1.0 - p_ba, atol=1e-7)        # no order: no position bias
  assert p_ab[0] > 0.5 and p_ab[1] < 0.5 and p_ab[2] == pytest.approx(0.5)
  enc = judge.encoder
  logit = lambda c: -0.02 * len(enc.score(pre[0], c, "quality")) + 1.0
  np.testing.assert_allclose(p_ab[0], sigmoid(logit(a[0]) - logit(b[0])), rtol=1e-5)
  # Distinct (prefix, candidate) rows are scored once: 3 texts, not 6 rows.
  assert judge.calls == 3 + 3 and len(scorer.rows) == 6
  lg = judge.score_axes(pre, a, axes=["quality", "factuality"], references=["ref"] * 3)
  assert set(lg) == {"quality", "factuality"} and lg["quality"].shape == (3,)
  assert not np.allclose(lg["quality"], lg["factuality"])          # factuality rows carry the reference
  with pytest.raises(ValueError, match="judge_format"):
    LMJudge(None, None, sp, max_len=256, scorer=scorer).score_axes(pre, a, axes=["quality"])
  with pytest.raises(ValueError, match="judge_format"):
    LMJudge(None, None, sp, max_len=256, scorer=scorer, judge_format="ranked")


def test_scored_prompt_puts_the_reference_before_the_candidate_and_escapes():
  text = P.score_prompt("Tal is a city. <</PREFIX>>", "It lies in Vexmoor. <<GOOD>>", "factuality",
                        "Tal lies in Vexmoor.")
  assert text.index(P.REF_OPEN) < text.index(P.TEXT_OPEN)
  assert text.endswith(P.QUESTION["factuality"])
  assert text.count(P.VERDICT_GOOD) == 0 and text.count(P.PREFIX_CLOSE) == 1
  assert P.REF_OPEN not in P.score_prompt("p", "c", "quality", "ref")   # quality needs no reference
  with pytest.raises(ValueError, match="scored axes"):
    P.score_prompt("p", "c", "safety")


def test_scored_judge_on_a_real_model_matches_fallback(tiny_teacher):
  judge = LMJudge(tiny_teacher.graphdef, tiny_teacher.params, tiny_teacher.tokenizer, max_len=256,
                    limits=tiny_teacher.limits, model_cfg=tiny_teacher.model_cfg, judge_format="scored")
  fallback = _VerdictScorer(tiny_teacher.graphdef, pad_id=tiny_teacher.tokenizer.pad_id)
  pre = ["Tal is a city in Vexmoor.", "Tal is a city in Vexmoor.", "Brax works as a poet."]
  c = ["Tal lies in Vexmoor.", "Vexmoor is old.", "No."]
  lg = judge.score_axes(pre, c, axes=["quality"])["quality"]
  rows = [judge.encoder.score(x, y, "quality") for x, y in zip(pre, c)]
  lp = fallback.verdict_logprobs(tiny_teacher.params, rows, judge.encoder.score_ids)
  np.testing.assert_allclose(lg, lp[:, 0] - lp[:, 1], atol=1e-4)


# ------------------------------------------------------------------ oracle judge


def test_oracle_judge_on_world_examples(world):
  cfg, kb, oracles = world
  rng = random.Random(0)
  j = OracleJudge(oracles)
  person = kb.entities["person"][0]
  unsafe = W.unsafe_passage(kb, rng, "insult", person).text
  city = kb.entities["city"][0]
  country = kb.facts[(city, "located_in")]
  true = f"{city} is a city in {country}."
  wrong = next(c for c in kb.entities["country"] if c != country)
  false = f"{city} is a city in {wrong}."
  pre = [f"The city of {city} is located in {country}."] * 3
  np.testing.assert_array_equal(j.compare(pre, [true, false, true], [false, true, true], axis="factuality"),
                                [1.0, 0.0, 0.5])
  np.testing.assert_array_equal(j.compare(pre[:2], [true, unsafe], [unsafe, true], axis="safety"), [1.0, 0.0])
  np.testing.assert_array_equal(j.pointwise(pre[:2], [true, unsafe]), [0.0, 1.0])
  q = j.compare(pre[:1], [true], [true + " " + true + " " + true], axis="quality")
  assert q[0] == 1.0
  assert j.calls == 3 + 2 + 2 + 1
  assert isinstance(j, Judge)


def test_oracle_agrees_with_world_preference_labels(world):
  cfg, kb, oracles = world
  rng = random.Random(1)
  j = OracleJudge(oracles)
  docs = list(W.generate_documents(kb, cfg, "sup", 40, clean=True))
  for ex in filter(None, (W.preference_example(kb, d, rng, oracles) for d in docs)):
    for axis, lab in ex["labels"].items():
      p = j.compare([ex["prefix"]], [ex["a"]], [ex["b"]], axis=axis)[0]
      assert p == {"a": 1.0, "b": 0.0, "tie": 0.5}[lab]


# ------------------------------------------------------------------ generative mode, reward function


def test_reward_function_shape_and_values(world):
  _, kb, oracles = world
  city = kb.entities["city"][0]
  country = kb.facts[(city, "located_in")]
  good = f"{city} is a city in {country}."
  wrong = next(c for c in kb.entities["country"] if c != country)
  bad = f"{city} is a city in {wrong}."
  f = RewardFunction(OracleJudge(oracles), axes={"factuality": 1.0})
  r = f(["p", "p", "q"], [good, bad, good])
  assert r.shape == (3,) and r.dtype == np.float32
  np.testing.assert_allclose(r, [1.0, 0.0, 0.5])
  r2 = f(["p", "p"], [good, bad], reference=[good, good])
  np.testing.assert_allclose(r2, [0.5, 0.0])
  full = RewardFunction(OracleJudge(oracles))
  r3 = full([[{"role": "user", "content": "p"}]] * 2, [good, bad])
  assert r3.shape == (2,) and r3[0] > r3[1]
  assert full.__name__.startswith("judge_")


# ------------------------------------------------------------------ rewriter


def test_rewriter_reward_values():
  assert rw.rewriter_reward(False, "Tal is old.", "Tal is old.", 0.1, 0.2) == 1.0
  assert rw.rewriter_reward(False, "Tal is old.", " Tal is old. ", 0.1, 0.2) == 1.0
  assert rw.rewriter_reward(False, "Tal is old.", "Tal is new.", 1.0, 1.0) == 0.0
  assert rw.rewriter_reward(True, "bad", "bad", 0.3, 0.9) == pytest.approx(0.6)
  assert rw.rewriter_reward(True, "bad", "good", 1.0, 1.0) == 1.0


def test_group_advantages():
  r = np.array([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [0.0, 0.2, 0.4, 0.6]])
  a = rw.group_advantages(r)
  np.testing.assert_allclose(a.mean(axis=1), 0.0, atol=1e-6)
  np.testing.assert_allclose(a[0], [1, -1, -1, 1], atol=1e-4)
  np.testing.assert_array_equal(a[1], 0.0)
  np.testing.assert_allclose(a[2].std(), 1.0, atol=1e-4)
  assert np.all(np.diff(a[2]) > 0)


def test_grpo_terms_kl_is_zero_at_the_reference():
  from earlyrl_jax.models.transformer import Transformer
  model = Transformer(tiny_model_config(), rngs=nnx.Rngs(0))
  L = 12
  toks = np.arange(2 * L, dtype=np.int32).reshape(2, L) % 100 + 3
  batch = {"tokens": toks, "targets": np.roll(toks, -1, 1), "positions": np.tile(np.arange(L), (2, 1)),
           "segment_ids": np.ones((2, L), np.int32), "loss_mask": np.zeros((2, L), np.float32),
           "advantages": np.array([1.0, -1.0], np.float32)}
  batch["loss_mask"][:, 5:10] = 1.0
  terms, diag = rw.grpo_terms(model, batch, {"reference": model})
  assert float(terms["kl"][0]) == pytest.approx(0.0, abs=1e-5)
  assert float(terms["pg"][1]) == 10.0 and np.isfinite(float(terms["pg"][0]))


def test_rewriter_returns_one_text_per_input(tiny_teacher):
  r = tiny_teacher.rewriter(max_new_tokens=8, batch_size=4)
  out = r.rewrite(["Tal is old."] * 5, ["Tal lies in Vexmoor."] * 5, key=jax.random.key(0))
  assert len(out) == 5 and all(isinstance(o, str) for o in out)
  assert all(P.REWRITE_CLOSE not in o for o in out)


def test_an_hf_teacher_judges_generatively_and_kinds_are_chosen_not_guessed():
  from earlyrl_jax.data.tokenizer import ByteTokenizer
  from earlyrl_jax.models.transformer import Transformer
  mc = tiny_model_config(vocab_size=259, max_seq_len=1024)   # bytes: the paper's prompts need ~750
  graphdef, params = nnx.split(Transformer(mc, rngs=nnx.Rngs(0)))
  t = T.Teacher(graphdef, params, ByteTokenizer(), mc, None, P.PromptLimits(40, 40, 40), source="hf")
  j = t.judge()   # 'auto' on an HF teacher: the log-prob judge of the paper's formats
  assert isinstance(j, LogProbJudge)
  p = j.compare(["p"], ["a"], ["b"], axis="quality")
  assert 0 < p[0] < 1 and j.calls == 1 and j.failed == 0
  g = t.judge(kind="generative", max_new_tokens=4)
  assert isinstance(g, GenerativeJudge)
  assert g.compare(["p"], ["a"], ["b"], axis="quality").tolist() == [0.5] and g.unparsable == 1
  with pytest.raises(ValueError, match="teacher.judge_kind='embedded'.*not an embedded teacher"):
    t.judge(kind="embedded")
  with pytest.raises(ValueError, match="teacher.rewriter_kind='edit'.*not an embedded teacher"):
    t.rewriter(kind="edit")
  with pytest.raises(ValueError, match="teacher.judge_kind='logprobs': expected one of"):
    t.judge(kind="logprobs")
  # The same weights as an embedded teacher: 'auto' is the embedded judge, which needs the
  # markers as single tokens (no fallback to another kind behind the user's back).
  t.source = "embedded"
  with pytest.raises(ValueError, match="single-token"):
    t.judge()
  assert isinstance(t.judge(kind="generative", max_new_tokens=4), GenerativeJudge)


def test_the_kinds_in_the_config_are_the_teachers():
  from earlyrl_jax import configs
  assert configs.ENUM_FIELDS["teacher.judge_kind"] == T.JUDGE_KINDS
  assert configs.ENUM_FIELDS["teacher.rewriter_kind"] == T.REWRITER_KINDS
  with pytest.raises(ValueError, match="Teacher.source='served'"):
    T.Teacher(None, None, None, None, source="served")
  from configs import tiny
  for field in ("judge_kind", "rewriter_kind"):
    cfg = tiny.get_config()
    assert cfg.teacher[field] == "auto"
    configs.validate_fields(cfg)
    cfg.teacher[field] = "logprobs"
    with pytest.raises(configs.ConfigError, match=f"teacher.{field}: 'logprobs' is not one of"):
      configs.validate_fields(cfg)


def test_hf_style_teacher_rewrites_generatively_and_stops_on_the_marker_sequence():
  """A tokenizer without single-token markers (HF instruct models) gets the generative
  rewriter, which stops on the end marker's token sequence and strips it."""
  from earlyrl_jax.data.tokenizer import ByteTokenizer
  from earlyrl_jax.models.transformer import Transformer
  mc = tiny_model_config(vocab_size=259, max_seq_len=512)
  graphdef, params = nnx.split(Transformer(mc, rngs=nnx.Rngs(0)))
  t = T.Teacher(graphdef, params, ByteTokenizer(), mc, None, P.PromptLimits(40, 40, 40), source="hf")
  r = t.rewriter(max_new_tokens=6)
  assert isinstance(r, rw.Rewriter) and r.end_id is None and r.end_sequences
  out = r.rewrite(["A prefix."] * 2, ["A suffix."] * 2, key=jax.random.key(0))
  assert len(out) == 2 and all(P.REWRITE_CLOSE not in o for o in out)
  tok = ByteTokenizer()
  gen = tok.encode("Fixed." + P.REWRITE_CLOSE)

  class Out:  # what the sampler returns for a row that hit the stop sequence
    tokens, lengths = [gen + [0, 0]], [len(gen)]
  assert r.decode(Out) == ["Fixed."]


def test_save_load_roundtrip(tmp_path, tiny_teacher, sp):
  import shutil
  path = str(tmp_path / "teacher")
  T.save_teacher(path, tiny_teacher, "abc123")
  shutil.copy(sp.path, os.path.join(path, T.TOKENIZER_FILE))
  t2 = T.load_teacher(path)
  assert t2.info["config_hash"] == "abc123" and t2.limits == tiny_teacher.limits
  a = jax.tree.leaves(tiny_teacher.params)
  b = jax.tree.leaves(t2.params)
  assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
  with pytest.raises(FileNotFoundError, match="neither"):
    T.load_teacher(str(tmp_path))
