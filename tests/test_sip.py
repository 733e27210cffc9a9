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

from earlyrl_jax import sip_job
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


def _windows(rng, G, prefix_len=6, cand_len=5, vocab=128, n_cands=2):
  """G windows: a prefix, n_cands candidates (some empty) and an original suffix each."""
  prefixes = [rng.integers(3, vocab, rng.integers(1, prefix_len + 1)) for _ in range(G)]
  cands = [[rng.integers(3, vocab, rng.integers(0, cand_len + 1)) for _ in range(n_cands)] for _ in range(G)]
  originals = [rng.integers(3, vocab, rng.integers(1, cand_len + 1)) for _ in range(G)]
  return prefixes, cands, originals


def _window_batch(obj, prefixes, cands, originals, reference=None, prefix_len=6, cand_len=5, **extra):
  """The producer's batch for `obj`: one packed row per window (+ ref_logp from `reference`)."""
  C = len(cands[0])
  lay = obj.layout(prefix_len=prefix_len, cand_len=cand_len, suffix_len=cand_len, num_candidates=C)
  batch = objectives.window_rows(lay, prefixes, cands, originals, pad_id=0)
  batch.update(extra)
  if reference is not None:
    batch["ref_logp"] = np.asarray(obj.reference_logp(reference, batch, lay.reference_length))
  return lay, batch


def test_window_rows_hold_each_sequence_once_and_mask_what_terms_read():
  rng = np.random.default_rng(5)
  prefixes, cands, originals = _windows(rng, 4)
  lay, b = _window_batch(objectives.Objective("dpo", lm_coef=1.0), prefixes, cands, originals)
  assert lay.names == ("chosen", "rejected") and b["tokens"].shape == (4, 5 + 2 * 6 + 6)
  for g in range(4):
    branch, mask, tgt = b["branch_ids"][g], b["loss_mask"][g] > 0, b["targets"][g]
    for i, c in enumerate(cands[g]):   # each candidate predicted once, from its own branch
      np.testing.assert_array_equal(tgt[mask & (branch == i + 1)], c)
    doc = np.concatenate([prefixes[g], originals[g]])   # the document: trunk + lm branch
    np.testing.assert_array_equal(tgt[mask & ((branch == 0) | (branch == lay.lm_id))], doc[1:])
    # every branch continues the prefix's positions
    on = b["segment_ids"][g] > 0
    np.testing.assert_array_equal(b["positions"][g][on & (branch == 1)],
                                  len(prefixes[g]) - 1 + np.arange(len(cands[g][0]) + 1))
  # Nothing laid out that no term reads: no lm branch at lm_coef=0, no candidates at coef=0.
  lay0, b0 = _window_batch(objectives.Objective("dpo", lm_coef=0.0), prefixes, cands, originals)
  assert lay0.lm_len == 0 and b0["tokens"].shape[1] == lay0.reference_length == 5 + 2 * 6
  lay1, _ = _window_batch(objectives.Objective("dpo", lm_coef=1.0, coef=0.0), prefixes, [[]] * 4, originals)
  assert lay1.names == () and lay1.length == 5 + 6


def test_dpo_term_is_the_published_formula():
  policy, reference = tiny_model(seed=0), tiny_model(seed=1)
  prefixes, cands, originals = _windows(np.random.default_rng(2), 3)
  beta = 0.3
  obj = objectives.Objective("dpo", beta=beta, lm_coef=0.0)
  _, batch = _window_batch(obj, prefixes, cands, originals, reference,
                           pair_mask=np.array([1.0, 1.0, 0.0], np.float32))
  terms, diags = obj(policy, batch)
  expected, right = [], 0
  for i in range(2):
    (c, r), p = cands[i], prefixes[i]
    pc, pr = _manual_logprob(policy, p, c), _manual_logprob(policy, p, r)
    rc, rr = _manual_logprob(reference, p, c), _manual_logprob(reference, p, r)
    z = beta * ((pc - rc) - (pr - rr))
    expected.append(math.log1p(math.exp(-z)))  # -log sigmoid(z)
    right += z > 0                              # the implicit reward prefers the chosen one
  s, d = terms["dpo"]
  assert float(d) == 2.0  # the masked pair does not count
  np.testing.assert_allclose(float(s), sum(expected), rtol=1e-4)
  acc = diags["rewards/accuracy"]
  assert float(acc[0]) == right and float(acc[1]) == 2.0
  # Swapping chosen and rejected flips every unmasked pair's verdict.
  _, swapped = _window_batch(obj, prefixes, [cs[::-1] for cs in cands], originals, reference,
                             pair_mask=batch["pair_mask"])
  assert float(obj(policy, swapped)[1]["rewards/accuracy"][0]) == 2 - right


