"""The embedded teacher's training: its data (pairs, edits, soft labels, packing), its stages through
the shared loop, the job's reuse and resume."""
from __future__ import annotations

import json
import os
import random

import jax
import numpy as np
import pytest

from earlyrl_jax import world as W
from earlyrl_jax.embedded import data as D
from earlyrl_jax.embedded import job as TT
from earlyrl_jax.teacher.prompts import markup as P
from earlyrl_jax.teacher.prompts.markup_ids import PromptEncoder
from earlyrl_jax.teacher.prompts.text import split_sentences
from tests.helpers import save_reusable_teacher
from tests.teacher_fixtures import sp, tiny_teacher, world  # noqa: F401  (fixtures)


def test_pack_examples_masks_only_completions():
  ex = [([1, 5, 6], [7, 8], 1.0), ([1, 9], [10], 4.0)]
  rows = D.pack_examples(ex, 16, random.Random(0))
  assert rows["tokens"].shape == (1, 16)
  m, t, s = rows["loss_mask"][0], rows["targets"][0], rows["segment_ids"][0]
  supervised = {(int(t[i]), float(m[i])) for i in range(16) if m[i] > 0}
  assert supervised == {(7, 1.0), (8, 1.0), (10, 4.0)}
  assert set(s[:8].tolist()) <= {1, 2} and s[8:].max() == 0


def test_teacher_is_reused_when_config_unchanged(tmp_path, tiny_teacher, sp, monkeypatch):
  from configs import teacher_tiny
  cfg = teacher_tiny.get_config()
  h = TT.config_hash(cfg)
  save_reusable_teacher(tmp_path, tiny_teacher, sp, cfg)

  def no_training(*a, **k):
    raise AssertionError("retrained although the config hash is unchanged")
  monkeypatch.setattr(TT, "lm_stage", no_training)
  out = TT.run(cfg, str(tmp_path))
  assert out["reused"] and out["report"]["config_hash"] == h
  # The corpus's misconceptions are not in the clean documents it learns from: same weights
  # (unless its claims verdict learns from rollouts of policies trained on the corpus).
  clean, cfg_myths = teacher_tiny.get_config(), teacher_tiny.get_config()
  clean.teacher.sft.claim_rollouts = cfg_myths.teacher.sft.claim_rollouts = 0
  cfg_myths.world.myth_rate, cfg_myths.world.myth_share = 0.2, 0.9
  assert TT.config_hash(cfg_myths) == TT.config_hash(clean)
  cfg_myths.world.false_fact_rate += 0.01   # the rest of the world still counts
  assert TT.config_hash(cfg_myths) != TT.config_hash(clean)
  cfg2 = teacher_tiny.get_config()
  cfg2.teacher.sft.steps += 1
  assert TT.config_hash(cfg2) != h
  monkeypatch.setattr(TT, "train_tokenizer", no_training)  # the first step of a retraining
  with pytest.raises(AssertionError, match="retrained"):
    TT.run(cfg2, str(tmp_path))


@pytest.mark.slow
def test_teacher_job_smoke(tmp_path):
  """The whole job at toy size: tokenizer, pretrain, SFT, GRPO, save, held-out report, then reuse."""
  from configs import teacher_tiny
  cfg = teacher_tiny.get_config()
  t = cfg.teacher
  t.tokenizer_documents, t.pretrain.num_documents, t.pretrain.steps = 200, 200, 2
  t.sft.num_documents, t.sft.steps, t.sft.batch_size = 90, 2, 8
  t.grpo.steps, t.grpo.inputs_per_step, t.grpo.samples_per_input = 1, 2, 2
  t.policy.steps, t.policy.weak_steps, t.policy.num_documents = 2, 1, 50
  t.eval.num_documents, t.eval.num_rollout_prefixes, t.eval.num_rewrites = 30, 4, 6
  out = TT.run(cfg, str(tmp_path))
  rep = out["report"]
  for k in ("judge_agreement_quality", "judge_agreement_safety", "judge_agreement_factuality",
            "position_consistency", "injection_flip_rate", "rewrite_copy_rate", "rewrite_fix_rate",
            "oracle_judge_agreement_quality"):
    assert k in rep
  assert rep["oracle_judge_agreement_factuality"] in (1.0,) or np.isnan(rep["oracle_judge_agreement_factuality"])
  assert os.path.exists(tmp_path / "teacher_report.md")
  assert rep["sft_counts"]["claims"] > 0 and rep["claims_verdict"]["corrupted"]["sentences"] > 0
  assert "claim_rollouts_s" in rep["timings"]          # the noisy policies' rollouts trained it too
  assert TT.run(cfg, str(tmp_path))["reused"]


