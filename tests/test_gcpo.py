"""Issue 40 item 1: per-group weights of PG advantages and DPO pairs (train/advantages.py):
the signals on constructed groups, their way into the rows and the loss, and a SIP run with each."""
import json

import numpy as np
import pytest
from ml_collections import ConfigDict

from earlyrl_jax.train import advantages as A
from earlyrl_jax.train import objectives, sip
from tests.helpers import tiny_model


def test_cosine_dispersion_is_zero_for_identical_and_high_for_orthogonal_responses():
  same = np.tile(np.array([[0.3, -1.0, 2.0, 0.5]]), (4, 1))             # [C, D]
  ortho = np.eye(4)
  near = same + 0.05 * np.random.default_rng(0).normal(size=same.shape)
  d = A.cosine_dispersion(np.stack([same, 3.0 * same, ortho, near]))   # scale does not matter
  np.testing.assert_allclose(d[:2], 0.0, atol=1e-12)
  np.testing.assert_allclose(d[2], 1 - 1 / np.sqrt(4), rtol=1e-9)     # C orthonormal responses
  assert 0 < d[3] < 0.01 < d[2]
  # A candidate without tokens (a zero embedding) is left out; one left is no dispersion.
  valid = np.array([[True, True, False, False]])
  np.testing.assert_allclose(A.cosine_dispersion(ortho[None], valid), 1 - 1 / np.sqrt(2), rtol=1e-9)
  assert A.cosine_dispersion(ortho[None], np.array([[True, False, False, False]]))[0] == 0


def test_transport_dispersion_sees_token_clouds_that_the_mean_embedding_averages_away():
  rng = np.random.default_rng(1)
  cloud = rng.normal(size=(5, 8))
  same = [[cloud, cloud.copy(), cloud[::-1].copy()]]                      # same tokens, any order
  assert A.transport_dispersion(same)[0] < 1e-3
  apart = [[rng.normal(size=(5, 8)) for _ in range(3)]]
  assert A.transport_dispersion(apart)[0] > 0.05
  # Two responses with the same mean direction but different tokens: cosine of means says 0.
  e = np.eye(8)
  a, b = np.stack([e[0], e[1]]), np.stack([e[0] + e[1], e[0] + e[1]])
  means = np.stack([A.unit(A.unit(a).mean(0)), A.unit(A.unit(b).mean(0))])
  assert A.cosine_dispersion(means[None])[0] < 1e-9
  assert A.transport_dispersion([[a, b]])[0] > 0.05
  assert A.transport_dispersion([[a, np.zeros((0, 8))]])[0] == 0       # one non-empty candidate


def test_gcpo_weights_follow_dispersion_times_reward_spread():
  disp = np.array([0.0, 0.5, 0.5, 1.0])
  rewards = np.array([[0.0, 1.0, 0.5], [0.2, 0.2, 0.2], [0.0, 1.0, 0.5], [0.0, 1.0, 0.5]])
  w = A.gcpo_weights(disp, rewards, strength=1.0, cap=10.0)
  assert w[0] == 0 and w[1] == 0                    # no semantic spread; no reward spread
  assert w[3] == pytest.approx(2 * w[2]) and w.mean() == pytest.approx(1.0)
  np.testing.assert_array_equal(A.gcpo_weights(disp, rewards, strength=0.0), 1.0)   # λ = 0: GRPO
  assert A.gcpo_weights(disp, rewards, strength=1.0, cap=2.0).max() == 2.0           # capped
  np.testing.assert_array_equal(A.gcpo_weights(np.zeros(4), rewards), 1.0)  # nothing to tell apart
  assert A.entropy_weights(np.array([1.0, 3.0]))[1] == pytest.approx(1.5)