def test_rf_nll_and_pg_terms_by_hand():
  model = tiny_model()
  prefixes, cands, originals = _windows(np.random.default_rng(3), 4, n_cands=3)
  manual = np.array([[_manual_logprob(model, p, c) for c in cs] for p, cs in zip(prefixes, cands)])
  w = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
  obj = objectives.Objective("rf_nll", lm_coef=0.0)
  _, batch = _window_batch(obj, prefixes, [cs[:1] for cs in cands], originals, best_weight=w)
  s, d = obj(model, batch)[0]["rf_nll"]
  np.testing.assert_allclose(float(s), -(manual[:, 0] * w).sum(), rtol=1e-5, atol=1e-5)
  assert float(d) == sum(len(cs[0]) for cs, wi in zip(cands, w) if wi)
  adv = np.array([[1.5, -0.5, 0.25], [-1.25, 0.5, 0.0], [1.0, 1.0, -2.0], [0.0, 0.0, 0.0]], np.float32)
  obj = objectives.Objective("pg", lm_coef=0.0)
  _, batch = _window_batch(obj, prefixes, cands, originals, advantage=adv,
                           is_rollout=np.ones((4, 3), np.float32))
  s, d = obj(model, batch)[0]["pg"]
  np.testing.assert_allclose(float(s), -(adv * manual).sum(), rtol=1e-5, atol=1e-5)
  assert float(d) == sum(len(c) for cs in cands for c in cs)  # whole-batch token normalisation


def _old_terms(obj, model, reference, prefixes, cands, originals, extra, L):
  """The objective as it was before one row per window: a row `prefix + candidate` per
  sequence and the reference's forward pass inside the loss (the check of the new layout)."""
  G = len(prefixes)
  row = lambda ps, cs: sip.candidate_rows(ps, cs, L, 0)
  docs = [np.concatenate([p, o]) for p, o in zip(prefixes, originals)]
  terms = {}
  if obj.lm_coef:
    terms["nll"] = losses.lm_terms(model, row([d[:1] for d in docs], [d[1:] for d in docs]))[0]["nll"]
  if obj.recipe == "dpo":
    both = {k: np.concatenate([a, b]) for (k, a), b in zip(row(prefixes, [c[0] for c in cands]).items(),
                                                            row(prefixes, [c[1] for c in cands]).values())}
    pi, _, _ = losses.sequence_logprobs(model, both)
    ref, _, _ = losses.sequence_logprobs(reference, both)
    loss, _, _ = losses.dpo_pair_losses(pi[:G], pi[G:], ref[:G], ref[G:], obj.beta)
    terms["dpo"] = (jnp.sum(loss * extra["pair_mask"]), jnp.sum(extra["pair_mask"]))
  elif obj.recipe == "rf_nll":
    s, n, _ = losses.sequence_logprobs(model, row(prefixes, [c[0] for c in cands]))
    terms["rf_nll"] = (-jnp.sum(extra["best_weight"] * s), jnp.sum(extra["best_weight"] * n))
  else:
    C = len(cands[0])
    flat = row([p for p in prefixes for _ in range(C)], [c for cs in cands for c in cs])
    s, n, logp = losses.sequence_logprobs(model, flat)
    terms["pg"] = (-jnp.sum(extra["advantage"].reshape(-1) * s), jnp.sum(n))
    if obj.kl_coef:
      _, _, ref_logp = losses.sequence_logprobs(reference, flat)
      mask = flat["loss_mask"] * extra["is_rollout"].reshape(-1)[:, None]
      terms["kl"] = (jnp.sum(losses.kl_k3(logp, ref_logp) * mask), jnp.sum(mask))
  return terms


@pytest.mark.parametrize("recipe,lm_coef,kl_coef", [("dpo", 0.7, 0.0), ("dpo", 0.0, 0.0),
                                                    ("rf_nll", 1.0, 0.0), ("pg", 0.5, 0.2), ("pg", 0.0, 0.0)])