def test_minimal_pairs_differ_in_one_claim_and_keep_the_pairs_reference(world):
  cfg, kb, oracles = world
  docs = list(W.generate_documents(kb, cfg, "t", 60, clean=True))
  pairs = D.make_pairs(kb, oracles, docs, random.Random(5), max_sentences=2, minimal_share=1.0)
  minimal = [(i, pe) for i, pe in enumerate(pairs) if pe.kind == "fact_minimal"]
  assert len(minimal) > 20
  for i, pe in minimal:
    assert pe.reference == pairs[i - 1].reference and pe.prefix == pairs[i - 1].prefix
    fa, fb = oracles.factuality(pe.a), oracles.factuality(pe.b)
    assert sorted([fa["false"], fb["false"]]) == [0, 1]          # exactly one false claim between them
    assert pe.labels["factuality"] == int(fa["false"] == 0)
    sa, sb = split_sentences(pe.a), split_sentences(pe.b)
    assert len(sa) == len(sb) and sum(x != y for x, y in zip(sa, sb)) == 1   # one sentence differs
  assert not any(pe.kind == "fact_minimal" for pe in
                 D.make_pairs(kb, oracles, docs, random.Random(5), max_sentences=2))


def test_edit_labels_turn_each_defect_back_into_the_clean_suffix(world):
  """Keeping the sentences edit_labels keeps gives the clean target (or part of it) for every
  defect kind the world plants; a clean suffix is kept whole."""
  from earlyrl_jax.world.supervision import corrupt_suffix
  from earlyrl_jax.embedded.editor import EditPlan
  cfg, kb, oracles = world
  rng = random.Random(0)
  kinds = set()
  for doc in W.generate_documents(kb, cfg, "t", 80, clean=True):
    split = D.suffix_split(doc, rng, 2)
    if split is None:
      continue
    prefix, clean, _ = split
    target = W.join(clean)
    sents = split_sentences(target)
    assert not any(D.edit_labels(sents, target))
    bad, kind = corrupt_suffix(kb, clean, rng, doc.topic)
    sents = split_sentences(W.join(bad))
    drops = D.edit_labels(sents, target)
    kept = EditPlan(sents, [], []).apply([not d for d in drops])
    assert {s.strip() for s in split_sentences(kept)} <= {s.strip() for s in split_sentences(target)}
    if kept:
      score = oracles.score(kept, prefix=prefix)
      assert not score["unsafe"] and score["false_claims"] == 0, (kind, kept)
    kinds.add(kind)
  assert {"unsafe", "false_fact", "typos", "drift"} <= kinds


def test_labeled_examples_supervise_every_check_including_the_last_token():
  ex = [D.Labeled([1, 5, 9, 6, 9], {2: 40, 4: 41}, 8.0), ([1, 2], [3], 1.0)]
  rows = D.pack_examples(ex, 16, random.Random(0))
  m, t = rows["loss_mask"][0], rows["targets"][0]
  supervised = sorted((int(t[i]), float(m[i])) for i in range(16) if m[i] > 0)
  assert supervised == [(3, 1.0), (40, 8.0), (41, 8.0)]


