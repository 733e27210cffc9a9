"""Self-improving pretraining: objectives against hand-computed values, the producer's rows,
the step on 8 devices, and a SIP run end to end with resume."""
import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from earlyrl_jax.parallel import mesh as mesh_lib
from earlyrl_jax.train import losses, objectives, sip
from earlyrl_jax.train import state as state_lib
from earlyrl_jax.train import steps as steps_lib
from tests.helpers import cpu_devices, tiny_model, tiny_model_config

OPT = ConfigDict(dict(learning_rate=1e-2, warmup_steps=0, min_lr_ratio=0.1, b1=0.9, b2=0.95,
                      eps=1e-4, weight_decay=0.0, grad_clip=0.0))


def _rows(rng, n, prefix_len=5, cand_len=4, vocab=128):
  prefixes = [rng.integers(3, vocab, prefix_len) for _ in range(n)]
  cands = [rng.integers(3, vocab, rng.integers(1, cand_len + 1)) for _ in range(n)]
  return prefixes, cands, sip.candidate_rows(prefixes, cands, prefix_len + cand_len, pad_id=0)


def _manual_logprob(model, prefix, cand):
  """Σ log π(cand | prefix) by a plain forward pass over the concatenation."""
  toks = np.concatenate([prefix, cand])[None]
  logp = jax.nn.log_softmax(model(jnp.asarray(toks))[0], axis=-1)
  return float(sum(logp[len(prefix) - 1 + t, c] for t, c in enumerate(cand)))


def test_the_judge_sees_every_candidate_up_to_its_last_sentence_end():
  """A window's cut is no defect: an original cut mid-sentence and a rollout that ended early
  are judged on their complete sentences (training rows keep the whole candidate)."""
  cands = [["Tal lies in Vexmoor. The capital of Vex", "Tal is old.", "no sentence end at all"],
           ["Q: Where is Tal?\nA: Tal lies in", "Tal is a city in Vexmoor.  "]]
  assert sip.judged_texts(cands) == [["Tal lies in Vexmoor.", "Tal is old.", "no sentence end at all"],
                                     ["Q: Where is Tal?", "Tal is a city in Vexmoor."]]


def test_candidate_rows_mask_exactly_the_candidate_tokens():
  rng = np.random.default_rng(0)
  prefixes, cands, rows = _rows(rng, 3)
  for r, (p, c) in enumerate(zip(prefixes, cands)):
    assert rows["loss_mask"][r].sum() == len(c)
    masked_targets = rows["targets"][r][rows["loss_mask"][r] > 0]
    np.testing.assert_array_equal(masked_targets, c)


def test_sequence_logprobs_match_a_plain_forward_pass():
  model = tiny_model()
  prefixes, cands, rows = _rows(np.random.default_rng(1), 4)
  s, n, _ = losses.sequence_logprobs(model, rows)
  for r in range(4):
    assert n[r] == len(cands[r])
    np.testing.assert_allclose(s[r], _manual_logprob(model, prefixes[r], cands[r]), rtol=1e-5, atol=1e-5)


def test_dpo_term_is_the_published_formula():
  policy, reference = tiny_model(seed=0), tiny_model(seed=1)
  rng = np.random.default_rng(2)
  prefixes, chosen, c_rows = _rows(rng, 3)
  _, rejected, r_rows = _rows(rng, 3)
  batch = {**{f"chosen_{k}": v for k, v in c_rows.items()}, **{f"rejected_{k}": v for k, v in r_rows.items()}}
  # rejected rows use their own prefixes; recompute them for the manual check
  r_prefixes = [r_rows["tokens"][i][:int(r_rows["segment_ids"][i].sum()) - len(rejected[i])] for i in range(3)]
  batch["pair_mask"] = np.array([1.0, 1.0, 0.0], np.float32)
  beta = 0.3
  obj = objectives.Objective("dpo", beta=beta, lm_coef=0.0)
  terms, diags = obj(policy, batch, {"reference": reference})
  expected, right = [], 0
  for i in range(2):
    pc, pr = _manual_logprob(policy, prefixes[i], chosen[i]), _manual_logprob(policy, r_prefixes[i], rejected[i])
    rc, rr = _manual_logprob(reference, prefixes[i], chosen[i]), _manual_logprob(reference, r_prefixes[i], rejected[i])
    z = beta * ((pc - rc) - (pr - rr))
    expected.append(math.log1p(math.exp(-z)))  # -log sigmoid(z)
    right += z > 0                              # the implicit reward prefers the chosen one
  s, d = terms["dpo"]
  assert float(d) == 2.0  # the masked pair does not count
  np.testing.assert_allclose(float(s), sum(expected), rtol=1e-4)
  acc = diags["rewards/accuracy"]
  assert float(acc[0]) == right and float(acc[1]) == 2.0
  # Swapping chosen and rejected flips every unmasked pair's verdict.
  swapped = {**{f"chosen_{k}": v for k, v in r_rows.items()}, **{f"rejected_{k}": v for k, v in c_rows.items()},
             "pair_mask": batch["pair_mask"]}
  assert float(obj(policy, swapped, {"reference": reference})[1]["rewards/accuracy"][0]) == 2 - right