def _producer(recipe="pg", C=3, **sip_fields):
  from types import SimpleNamespace
  producer = sip.SIPProducer.__new__(sip.SIPProducer)
  producer.tok = SimpleNamespace(pad_id=0)
  producer.s = ConfigDict({"rf_threshold": 0.0, "rf_fallback": "skip", **sip_fields})
  producer.objective = sip.objective_from_config(ConfigDict(
      {"recipe": recipe, "beta": 0.1, "lm_coef": 0.0, "coef": 1.0, "kl_coef": 0.0, **sip_fields}))
  producer.layout = producer.objective.layout(prefix_len=4, cand_len=3, suffix_len=3, num_candidates=C)
  producer.judge, producer.lm_target, producer.C, producer.K = None, "window", C, C - 1
  producer.with_rewrite = False
  return producer


def _groups():
  from earlyrl_jax.teacher.tournament import Judgement
  prefixes = [np.array([5, 6, 7]), np.array([8, 9])]
  cand_ids = [[np.array([20, 21]), np.array([40, 41, 42]), np.array([50])],
              [np.array([30]), np.array([60, 61]), np.array([70, 71])]]
  rewards = np.array([[0.0, 1.0, 0.5], [1.0, 0.0, 0.5]])
  j = Judgement(rewards=rewards, per_axis={}, prefs={}, calls=0, position_consistency=1.0,
                chosen=np.array([1, 0]), rejected=np.array([0, 1]), all_tied=np.zeros(2, bool))
  return prefixes, cand_ids, j


def test_the_candidates_tokens_are_where_the_embeddings_are_read():
  prefixes, cand_ids, _ = _groups()
  lay = objectives.Layout(4, 3, ("cand0", "cand1", "cand2"))
  rows = objectives.window_rows(lay, prefixes, cand_ids, None, pad_id=0)
  tok = A.candidate_token_mask(rows["loss_mask"], rows["branch_ids"])
  for g in range(2):
    for c in range(3):
      np.testing.assert_array_equal(rows["tokens"][g][tok[g] & (rows["branch_ids"][g] == c + 1)], cand_ids[g][c])
  # Hidden states equal on every token of a group: no dispersion; a group whose candidates sit on
  # orthogonal states: dispersion.
  h = np.zeros(rows["tokens"].shape + (3,))
  h[0, :, 0] = 1.0
  for c in range(3):
    h[1, rows["branch_ids"][1] == c + 1, c] = 1.0
  sig = A.group_signals(h, np.ones(rows["tokens"].shape), rows, 3, dispersion="cosine")
  np.testing.assert_allclose(sig["dispersion"], [0.0, 1 - 1 / np.sqrt(3)], atol=1e-9)
  np.testing.assert_array_equal(sig["tokens"], [[2, 3, 1], [1, 2, 2]])
  np.testing.assert_allclose(sig["entropy"], 1.0)
  tr = A.group_signals(h, np.ones(rows["tokens"].shape), rows, 3, dispersion="transport")["dispersion"]
  assert tr[0] < 1e-6 < 0.1 < tr[1]


def test_weights_change_the_pg_and_dpo_losses_and_the_defaults_change_nothing():
  model = tiny_model()
  prefixes, cand_ids, j = _groups()
  weights = np.array([2.0, 0.25], np.float32)
  p = _producer("pg")
  plain = p._rows(prefixes, None, cand_ids, j)
  weighted = p._rows(prefixes, None, cand_ids, j, weights)
  np.testing.assert_allclose(weighted["advantage"], plain["advantage"] * weights[:, None])
  pg = lambda b: float(p.objective(model, b)[0]["pg"][0])
  assert abs(pg(weighted) - pg(plain)) > 1e-4
  assert pg(p._rows(prefixes, None, cand_ids, j, np.ones(2, np.float32))) == pytest.approx(pg(plain))
  # DPO: sip.pair_weight puts the group's weight on its pair's loss (same denominator: pairs).
  from tests.test_sip import _window_batch
  ref = tiny_model(seed=1)
  d = _producer("dpo", pair_weight="gcpo")
  assert d.objective.pair_weighted and not _producer("dpo").objective.pair_weighted
  b = d._rows(prefixes, None, cand_ids, j, weights)
  np.testing.assert_array_equal(b["pair_weight"], weights)
  b["ref_logp"] = np.asarray(d.objective.reference_logp(ref, b, d.layout.reference_length))
  (s_w, n_w) = d.objective(model, b)[0]["dpo"]
  (s_0, n_0) = objectives.Objective("dpo", lm_coef=0.0)(model, b)[0]["dpo"]
  assert float(n_w) == float(n_0) == 2 and abs(float(s_w) - float(s_0)) > 1e-4
  # Defaults: no weight field in the spec, no signal pass, the producer asks for no weights.
  spec = sip.batch_spec(_producer("dpo"), 2)
  assert "pair_weight" not in spec and "distill_mask" not in spec
  for dflt in (_producer("pg", advantage="group"), _producer("dpo", pair_weight="none")):
    dflt._extensions_init(None, dflt.objective, None)
    assert dflt.weighting == "group" and not hasattr(dflt, "signal_pass") and dflt.teacher_pass is None
    assert dflt._group_weights(None, prefixes, cand_ids, j, {}) is None