def test_soft_labels_split_a_verdict_weight_and_train_cross_entropy_to_the_score():
  """A scored verdict with oracle score q trains -[q log p(good) + (1-q) log p(bad)] at weight w."""
  import jax.numpy as jnp
  from earlyrl_jax.train import losses
  ex = [D.Labeled([1, 5, 9], {2: 40}, 8.0, {2: (41, 0.25)}), ([1, 2], [3], 1.0)]
  rows = D.pack_examples(ex, 8, random.Random(0))
  m, t = rows["loss_mask"][0], rows["targets"][0]
  am, at = rows["alt_mask"][0], rows["alt_targets"][0]
  assert sorted((int(t[i]), float(m[i])) for i in range(8) if m[i] > 0) == [(3, 1.0), (40, 6.0)]
  assert [(int(at[i]), float(am[i])) for i in range(8) if am[i] > 0] == [(41, 2.0)]

  class Fixed:   # a "model" whose logits are given
    def __init__(self, logits):
      self.logits = logits

    def __call__(self, tokens, positions=None, segment_ids=None):
      return self.logits

  V = 48
  logits = jax.random.normal(jax.random.key(0), (1, 8, V))
  batch = {k: jnp.asarray(v) for k, v in rows.items()}
  terms, _ = losses.lm_terms(Fixed(logits), batch)
  lp = jax.nn.log_softmax(logits[0], axis=-1)
  pos = int(np.flatnonzero(t == 40)[0])
  one = int(np.flatnonzero(t == 3)[0])
  want = -(6.0 * lp[pos, 40] + 2.0 * lp[pos, 41] + 1.0 * lp[one, 3])
  np.testing.assert_allclose(float(terms["nll"][0]), float(want), rtol=1e-5)
  assert float(terms["nll"][1]) == 9.0     # the verdict counts its whole weight once


def test_rehearsal_adds_weighted_pretraining_rows_to_sft():
  sft = D.pack_examples([D.Labeled([1, 5, 9], {2: 40}, 8.0), D.Labeled([1, 6], {1: 41}, 8.0)] * 3,
                         8, random.Random(0))
  lm = D.pack_examples([([1], [7, 8, 9, 10], 1.0)] * 20, 8, random.Random(0))
  out = D.with_rehearsal(sft, lm, 0.25, 0.1, random.Random(0))
  n = sft["tokens"].shape[0]
  assert out["tokens"].shape[0] == n + round(n / 3)            # a quarter of the rows are LM rows
  np.testing.assert_array_equal(out["tokens"][:n], sft["tokens"])
  extra = out["loss_mask"][n:]
  assert np.all(np.isclose(extra, 0.0) | np.isclose(extra, 0.1)) and extra.max() == pytest.approx(0.1)
  assert set(out) == set(sft) and D.with_rehearsal(sft, lm, 0.0, 0.1, random.Random(0)) is sft
  with pytest.raises(ValueError, match="seq_len"):
    D.with_rehearsal(sft, D.pack_examples([([1], [7], 1.0)], 16, random.Random(0)), 0.5, 0.1,
                      random.Random(0))


def test_scored_sft_examples_carry_the_oracles_graded_scores(world, sp):
  cfg, kb, oracles = world
  from configs import teacher_tiny
  tc = teacher_tiny.get_config().teacher
  tc.sft.adversarial_rate = 0.0
  rng = random.Random(3)
  docs = list(W.generate_documents(kb, cfg, "t", 40, clean=True))
  pairs = D.make_pairs(kb, oracles, docs, rng, max_sentences=2, false_fact_share=0.5)
  enc = PromptEncoder(sp, max_len=256, limits=P.PromptLimits(80, 100, 100))
  ex, counts = D.sft_examples(enc, oracles, pairs, [], tc, rng)
  assert counts["pair"] == 0 and counts["scored"] == 4 * len(pairs)
  good, bad = enc.score_ids
  scored = [e for e in ex if isinstance(e, D.Labeled) and e.alt]
  shares = []
  for e in scored:
    (pos, tgt), = e.targets.items()
    assert pos == len(e.ids) - 1 and tgt == good and e.alt[pos][0] == bad
    shares.append(e.alt[pos][1])
  want = [1.0 - D.oracle_axis_score(oracles, pe.prefix, c, axis) ** tc.sft.score_power
          for pe in pairs for c in (pe.a, pe.b) for axis in ("quality", "factuality")]
  np.testing.assert_allclose(shares, want)
  assert min(shares) == 0.0 and max(shares) == 1.0 and any(0 < s < 1 for s in shares)