def test_one_row_per_window_gives_the_loss_and_grads_of_a_row_per_sequence(recipe, lm_coef, kl_coef):
  """The prefix computed once (and the reference outside the loss) changes no number: the loss
  and its gradient equal the previous layout's on the same windows (float32 tolerance: the
  sums run in another order)."""
  from flax import nnx
  policy, reference = tiny_model(seed=0), tiny_model(seed=1)
  rng = np.random.default_rng(7)
  n_cands = {"dpo": 2, "rf_nll": 1, "pg": 3}[recipe]
  prefixes, cands, originals = _windows(rng, 5, n_cands=n_cands)
  extra = {"pair_mask": np.array([1, 1, 0, 1, 1], np.float32),
           "best_weight": np.array([1, 0, 1, 1, 0], np.float32),
           "advantage": rng.normal(size=(5, n_cands)).astype(np.float32),
           "is_rollout": np.tile(np.array([0, 1, 1], np.float32)[:n_cands], (5, 1))}
  obj = objectives.Objective(recipe, beta=0.3, lm_coef=lm_coef, kl_coef=kl_coef)
  keep = {"dpo": ("pair_mask",), "rf_nll": ("best_weight",), "pg": ("advantage", "is_rollout")}[recipe]
  _, batch = _window_batch(obj, prefixes, cands, originals,
                           reference if obj.needs_reference else None, **{k: extra[k] for k in keep})
  graphdef, params = nnx.split(policy)

  def loss(p, new: bool):
    model = nnx.merge(graphdef, p)
    terms = obj(model, batch)[0] if new else _old_terms(obj, model, reference, prefixes, cands,
                                                        originals, extra, 11)
    return steps_lib.combine(terms, obj.coefs), {k: v[0] for k, v in terms.items()}

  (l_new, t_new), g_new = jax.value_and_grad(lambda p: loss(p, True), has_aux=True)(params)
  (l_old, t_old), g_old = jax.value_and_grad(lambda p: loss(p, False), has_aux=True)(params)
  assert sorted(t_new) == sorted(t_old)
  np.testing.assert_allclose(l_new, l_old, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(g_new), jax.tree.leaves(g_old)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_group_advantages_are_normalised_per_group():
  r = np.array([[1.0, 0.0, 0.5], [0.2, 0.2, 0.2]])
  a = sip.group_advantages(r)
  np.testing.assert_allclose(a[0].mean(), 0.0, atol=1e-6)
  np.testing.assert_allclose(a[0].std(), 1.0, atol=1e-4)
  np.testing.assert_allclose(a[1], 0.0, atol=1e-9)  # a tied group gives no signal


def test_combine_refuses_a_term_without_coefficient():
  with pytest.raises(KeyError, match="no coefficient"):
    steps_lib.combine({"dpo": (jnp.ones(()), jnp.ones(()))}, {"nll": 1.0})


def _dpo_batch(G=8, seed=0):
  prefixes, cands, originals = _windows(np.random.default_rng(seed), G)
  obj = objectives.Objective("dpo", beta=0.5, lm_coef=0.7)
  lay, batch = _window_batch(obj, prefixes, cands, originals,
                             pair_mask=(np.random.default_rng(seed).random(G) > 0.25).astype(np.float32))
  return obj, lay, batch


def _dpo_step(shape, devices, grad_accum=1):
  obj, lay, batch = _dpo_batch()
  mc = tiny_model_config()
  mesh = mesh_lib.make_mesh(shape, devices)
  tx = state_lib.make_optimizer(OPT, 10)
  graphdef, state, shardings = state_lib.init_train_state(mc, tx, mesh, seed=3)
  _, ref_state, _ = state_lib.init_train_state(mc, tx, mesh, seed=4)
  # The reference's pass: once per batch, its own shardings, outside the step.
  ref_pass = steps_lib.make_frozen_pass(
      graphdef, shardings.params, mesh, steps_lib.spec_of({k: batch[k] for k in objectives.MODEL_FIELDS}),
      lambda m, b: obj.reference_logp(m, b, lay.reference_length))
  with jax.set_mesh(mesh):
    rows = mesh_lib.shard_batch({k: batch[k] for k in objectives.MODEL_FIELDS}, mesh)
    batch = {**batch, "ref_logp": np.asarray(jax.device_get(ref_pass(ref_state.params, rows)))}
  step = steps_lib.make_train_step(graphdef, tx, state_lib.lr_schedule(OPT, 10), mesh, shardings,
                                   steps_lib.spec_of(batch), loss_fn=obj, coefs=obj.coefs,
                                   grad_accum_steps=grad_accum)
  with jax.set_mesh(mesh):
    new, metrics = step(state, mesh_lib.shard_batch(batch, mesh), {})
  return batch, jax.device_get(metrics), jax.device_get(new.params)


def test_dpo_step_on_8_devices_and_with_accumulation_matches_one_device():
  batch, m1, p1 = _dpo_step((1, 1, 1), cpu_devices(1))
  assert m1["dpo/count"] == batch["pair_mask"].sum()
  np.testing.assert_allclose(m1["loss"], 0.7 * m1["nll"] + m1["dpo"], rtol=1e-6)
  for shape, accum in (((2, 2, 2), 1), ((2, 1, 1), 4)):
    devs = cpu_devices(int(np.prod(shape)))
    b, m, p = _dpo_step(shape, devs, grad_accum=accum)
    np.testing.assert_allclose(b["ref_logp"], batch["ref_logp"], rtol=1e-5, atol=1e-5)
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
def test_sip_runs_logs_its_shares_and_resumes_exactly(tmp_path):
  cfg = _sip_cfg()
  full = sip_job.run(cfg, str(tmp_path / "full"))
  lines = [json.loads(l) for l in open(tmp_path / "full" / "metrics.jsonl")]
  assert [l["step"] for l in lines] == list(range(1, 7))
  for key in ("sip/win_share_original", "sip/win_share_rollout", "rewards/margin", "sip/judge_calls",
              "time/rollout", "time/judge", "time/update", "sip/all_tied_frac", "kl"):
    assert key in lines[-1], key
  shares = [l["sip/win_share_original"] + l["sip/win_share_rollout"] + l["sip/all_tied_frac"] for l in lines]
  np.testing.assert_allclose(shares, 1.0)
  # No curriculum claim here: at this shape the windows are cut mid-sentence, the quality oracle
  # scores every fragment 0 and most groups tie at the start (they counted as the original's wins
  # before ties became no one's); the curriculum setting is issue 38's open item.
  # As if killed after the step-2 checkpoint: drop the later ones, restart, same final parameters.
  _assert_resumes_exactly(cfg, full, tmp_path, later=("4", "6"))


def _assert_resumes_exactly(cfg, full, tmp_path, later):
  """A copy of the finished run without its `later` checkpoints, run again, ends with the same
  parameters, bit for bit."""
  shutil.copytree(tmp_path / "full", tmp_path / "resumed")
  for step in later:
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / step)
  resumed = sip_job.run(cfg, str(tmp_path / "resumed"))
  for a, b in zip(jax.tree.leaves(jax.device_get(full["state"].params)),
                  jax.tree.leaves(jax.device_get(resumed["state"].params))):
    np.testing.assert_array_equal(a, b)