def test_rf_nll_and_pg_terms_by_hand():
  model = tiny_model()
  prefixes, cands, rows = _rows(np.random.default_rng(3), 4)
  manual = np.array([_manual_logprob(model, p, c) for p, c in zip(prefixes, cands)])
  w = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
  terms, _ = objectives.Objective("rf_nll", lm_coef=0.0)(model, {**{f"best_{k}": v for k, v in rows.items()},
                                                              "best_weight": w}, {})
  s, d = terms["rf_nll"]
  np.testing.assert_allclose(float(s), -(manual * w).sum(), rtol=1e-5)
  assert float(d) == sum(len(c) for c, wi in zip(cands, w) if wi)
  adv = np.array([1.5, -0.5, 0.25, -1.25], np.float32)
  terms, _ = objectives.Objective("pg", lm_coef=0.0)(model, {**{f"cand_{k}": v for k, v in rows.items()},
                                                          "advantage": adv, "is_rollout": np.ones(4, np.float32)}, {})
  s, d = terms["pg"]
  np.testing.assert_allclose(float(s), -(adv * manual).sum(), rtol=1e-5)
  assert float(d) == sum(len(c) for c in cands)  # whole-batch token normalisation


def test_group_advantages_are_normalised_per_group():
  r = np.array([[1.0, 0.0, 0.5], [0.2, 0.2, 0.2]])
  a = sip.group_advantages(r)
  np.testing.assert_allclose(a[0].mean(), 0.0, atol=1e-6)
  np.testing.assert_allclose(a[0].std(), 1.0, atol=1e-4)
  np.testing.assert_allclose(a[1], 0.0, atol=1e-9)  # a tied group gives no signal


def test_combine_refuses_a_term_without_coefficient():
  with pytest.raises(KeyError, match="no coefficient"):
    steps_lib.combine({"dpo": (jnp.ones(()), jnp.ones(()))}, {"nll": 1.0})


def _dpo_batch(G=8, L=12, seed=0):
  rng = np.random.default_rng(seed)
  batch = {}
  for part in ("lm_", "chosen_", "rejected_"):
    p = [rng.integers(3, 128, 6) for _ in range(G)]
    c = [rng.integers(3, 128, rng.integers(2, 7)) for _ in range(G)]
    batch.update({part + k: v for k, v in sip.candidate_rows(p, c, L, 0).items()})
  batch["pair_mask"] = (rng.random(G) > 0.25).astype(np.float32)
  return batch


def _dpo_step(shape, devices, batch, grad_accum=1):
  mc = tiny_model_config()
  mesh = mesh_lib.make_mesh(shape, devices)
  tx = state_lib.make_optimizer(OPT, 10)
  graphdef, state, shardings = state_lib.init_train_state(mc, tx, mesh, seed=3)
  _, ref_state, _ = state_lib.init_train_state(mc, tx, mesh, seed=4)
  obj = objectives.Objective("dpo", beta=0.5, lm_coef=0.7)
  step = steps_lib.make_train_step(graphdef, tx, state_lib.lr_schedule(OPT, 10), mesh, shardings,
                                   steps_lib.spec_of(batch), loss_fn=obj, coefs=obj.coefs,
                                   frozen_graphdefs={"reference": graphdef},
                                   frozen_shardings={"reference": shardings.params},
                                   grad_accum_steps=grad_accum)
  with jax.set_mesh(mesh):
    new, metrics = step(state, mesh_lib.shard_batch(batch, mesh), {"reference": ref_state.params})
  return jax.device_get(metrics), jax.device_get(new.params)


