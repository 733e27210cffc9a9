"""Issue 40 item 2: distillation toward the teacher as the `distill` term of the one step
(train/distill.py): the KL against full-vocabulary values, its gradient on a tiny model, the
vocabulary check, the sequence-level branch, and a SIP run with a teacher."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from ml_collections import ConfigDict

from earlyrl_jax.data.tokenizer import ByteTokenizer
from earlyrl_jax.train import distill, objectives, sip
from tests.helpers import tiny_model
from tests.test_gcpo import _groups, _producer


def _full_kl(logq, logp):
  return np.sum(np.exp(logq) * (logq - logp), axis=-1)


def test_topk_kl_is_the_full_kl_at_k_equal_v_and_a_lower_bound_below():
  rng = np.random.default_rng(0)
  logq = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(3, 7, 16)) * 2), axis=-1)
  logp = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(3, 7, 16))), axis=-1)
  full = _full_kl(np.asarray(logq), np.asarray(logp))
  order = jnp.argsort(-logq, axis=-1)
  for k, exact in ((16, True), (4, False)):
    ids = order[..., :k]
    kl = distill.topk_kl(jnp.take_along_axis(logq, ids, -1), jnp.take_along_axis(logp, ids, -1))
    if exact:
      np.testing.assert_allclose(kl, full, rtol=1e-4, atol=1e-5)
    else:
      assert np.all(np.asarray(kl) <= full + 1e-5) and np.all(np.asarray(kl) > 0)
  same = distill.topk_kl(logq[..., :5], logq[..., :5])
  np.testing.assert_allclose(same, 0.0, atol=1e-5)


def _distill_batch(producer, model_teacher, k=0):
  prefixes, cand_ids, j = _groups()
  b = producer._rows(prefixes, None, cand_ids, j)
  L = producer.layout.reference_length
  vals, ids = distill.teacher_topk(model_teacher, {f: jnp.asarray(v) for f, v in b.items()}, L, k)
  b["teacher_logp"], b["teacher_ids"] = np.asarray(vals), np.asarray(ids)
  if producer.objective.needs_reference:
    b["ref_logp"] = np.asarray(producer.objective.reference_logp(tiny_model(seed=1), b, L))
  return b


def test_the_distill_term_is_the_kl_on_the_chosen_tokens_and_its_gradient_moves_toward_the_teacher():
  teacher, policy = tiny_model(seed=3), tiny_model(seed=0)
  p = _producer("dpo", distill_coef=1.0, distill_level="token", distill_on="chosen")
  assert p.objective.coefs == {"nll": 0.0, "dpo": 1.0, "distill": 1.0}
  b = _distill_batch(p, teacher)
  # The mask: exactly the chosen branch's predictions (branch 1 of the DPO row).
  on = b["distill_mask"] > 0
  np.testing.assert_array_equal(on, (b["loss_mask"] > 0) & (b["branch_ids"] == 1))
  # The term against a plain full-vocabulary KL of the two models on the same rows.
  fwd = lambda m: np.asarray(jax.nn.log_softmax(m(jnp.asarray(b["tokens"]), positions=jnp.asarray(b["positions"]),
                                                   segment_ids=jnp.asarray(b["segment_ids"]),
                                                   visible_until=jnp.asarray(b["visible_until"])), -1))
  kl = _full_kl(fwd(teacher), fwd(policy))
  s, n = p.objective(policy, b)[0]["distill"]
  assert float(n) == on.sum()
  np.testing.assert_allclose(float(s), kl[on].sum(), rtol=1e-4)
  # 'candidates': both branches of the row.
  pc = _producer("dpo", distill_coef=1.0, distill_level="token", distill_on="candidates")
  bc = _distill_batch(pc, teacher)
  np.testing.assert_array_equal(bc["distill_mask"] > 0, (bc["loss_mask"] > 0) & (bc["branch_ids"] >= 1))
  # A few steps on the distill term alone bring the policy to the teacher on those tokens.
  opt = nnx.Optimizer(policy, optax.adam(3e-3), wrt=nnx.Param)
  loss = lambda m: (lambda t: t[0] / t[1])(p.objective(m, b)[0]["distill"])
  before = float(loss(policy))

  @nnx.jit
  def step(m, o):
    o.update(m, nnx.grad(loss)(m))

  for _ in range(15):
    step(policy, opt)
  assert float(loss(policy)) < 0.5 * before, (before, float(loss(policy)))


def test_top_k_keeps_k_log_probs_per_position():
  teacher = tiny_model(seed=3)
  p = _producer("pg", distill_coef=1.0, distill_level="token", distill_on="chosen")
  b = _distill_batch(p, teacher, k=8)
  assert b["teacher_ids"].shape[-1] == 8 and np.all(np.diff(b["teacher_logp"], axis=-1) <= 0)
  # pg 'chosen': the judge's chosen candidate (j.chosen = [1, 0]) -> branches 2 and 1.
  chosen_branch = np.array([2, 1])[:, None]
  np.testing.assert_array_equal(b["distill_mask"] > 0, (b["loss_mask"] > 0) & (b["branch_ids"] == chosen_branch))
  s, n = p.objective(tiny_model(seed=0), b)[0]["distill"]
  assert np.isfinite(float(s)) and float(s) > 0


def test_token_level_distillation_needs_one_vocabulary():
  a = ByteTokenizer(259)
  assert distill.vocabulary_mismatch(a, 384, ByteTokenizer(259), 384) is None
  with pytest.raises(ValueError, match=r"^sip.distill_level='token' needs .*model.vocab_size=384 .* 512"):
    distill.check_same_vocabulary(a, 384, ByteTokenizer(259), 512)

  class Shifted(ByteTokenizer):
    def decode(self, ids):
      return super().decode([(i + 1) % 256 for i in ids])
  with pytest.raises(ValueError, match=r"token id \d+ is"):
    distill.check_same_vocabulary(a, 384, Shifted(259), 384)


def test_sequence_level_distillation_trains_the_rewrite_in_its_own_branch():
  prefixes, cand_ids, j = _groups()
  p = _producer("rf_nll", distill_coef=1.0, distill_level="sequence")
  assert p.layout.names == ("best", "distill")
  b = p._rows(prefixes, None, cand_ids, j)   # candidate 1 is the rewrite in this layout
  for g in range(2):
    np.testing.assert_array_equal(b["targets"][g][b["distill_mask"][g] > 0], cand_ids[g][1])
  model = tiny_model()
  s, n = p.objective(model, b)[0]["distill"]
  logp = np.asarray(jax.nn.log_softmax(model(jnp.asarray(b["tokens"]), positions=jnp.asarray(b["positions"]),
                                             segment_ids=jnp.asarray(b["segment_ids"]),
                                             visible_until=jnp.asarray(b["visible_until"])), -1))
  tgt = np.take_along_axis(logp, b["targets"][..., None], -1)[..., 0]
  np.testing.assert_allclose(float(s), -(tgt * b["distill_mask"]).sum(), rtol=1e-5)
  assert float(n) == sum(len(c[1]) for c in cand_ids)


def test_the_default_builds_no_distill_term():
  obj = sip.objective_from_config(ConfigDict({"recipe": "dpo", "beta": 0.1, "lm_coef": 1.0, "coef": 1.0,
                                              "kl_coef": 0.0}))
  assert obj == objectives.Objective("dpo", beta=0.1, lm_coef=1.0, coef=1.0)
  assert "distill" not in obj.coefs and not obj.needs_teacher_logp and not obj.distill_branch


def test_sip_runs_two_steps_with_token_level_distillation(tmp_path):
  """A random teacher on the policy's tokenizer and vocabulary: the teacher's pass, the term in
  the step and its log line."""
  from earlyrl_jax.models import transformer as T
  from earlyrl_jax.teacher import teacher as Tch
  from earlyrl_jax.teacher.prompts import markup as P
  from earlyrl_jax.train import loop
  from tests.helpers import tiny_model_config
  from tests.test_sip import _sip_cfg
  cfg = _sip_cfg(**{"num_steps": 2, "checkpoint.every_steps": 2, "sip.distill_coef": 0.5,
                    "sip.distill_level": "token", "sip.distill_top_k": 16})
  run = loop.setup(cfg, str(tmp_path))
  mc = tiny_model_config(vocab_size=run.model_cfg.vocab_size, max_seq_len=128)
  graphdef, params = nnx.split(T.Transformer(mc, rngs=nnx.Rngs(7)))
  teacher = Tch.Teacher(graphdef, params, run.tokenizer, mc, None, P.PromptLimits(80, 100, 100))
  assert sip.resolve_distill_level(run, teacher) == "token"
  out = loop.train_loop(run, sip.sip_job(run, teacher, None))
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [1, 2]
  assert lines[-1]["distill"] > 0 and np.isfinite(out["metrics"]["loss"])
  # Another vocabulary: 'auto' falls back to the sequence level, 'token' says why it cannot.
  other = Tch.Teacher(graphdef, params, ByteTokenizer(300), mc, None, P.PromptLimits(80, 100, 100))
  assert distill.vocabulary_mismatch(run.tokenizer, run.model_cfg.vocab_size, other.tokenizer, 384)
  run.cfg.sip.distill_level = "auto"
  assert sip.resolve_distill_level(run, other) == "sequence"


def test_distill_settings_are_validated_before_anything_runs():
  from earlyrl_jax import configs
  from tests.test_train import tiny_cfg
  cfg = tiny_cfg(mode="sip", **{"sip.distill_coef": 0.5, "sip.rewrite": "none", "sip.judge": "oracle"})
  with pytest.raises(configs.ConfigError, match=r"^sip\.distill_level: 'auto' may distil at sequence level"):
    configs.validate_fields(cfg)
  cfg.sip.distill_level = "token"
  configs.validate_fields(cfg)
  assert configs.needs_teacher(cfg)   # the teacher's weights: its pass over the rows
  from earlyrl_jax import sip_job
  assert sip_job.needs_bundle(cfg)    # ... loaded into this program (the oracle judges)
  cfg.sip.distill_top_k = -1
  with pytest.raises(configs.ConfigError, match=r"sip\.distill_top_k: must be an integer >= 0"):
    configs.validate_fields(cfg)