def test_prefetcher_makes_each_batch_from_the_params_one_step_old_and_checkpoints_it():
  """sip.max_staleness=1: batch N comes from the params before update N-1; a checkpoint holds
  the batch made ahead, so a run stopped after any step resumes with the same batches."""
  from types import SimpleNamespace
  from earlyrl_jax.train.prefetch import Prefetcher

  class Windows:  # a checkpointable window iterator
    def __init__(self):
      self.i = 0
    def __next__(self):
      self.i += 1
      return self.i
    def get_state(self):
      return {"i": self.i}
    def set_state(self, s):
      self.i = s["i"]

  def make(windows):
    def produce(state, step):  # the batch records its window and the params it was made from
      w = next(windows)
      return {"w": np.array([w]), "p": np.asarray(state.params["v"]).copy()}, {"step": float(step)}
    return produce

  def run(ahead, steps=(0, 6), restore=None):
    windows = Windows()
    pf = Prefetcher(make(windows), windows, num_steps=6, ahead=ahead)
    if restore is not None:
      pf.set_state(restore)
    params, got = {"v": jnp.array([float(steps[0])])}, []
    for step in range(*steps):
      batch, stats = pf(SimpleNamespace(params=params), step)
      got.append((int(batch["w"][0]), float(batch["p"][0]), stats["step"]))
      params = {"v": params["v"] + 1.0}   # "update": params after step s are s + 1
    return got, pf
  fresh, pf = run(ahead=1)
  # batch s: window s+1, params of step max(s-1, 0)
  assert fresh == [(s + 1, float(max(s - 1, 0)), float(s)) for s in range(6)]
  assert pf.params_step == {0: 0, 1: 0, 2: 1, 3: 2, 4: 3, 5: 4}
  assert run(ahead=0)[0] == [(s + 1, float(s), float(s)) for s in range(6)]
  # Stopped after step 2 (checkpoint at 3): its state holds batch 3, made from the params of 2.
  _, pf = run(ahead=1, steps=(0, 3))
  state = pf.get_state()
  assert b'"ahead"' in state
  resumed, _ = run(ahead=1, steps=(3, 6), restore=state)
  assert resumed == fresh[3:]
  # At staleness 0 the state is the window iterator's own, and either kind resumes either way.
  _, pf0 = run(ahead=0, steps=(0, 3))
  assert json.loads(pf0.get_state()) == {"i": 3}
  assert run(ahead=0, steps=(3, 6), restore=state)[0][0] == fresh[3]