def test_cut_pairs_end_both_candidates_after_the_same_word(world):
  """cut_share gives pairs cut mid-sentence like SIP's windows (kind 'cut'), labelled on the cut text."""
  assert D.cut_words("One two.  Three four", 3) == "One two.  Three"
  assert D.cut_words("One two", 5) == "One two"
  cfg, kb, oracles = world
  docs = list(W.generate_documents(kb, cfg, "t", 60, clean=True))
  pairs = D.make_pairs(kb, oracles, docs, random.Random(0), max_sentences=2, cut_share=1.0)
  assert pairs and all(pe.kind == "cut" for pe in pairs)
  assert all(len(pe.a.split()) <= 28 and len(pe.b.split()) <= 28 for pe in pairs)
  assert all(pe.labels.get(ax) == D.pair_label(oracles, pe.prefix, pe.a, pe.b, ax)
             for pe in pairs for ax in pe.labels)
  assert not any(pe.kind == "cut" for pe in D.make_pairs(kb, oracles, docs, random.Random(0), max_sentences=2))


# ------------------------------------------------------------------ stages through the shared loop


def _stage_cfg(every_steps: int = 2):
  from configs import teacher_tiny
  cfg = teacher_tiny.get_config()
  cfg.checkpoint.every_steps, cfg.checkpoint.async_save = every_steps, False
  return cfg


def _rows(sp, n_docs: int = 24, seq_len: int = 32):
  wcfg = W.default_world_config()
  texts = [d.text for d in W.generate_documents(W.build_kb(wcfg), wcfg, "t", n_docs, clean=True)]
  return D.lm_rows(sp, texts, seq_len)


def _same(a, b) -> bool:
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _sigterm_at(fn, at_step: int):
  """fn wrapped to send this process SIGTERM when asked for the batch of `at_step` (a kill the
  shared loop turns into a checkpoint and a clean stop)."""
  import signal

  def wrapped(state, step):
    if step == at_step:
      os.kill(os.getpid(), signal.SIGTERM)
    return fn(state, step)
  return wrapped


def test_an_lm_stage_killed_mid_way_resumes_to_the_same_params(tmp_path, sp, monkeypatch):
  from flax import nnx
  from earlyrl_jax.embedded import training
  from earlyrl_jax.models.transformer import Transformer
  from earlyrl_jax.parallel import mesh as mesh_lib
  from tests.helpers import tiny_model_config
  cfg, mesh = _stage_cfg(), mesh_lib.single_device_mesh()
  mc = tiny_model_config(vocab_size=sp.vocab_size, max_seq_len=32)
  _, params = nnx.split(Transformer(mc, rngs=nnx.Rngs(0)))
  rows = _rows(sp)
  kw = dict(steps=6, lr=3e-3, batch_size=4, seed=1, log_every=1)
  whole, _ = training.lm_stage(cfg, "t", str(tmp_path / "whole"), params, mc, mesh, sp, rows, **kw)
  assert not _same(whole, params)                      # it trained (and the start was not donated)
  job_of = training.loop.Job

  def killing_job(**job_kw):   # the first run is killed when it asks for step 3's batch
    job_kw["next_batch"] = _sigterm_at(job_kw["next_batch"], 3)
    return job_of(**job_kw)
  monkeypatch.setattr(training.loop, "Job", killing_job)
  with pytest.raises(training.StagePreempted, match="stopped at step 3 of 6"):   # never half-trained params
    training.lm_stage(cfg, "t", str(tmp_path / "cut"), params, mc, mesh, sp, rows, **kw)
  monkeypatch.setattr(training.loop, "Job", job_of)
  steps = lambda d: sorted(int(p.name) for p in (tmp_path / d / "checkpoints").iterdir() if p.name.isdigit())
  assert steps("cut") == [3]                             # stopped at step 3, its checkpoint saved
  resumed, _ = training.lm_stage(cfg, "t", str(tmp_path / "cut"), params, mc, mesh, sp, rows, **kw)
  assert steps("cut") == [6] and _same(resumed, whole)   # the same batches, the same numbers
  again, _ = training.lm_stage(cfg, "t", str(tmp_path / "cut"), params, mc, mesh, sp, rows, **kw)
  assert _same(again, whole)                             # a finished stage returns at once
  metrics = [json.loads(l) for l in open(tmp_path / "whole" / "metrics.jsonl")]
  assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4, 5, 6]