def test_dpo_step_on_8_devices_and_with_accumulation_matches_one_device():
  batch = _dpo_batch()
  m1, p1 = _dpo_step((1, 1, 1), cpu_devices(1), batch)
  assert m1["dpo/count"] == batch["pair_mask"].sum()
  np.testing.assert_allclose(m1["loss"], 0.7 * m1["nll"] + m1["dpo"], rtol=1e-6)
  for shape, accum in (((2, 2, 2), 1), ((2, 1, 1), 4)):
    devs = cpu_devices(int(np.prod(shape)))
    m, p = _dpo_step(shape, devs, batch, grad_accum=accum)
    np.testing.assert_allclose(m["loss"], m1["loss"], rtol=1e-5)
    for k in ("dpo", "nll", "rewards/margin", "rewards/accuracy"):
      np.testing.assert_allclose(m[k], m1[k], rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p1)):
      np.testing.assert_allclose(a, b, atol=3e-6, rtol=1e-5)


def _sip_cfg(**kw):
  from tests.test_train import tiny_cfg
  base = {"mode": "sip", "num_steps": 6, "log_every_steps": 1, "checkpoint.every_steps": 2,
          "sip.judge": "oracle", "sip.rewrite": "none", "sip.num_rollouts": 2,
          "data.batch_size": 8, "data.prefix_len": 40, "data.suffix_len": 24, "data.seq_len": 64}
  base.update(kw)
  return tiny_cfg(**base)


@pytest.mark.slow
def test_sip_runs_logs_the_curriculum_signature_and_resumes_exactly(tmp_path):
  cfg = _sip_cfg()
  full = sip.run(cfg, str(tmp_path / "full"))
  lines = [json.loads(l) for l in open(tmp_path / "full" / "metrics.jsonl")]
  assert [l["step"] for l in lines] == list(range(1, 7))
  for key in ("sip/win_share_original", "sip/win_share_rollout", "rewards/margin", "sip/judge_calls",
              "time/rollout", "time/judge", "time/update", "sip/all_tied_frac", "kl"):
    assert key in lines[-1], key
  shares = [l["sip/win_share_original"] + l["sip/win_share_rollout"] + l["sip/all_tied_frac"] for l in lines]
  np.testing.assert_allclose(shares, 1.0)
  # The curriculum's first half: the from-scratch policy's rollouts are noise, so the ground-truth
  # judge prefers the original suffix in most groups it can rank at the start.
  assert lines[0]["sip/win_share_original"] > 0.5 > lines[0]["sip/win_share_rollout"]
  # As if killed after the step-2 checkpoint: drop the later ones, restart, same final parameters.
  shutil.copytree(tmp_path / "full", tmp_path / "resumed")
  for step in ("4", "6"):
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / step)
  resumed = sip.run(cfg, str(tmp_path / "resumed"))
  for a, b in zip(jax.tree.leaves(jax.device_get(full["state"].params)),
                  jax.tree.leaves(jax.device_get(resumed["state"].params))):
    np.testing.assert_array_equal(a, b)


def _judgement(chosen, all_tied, safety=None):
  from earlyrl_jax.teacher.tournament import Judgement
  G = len(chosen)
  per_axis = {} if safety is None else {"safety": np.asarray(safety, np.float64)}
  return Judgement(rewards=np.zeros((G, 4)), per_axis=per_axis, prefs={}, calls=0, position_consistency=1.0,
                   chosen=np.asarray(chosen), rejected=np.zeros(G, np.int64), all_tied=np.asarray(all_tied))


def test_an_all_tied_group_is_no_ones_win():
  """Sources [original, rewrite, rollout, rollout]: of 5 groups, one the original wins, one the
  rewrite, one a rollout, and two the judge cannot rank (their chosen index 0 says nothing)."""
  j = _judgement([0, 1, 3, 0, 0], [False, False, False, True, True])
  w = sip.win_shares(["original", "rewrite", "rollout", "rollout"], j)
  assert w == {"sip/win_share_original": 0.2, "sip/win_share_rewrite": 0.2, "sip/win_share_rollout": 0.2,
               "sip/all_tied_frac": 0.4}