@pytest.mark.slow
def test_sip_at_staleness_1_resumes_exactly(tmp_path):
  cfg = _sip_cfg(**{"sip.max_staleness": 1, "num_steps": 5})
  full = sip_job.run(cfg, str(tmp_path / "full"))
  lines = [json.loads(l) for l in open(tmp_path / "full" / "metrics.jsonl")]
  assert [l["step"] for l in lines] == list(range(1, 6))
  # As if killed after the step-2 checkpoint: the batch made ahead comes back from it.
  _assert_resumes_exactly(cfg, full, tmp_path, later=("4", "5"))
  with pytest.raises(Exception, match="sip.max_staleness"):
    sip_job.run(_sip_cfg(**{"sip.max_staleness": 2}), str(tmp_path / "bad"))


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
  draw = lambda seed, step, group=0: sip.tie_rng(seed, step, group).random(8)
  np.testing.assert_array_equal(draw(0, 5), draw(0, 5))
  assert not np.array_equal(draw(0, 5), draw(0, 6)) and not np.array_equal(draw(0, 5), draw(1, 5))
  assert not np.array_equal(draw(0, 5, 0), draw(0, 5, 1))   # each group of the global batch its own


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
  producer.objective = objectives.Objective("dpo")
  producer.judge = None
  producer.s = ConfigDict({"rf_threshold": 0.0, "rf_fallback": "skip"})
  producer.layout = producer.objective.layout(prefix_len=3, cand_len=3, suffix_len=3, num_candidates=3)
  lay = producer.layout

  def lm_tokens(b, g):   # what the LM term reads: the trunk's and the lm branch's predictions
    on = (b["loss_mask"][g] > 0) & ((b["branch_ids"][g] == 0) | (b["branch_ids"][g] == lay.lm_id))
    return b["targets"][g][on].tolist()

  for target, want in (("window", [[6, 7, 20, 21, 22], [9, 30, 31]]), ("suffix", [[20, 21, 22], [30, 31]]),
                       ("rewrite", [[40, 41], [60]])):
    producer.lm_target = target
    batch = producer._rows(prefixes, originals, cand_ids, j)
    assert [lm_tokens(batch, g) for g in range(2)] == want


def test_a_rewrite_that_copies_the_original_trains_on_the_originals_ids():
  """The editor returns a kept suffix stripped; re-encoded, its first word would be another piece.
  A copy is the original (one player in the tournament), so its ids are the window's own."""
  originals = [np.array([7, 8, 9]), np.array([4, 5])]
  reencoded = [np.array([70, 8, 9]), np.array([40, 41, 42])]
  got = sip.copies_as_originals(["The capital.", "Something new."], [" The capital.\n", " Old text."],
                                reencoded, originals, cand_len=2)
  np.testing.assert_array_equal(got[0], [7, 8])          # a copy: the original's ids (capped)
  np.testing.assert_array_equal(got[1], [40, 41, 42])    # a real rewrite keeps its encoding