def test_an_lm_stage_snapshot_survives_the_stage_and_equals_an_uninterrupted_run(tmp_path, sp):
  from flax import nnx
  from earlyrl_jax.embedded import training
  from earlyrl_jax.models.transformer import Transformer
  from earlyrl_jax.parallel import mesh as mesh_lib
  from tests.helpers import tiny_model_config
  cfg, mesh = _stage_cfg(every_steps=100), mesh_lib.single_device_mesh()
  mc = tiny_model_config(vocab_size=sp.vocab_size, max_seq_len=32)
  _, params = nnx.split(Transformer(mc, rngs=nnx.Rngs(0)))
  rows, kw = _rows(sp), dict(lr=3e-3, batch_size=4, seed=1, log_every=2)
  short, _ = training.lm_stage(cfg, "t", str(tmp_path / "short"), params, mc, mesh, sp, rows, steps=4, **kw)
  final, snaps = training.lm_stage(cfg, "t", str(tmp_path / "s"), params, mc, mesh, sp, rows, steps=4,
                                   snapshots=(2, 9), **kw)
  assert _same(final, short) and list(snaps) == [2] and not _same(snaps[2], final)
  final2, snaps2 = training.lm_stage(cfg, "t", str(tmp_path / "s"), params, mc, mesh, sp, rows, steps=4,
                                     snapshots=(2,), **kw)
  assert _same(final2, final) and _same(snaps2[2], snaps[2])   # read back, not the last checkpoint


@pytest.mark.slow
def test_grpo_killed_mid_way_resumes_with_its_random_streams(tmp_path, tiny_teacher, world, monkeypatch):
  """GRPO's sampled edits and input draws are checkpointed with the state (its data iterator):
  a GRPO killed after its first update ends where an uninterrupted one does."""
  from earlyrl_jax.embedded import training
  from earlyrl_jax.parallel import mesh as mesh_lib
  wcfg, kb, _ = world
  cfg = _stage_cfg(every_steps=100)
  g = cfg.teacher.grpo
  g.steps, g.inputs_per_step, g.samples_per_input, g.learning_rate = 3, 2, 2, 1e-2
  cfg.teacher.rewrite_max_new_tokens = 8
  docs = list(W.generate_documents(kb, wcfg, "t", 12, clean=True))
  rewrites = D.make_rewrites(kb, docs, random.Random(0), max_sentences=2, max_chars=100)
  mesh = mesh_lib.single_device_mesh()
  whole, stats = training.grpo(cfg, tiny_teacher, rewrites, mesh, str(tmp_path / "whole"))
  assert not _same(whole, tiny_teacher.params) and set(stats) == {"grpo/reward_first", "grpo/reward_last"}
  call = training.GrpoBatches.__call__
  monkeypatch.setattr(training.GrpoBatches, "__call__", lambda self, state, step: _sigterm_at(
      lambda s, k: call(self, s, k), 1)(state, step))
  with pytest.raises(training.StagePreempted, match="stopped at step 1 of 3"):
    training.grpo(cfg, tiny_teacher, rewrites, mesh, str(tmp_path / "cut"))
  monkeypatch.setattr(training.GrpoBatches, "__call__", call)
  resumed, stats2 = training.grpo(cfg, tiny_teacher, rewrites, mesh, str(tmp_path / "cut"))
  assert _same(resumed, whole) and stats2 == stats
  again, stats3 = training.grpo(cfg, tiny_teacher, rewrites, mesh, str(tmp_path / "cut"))
  assert _same(again, whole) and stats3 == stats            # finished: restored, stats from its log
