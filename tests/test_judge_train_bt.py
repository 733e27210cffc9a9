"""The Bradley-Terry reward model (judge_train.method='bt') and hybrid human/AI labels
(judge_train.human_budget, judge_train.ai_labels): issue 39 item 2.

Same tiny random HF Llama and trivially learnable set as tests/test_judge_train.py (the worse
candidate speaks of poison).
"""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from earlyrl_jax import configs
from earlyrl_jax.errors import CheckpointError, ConfigError
from earlyrl_jax.judge_train import bradley_terry as BT
from earlyrl_jax.judge_train import data as D
from earlyrl_jax.judge_train import hybrid as H
from earlyrl_jax.judge_train import job as J
from tests.test_judge_train import easy_items, job_cfg, run_killed_at, tiny  # noqa: F401  (tiny: a fixture)


class FixedRewards:
  """A stand-in model whose rewards are given: bt_terms' loss as a function of them."""

  def __init__(self, r):
    self.r = r

  def rewards(self, tokens, last, axis, **kw):
    return self.r


def test_bt_loss_has_the_bradley_terry_value_sign_and_gradient():
  batch = {k: jnp.zeros((4, 8), jnp.int32) for k in ("tokens", "positions", "segment_ids")}
  batch.update(last=jnp.zeros((4,), jnp.int32), axis=jnp.zeros((2,), jnp.int32),
               is_pair=jnp.array([1.0, 0.0]), sign=jnp.array([1.0, -1.0]))
  # rows: (chosen 2.0, rejected 0.5) of a pair; a pointwise 'unsafe' item scored 1.0 (row 4 unused)
  r = jnp.array([2.0, 0.5, 1.0, 7.0])

  def loss(r):
    terms, _ = BT.bt_terms(FixedRewards(r), batch)
    return terms["bt"][0]

  sig = jax.nn.sigmoid
  np.testing.assert_allclose(loss(r), -np.log(sig(1.5)) - np.log(sig(-1.0)), rtol=1e-6)
  g = np.asarray(jax.grad(loss)(r))
  # Raising the chosen one's reward lowers the loss, the rejected one's raises it, by σ(r_j - r_c);
  # an 'unsafe' item's reward is pushed down; the unused row gets nothing.
  np.testing.assert_allclose(g, [-sig(-1.5), sig(-1.5), sig(1.0), 0.0], rtol=1e-6)
  assert loss(jnp.array([0.5, 2.0, 1.0, 7.0])) > loss(r)


class StubJudge:
  """An AI judge that is right on quality (prefers the candidate without poison) and has no
  opinion on safety (P(unsafe) 0.5: ties)."""

  def compare(self, prefixes, a, b, *, axis="quality", references=None):
    return [1.0 if "poison" in y and "poison" not in x else 0.0 if "poison" in x else 0.5
            for x, y in zip(a, b)]

  def pointwise(self, prefixes, texts):
    return [0.5] * len(texts)


def test_human_budget_keeps_that_many_human_labels_and_the_ai_judge_labels_the_rest():
  items = easy_items(20, 5)
  for i in (1, 4):   # the annotator's mistakes: AI agreement is measured against these labels
    items[i] = D.Pair(items[i].prefix, items[i].a, items[i].b,
                      {k: {"a": "b", "b": "a"}[v] for k, v in items[i].labels.items()})
  out, info = H.hybrid_items(items, budget=5, ai_labels="self", judge=StubJudge(),
                             axes=["quality", "safety"], seed=3)
  human, ai = out[:5], out[5:]
  assert info["human_items"] == 5 and info["ai_items"] == 15 and len(out) == 20
  assert info["human_labels"] == {"quality": 5, "factuality": 5, "safety": 5}
  kept, rest = H.split_budget(items, 5, 3)
  assert human == kept and len(rest) == 15 and all(h in items for h in human)   # labels unchanged
  assert [(x.prefix, x.a, x.b) for x in ai] == [(x.prefix, x.a, x.b) for x in rest]
  truth = [("a" if "poison" in x.b else "b") for x in rest]
  assert [x.labels for x in ai] == [{"quality": t, "safety": "tie"} for t in truth]
  wrong = sum(x.labels["quality"] != t for x, t in zip(rest, truth))
  agree = info["ai_agreement_with_human"]
  assert agree["quality"] == {"agreement": 1 - wrong / 15, "n": 15}
  assert agree["safety"] == {"agreement": 0.5, "n": 15}   # an AI tie counts half
  # Another seed keeps other items; 'none' trains on the budget's human labels alone.
  assert H.hybrid_items(items, budget=5, ai_labels="self", judge=StubJudge(), axes=["quality"],
                        seed=4)[0][:5] != human
  only, info = H.hybrid_items(items, budget=5, ai_labels="none", judge=None, axes=["quality"], seed=3)
  assert only == human and info["unlabelled_left_out"] == 15 and info["ai_items"] == 0