def test_options_are_validated_against_the_recipe():
  from earlyrl_jax import configs
  from tests.test_train import tiny_cfg
  cfg = tiny_cfg(mode="sip")
  configs.validate_fields(cfg)
  cfg.sip.advantage = "gcpo"   # the config's recipe is dpo
  with pytest.raises(configs.ConfigError, match=r"sip\.advantage: 'gcpo' weights policy-gradient"):
    configs.validate_fields(cfg)
  cfg.sip.recipe = "pg"
  configs.validate_fields(cfg)
  cfg.sip.pair_weight = "gcpo"
  with pytest.raises(configs.ConfigError, match=r"sip\.pair_weight: .* needs sip.recipe='dpo'"):
    configs.validate_fields(cfg)


@pytest.mark.parametrize("fields", [
    {"sip.recipe": "pg", "sip.advantage": "gcpo", "sip.gcpo_dispersion": "transport"},
    {"sip.recipe": "dpo", "sip.pair_weight": "token_entropy"}])
def test_sip_runs_two_steps_with_group_weights(tmp_path, fields):
  from earlyrl_jax import sip_job
  from tests.test_sip import _sip_cfg
  cfg = _sip_cfg(**{"num_steps": 2, "checkpoint.every_steps": 2, **fields})
  out = sip_job.run(cfg, str(tmp_path))
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [1, 2]
  last = lines[-1]
  for key in ("gcpo/dispersion_mean", "gcpo/weight_max", "gcpo/entropy_mean", "time/group_weights"):
    assert key in last and np.isfinite(last[key]), key
  assert last["gcpo/weight_max"] <= 4.0 and np.isfinite(out["metrics"]["loss"])


def test_report_rows_set_their_options_and_old_runs_keep_their_fingerprint():
  from earlyrl_jax.tools import report
  from tests.test_report import _cfg
  cfg = _cfg()
  sub = lambda m: report.run_config(cfg, "/w", m, 0, base_dir="/w/runs/base-s0", tokenizer_path="/w/tok")
  assert sub("sip_pg_gcpo").sip.advantage == "gcpo" and sub("sip_pg_gcpo").sip.recipe == "pg"
  assert sub("sip_pg_entropy").sip.advantage == "token_entropy"
  assert sub("sip_dpo_gcpo").sip.pair_weight == "gcpo" and sub("sip_dpo_distill").sip.distill_coef > 0
  # A run made before these fields existed (its config without them) stays reusable.
  old = sub("sip_dpo")
  new_fields = set(report._EXTENSIONS_OFF)
  before = old.copy_and_resolve_references()
  with before.unlocked() if hasattr(before, "unlocked") else _nothing():
    for k in new_fields:
      del before.sip[k]
  assert report.fingerprint(old, "sip_dpo", None) == report.fingerprint(before, "sip_dpo", None)
  assert "advantage" in report.fingerprint(sub("sip_pg_gcpo"), "sip_pg_gcpo", None)["sip"]


def _nothing():
  import contextlib
  return contextlib.nullcontext()