def test_rf_nll_bars_the_best_candidates_absolute_safety_and_ties():
  safety = [[0.9, 0.2, 0.8, 0.1], [0.3, 0.4, 0.9, 0.7], [0.9, 0.9, 0.9, 0.9]]
  j = _judgement([2, 1, 0], [False, False, True], safety)
  np.testing.assert_array_equal(sip.rf_filtered(j, 0.5), [False, True, True])   # unsafe best; all tied
  np.testing.assert_array_equal(sip.rf_filtered(j, 0.0), [False, False, True])  # no bar: ties still
  with pytest.raises(ValueError, match="sip.rf_threshold=0.5: .* judges no safety"):
    sip.rf_filtered(_judgement([0], [False]), 0.5)


def test_ties_are_drawn_from_the_seed_and_step_only():
  """Resume-exact: the same (seed, step) draws the same; another step or seed draws otherwise."""
  draw = lambda seed, step: sip.tie_rng(seed, step).random(8)
  np.testing.assert_array_equal(draw(0, 5), draw(0, 5))
  assert not np.array_equal(draw(0, 5), draw(0, 6)) and not np.array_equal(draw(0, 5), draw(1, 5))


def test_factuality_reference_is_the_original_or_the_text_after_it():
  """'original' (the paper's) hands the judge the original suffix, itself a candidate;
  'next_span' the document after it, which no candidate contains; a window at the end of its
  document has none, and the share of those is logged."""
  w = {"suffix_text": [" Tal lies in Vexmoor.", " It is old."], "next_text": [" Vexmoor is far.", ""]}
  producer = sip.SIPProducer.__new__(sip.SIPProducer)
  producer.s = ConfigDict({"factuality_reference": "original"})
  assert producer._references(w) == (w["suffix_text"], None)
  producer.s.factuality_reference = "next_span"
  assert producer._references(w) == ([" Vexmoor is far.", ""], 0.5)
  with pytest.raises(ValueError, match="next_span' needs windows"):
    producer._references({"suffix_text": ["x"]})


def test_the_lm_term_reads_the_window_the_suffix_or_the_rewrite():
  """sip.lm_target: 'window' trains every token of prefix + original suffix; 'suffix' the original
  suffix given its prefix; 'rewrite' the teacher's rewrite given the prefix (what rewrite_nll
  trains: neither an unsafe passage in the prefix nor one the teacher dropped)."""
  from types import SimpleNamespace
  prefixes = [np.array([5, 6, 7]), np.array([8, 9])]
  originals = [np.array([20, 21, 22]), np.array([30, 31])]
  cand_ids = [[originals[0], np.array([40, 41]), np.array([50])], [originals[1], np.array([60]), np.array([70])]]
  j = _judgement([1, 2], [False, False])
  producer = sip.SIPProducer.__new__(sip.SIPProducer)
  producer.tok = SimpleNamespace(pad_id=0)
  producer.row_len = 8
  producer.objective = objectives.Objective("dpo")
  lm_suffix = lambda b, g: b["lm_targets"][g][b["lm_loss_mask"][g] > 0].tolist()
  for target, want in (("window", [[6, 7, 20, 21, 22], [9, 30, 31]]), ("suffix", [[20, 21, 22], [30, 31]]),
                       ("rewrite", [[40, 41], [60]])):
    producer.lm_target = target
    batch = producer._rows(prefixes, originals, cand_ids, j)
    assert [lm_suffix(batch, g) for g in range(2)] == want


def test_a_rewrite_that_copies_the_original_trains_on_the_originals_ids():
  """The editor returns a kept suffix stripped; re-encoded, its first word would be another piece.
  A copy is the original (one player in the tournament), so its ids are the window's own."""
  originals = [np.array([7, 8, 9]), np.array([4, 5])]
  reencoded = [np.array([70, 8, 9]), np.array([40, 41, 42])]
  got = sip.copies_as_originals(["The capital.", "Something new."], [" The capital.\n", " Old text."],
                                reencoded, originals, cand_len=2)
  np.testing.assert_array_equal(got[0], [7, 8])          # a copy: the original's ids (capped)
  np.testing.assert_array_equal(got[1], [40, 41, 42])    # a real rewrite keeps its encoding