def test_bt_training_lifts_heldout_agreement_and_its_judge_labels_a_hybrid_set(tiny, tmp_path):
  work = str(tmp_path / "bt")
  cfg = job_cfg(tiny, method="bt", steps=40, learning_rate=3e-3, axes="quality,safety",
                heldout_items=16, human_budget=48)   # ai_labels 'none': 48 of the 64 items
  res = J.run(cfg, work)
  for axis in ("quality", "safety"):
    before, after = res["before"][axis]["agreement"], res["after"][axis]["agreement"]
    assert before < 0.8 and after >= 0.9, (axis, res["before"], res["after"])
  assert res["train"]["last"] < res["train"]["first"]
  assert res["data"]["hybrid"]["human_items"] == 48 == res["data"]["train_items"]
  assert res["data"]["hybrid"]["unlabelled_left_out"] == 16
  # The SFT/GRPO judges' shape: per axis agreement, ties, n.
  assert set(res["after"]["quality"]) == {"agreement", "ties", "n"}
  saved = json.load(open(os.path.join(work, "judge_agreement.json")))
  assert saved["after"] == res["after"]
  judge_dir = os.path.join(work, "judge")
  assert {"model.safetensors", "config.json", BT.HEAD_FILE, "judge_train.json"} <= set(os.listdir(judge_dir))
  # The written reward model, reloaded, scores as the job measured.
  from earlyrl_jax.judge_train import agreement as A
  rm = BT.load_reward_model(judge_dir, max_len=1024, prefix_tokens=512)
  held = D.read_items(tiny["held"])
  again = A.heldout_agreement(rm, held, axes=("quality", "safety"), limit=16)
  assert {k: v["agreement"] for k, v in again.items()} == {k: res["after"][k]["agreement"] for k in again}
  # The trained reward model as another job's AI labeller: 8 human labels, 56 from it.
  res2 = J.run(job_cfg(tiny, method="bt", steps=1, axes="quality,safety", heldout_items=2,
                       human_budget=8, ai_labels=judge_dir), str(tmp_path / "hybrid"))
  hy = res2["data"]["hybrid"]
  assert (hy["human_items"], hy["ai_items"], res2["data"]["train_items"]) == (8, 56, 64)
  assert hy["human_labels"]["quality"] == 8 and hy["ai_label_counts"]["quality"] == 56
  assert hy["ai_agreement_with_human"]["quality"]["agreement"] >= 0.9, hy


def test_bad_hybrid_and_bt_settings_name_the_field(tiny, tmp_path):
  def cfg_with(**kw):
    return ml_collections.ConfigDict({"mode": "judge_train", "seed": 0, "judge_train": J.section(**kw)})

  with pytest.raises(ConfigError, match=r"judge_train\.human_budget"):
    configs.validate_fields(cfg_with(human_budget=-1))
  with pytest.raises(ConfigError, match=r"judge_train\.ai_labels: 'self' labels the items beyond"):
    configs.validate_fields(cfg_with(ai_labels="self"))
  with pytest.raises(ConfigError, match=r"judge_train\.method: 'btt' is not one of"):
    configs.validate_fields(cfg_with(method="btt"))
  configs.validate_fields(cfg_with(method="bt", human_budget=4, ai_labels="self"))
  with pytest.raises((ConfigError, CheckpointError), match=r"judge_train\.ai_labels"):
    J.run(job_cfg(tiny, human_budget=4, ai_labels=str(tmp_path / "no_judge")), str(tmp_path / "w"))
  with pytest.raises(FileNotFoundError, match="not a Bradley-Terry judge"):
    BT.load_reward_model(tiny["hf"])


def test_a_killed_bt_run_resumes_to_the_uninterrupted_head_and_self_labels(tiny, tmp_path, monkeypatch, capsys):
  kw = dict(method="bt", steps=6, checkpoint_every=3, axes="quality,safety", heldout_items=2, log_every=2)
  J.run(job_cfg(tiny, **kw), str(tmp_path / "whole"))
  run_killed_at(monkeypatch, BT.BtBatches, 4, job_cfg(tiny, **kw), str(tmp_path / "killed"))
  capsys.readouterr()
  J.run(job_cfg(tiny, **kw), str(tmp_path / "killed"))
  assert "resumed from step 3" in capsys.readouterr().out
  a = np.load(str(tmp_path / "whole" / "judge" / BT.HEAD_FILE))
  b = np.load(str(tmp_path / "killed" / "judge" / BT.HEAD_FILE))
  assert list(a["axes"]) == list(b["axes"]) == ["quality", "safety"]
  np.testing.assert_allclose(a["w"], b["w"], rtol=0, atol=1e-6)
  np.testing.assert_allclose(a["b"], b["b"], rtol=0, atol=1e-6)
  # 'self': the model being trained labels the items beyond the budget, as its log-prob judge.
  res = J.run(job_cfg(tiny, **{**kw, "steps": 1}, human_budget=60, ai_labels="self"), str(tmp_path / "self"))
  hy = res["data"]["hybrid"]
  assert (hy["human_items"], hy["ai_items"]) == (60, 4) and hy["ai_label_counts"]["quality"] <= 4
  assert set(hy["ai_agreement_with_human"]) == {"quality", "safety"}
