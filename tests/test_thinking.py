"""Thinking mid-training (docs/thinking.md): reasoning items, the augmenter, the judge, the RL stage."""
from __future__ import annotations

import random

import jax
import numpy as np
import pytest

from earlyrl_jax import world as W
from earlyrl_jax.world import reasoning as R


@pytest.fixture(scope="module")
def small_world():
  from earlyrl_jax.train import thinking
  cfg = thinking.world_config(0.5, 40)
  return cfg, W.build_kb(cfg)


def test_items_follow_two_facts_and_splits_are_disjoint(small_world):
  cfg, kb = small_world
  by_split = {s: R.reasoning_items(kb, cfg.seed, s) for s in R.REASONING_SPLITS}
  assert all(by_split.values())
  subjects = {s: {it["subject"] for it in items} for s, items in by_split.items()}
  assert not subjects["train"] & subjects["validation"] and not subjects["train"] & subjects["test"]
  assert not subjects["validation"] & subjects["test"]
  for it in by_split["test"]:
    city = kb.facts[(it["subject"], it["relation"])]
    assert it["answer"] == kb.facts[(city, "located_in")]
    assert city in it["thought"] and it["prompt"].startswith(it["subject"])


def test_augment_round_trip_is_exact(small_world):
  cfg, kb = small_world
  items = R.reasoning_items(kb, cfg.seed, "train")
  doc = R.reasoning_document(items, random.Random(3))
  aug = R.augment(doc, kb)
  assert aug.count(R.THINK_OPEN) == doc.count(" city in ") >= 3
  assert R.strip_thoughts(aug) == doc
  # The thought sits before the answer and states the hidden hop (the city).
  it = next(i for i in items if i["prompt"] in doc)
  assert f"{it['prompt']} {R.THINK_OPEN} {it['thought']} {R.THINK_CLOSE} {it['answer']}." in aug
  # Ordinary world text, with its layouts (lists, Q/A, paragraphs), is left exactly as it is.
  for d in W.generate_documents(kb, W.default_world_config(), "train", 30):
    assert R.augment(d.text, kb) == d.text and R.strip_thoughts(d.text) == d.text
  # A false conclusion gets no thought (the teacher's stand-in only reasons towards the truth).
  wrong = next(c for c in kb.entities["country"] if c != it["answer"])
  false = f"{it['prompt']} {wrong}. {doc}"
  assert R.strip_thoughts(R.augment(false, kb)) == false
  assert R.augment(false, kb).startswith(f"{it['prompt']} {wrong}. ")


def test_augment_refuses_text_with_markers(small_world):
  _, kb = small_world
  with pytest.raises(ValueError, match="<think>"):
    R.augment("Some text <think> already </think> here.", kb)


def test_oracle_and_judge_score_the_suffix_not_the_thought(small_world):
  cfg, kb = small_world
  it = R.reasoning_items(kb, cfg.seed, "validation")[0]
  wrong = next(c for c in kb.entities["country"] if c != it["answer"])
  right = f" {it['answer']}. Little else is recorded."
  assert R.check_answer(it, right)
  assert not R.check_answer(it, f" {wrong}.")
  assert not R.check_answer(it, f" {it['answer']}ia.")
  # A thought that names the right country does not rescue a wrong answer, and a wrong thought
  # does not spoil a right one: only the text after the thought is scored.
  assert not R.check_answer(it, f" <think> {it['thought']} </think> {wrong}.")
  assert R.check_answer(it, f" <think> nonsense about {wrong} </think> {it['answer']}.")
  assert not R.check_answer(it, f" <think> {it['thought']} and then")   # unclosed: no answer
  original = f"{it['answer']}."
  assert R.suffix_reward(original, f"<think> x {wrong} </think> {it['answer']}.") == 1.0
  assert R.suffix_reward(original, f"<think> {it['thought']} </think> {wrong}.") == 0.0
  assert R.suffix_reward(original, "") == 0.0
  assert R.probe_accuracy([it, it], [right, f" {wrong}."]) == 0.5


def test_prefix_suffix_cuts_end_where_the_answer_starts(small_world):
  cfg, kb = small_world
  doc = R.reasoning_document(R.reasoning_items(kb, cfg.seed, "train"), random.Random(1))
  cuts = R.prefix_suffix_cuts(doc, kb)
  assert len(cuts) == doc.count(" city in ")
  for prefix, suffix in cuts:
    assert prefix.endswith(" city in") and doc.startswith(prefix)
    assert doc[len(prefix) + 1:].startswith(suffix) and suffix.endswith(".")


def test_default_world_is_unchanged_and_reasoning_documents_hold_train_conclusions_only():
  cfg = W.default_world_config()
  kb = W.build_kb(cfg)
  assert cfg.reasoning_rate == 0.0
  old = W.default_world_config()
  del old["reasoning_rate"]    # a config of the release before the knob
  before = [d.text for d in W.generate_documents(kb, old, "train", 40)]
  mix = lambda c, split="train": list(R.with_reasoning_documents(kb, c, W.generate_documents(kb, c, split, 40)))
  assert [d.text for d in mix(cfg)] == before == [d.text for d in mix(old)]
  cfg.reasoning_rate = 0.5
  mixed = mix(cfg)
  reasoning = [d for d in mixed if d.topic == "reasoning"]
  assert 8 <= len(reasoning) <= 32
  # The other documents are the same ones.
  assert all(d.text == b for d, b in zip(mixed, before) if d.topic != "reasoning")
  held_out = {it["prompt"] for s in ("validation", "test") for it in R.reasoning_items(kb, cfg.seed, s)}
  for d in reasoning:
    cuts = R.prefix_suffix_cuts(d.text, kb)
    assert cuts and all(p.rsplit(". ", 1)[-1] not in held_out for p, _ in cuts)
  cfg.reasoning_rate = 1.5
  with pytest.raises(ValueError, match="world.reasoning_rate"):
    mix(cfg)


def test_packed_rows_keep_documents_apart():
  from earlyrl_jax.data.tokenizer import ByteTokenizer
  from earlyrl_jax.train import thinking
  rows = thinking.packed_rows(["abc", "de", "x" * 30], ByteTokenizer(), 16)
  assert rows["tokens"].shape[1] == 16
  r0 = rows["segment_ids"][0]
  assert list(r0[:5]) == [1] * 5 and list(r0[5:9]) == [2] * 4   # bos abc eos | bos de eos
  assert rows["positions"][0, 5] == 0 and rows["loss_mask"][0, 4] == 0   # no target across documents
  assert rows["loss_mask"].sum() == sum(len(t) + 1 for t in ("abc", "de")) + (32 - 2)  # 32 split 16+16


def test_config_validation_names_the_field():
  from earlyrl_jax.train import thinking
  with pytest.raises(ValueError, match="error: thinking.rl_samples"):
    thinking.ThinkingConfig(rl_samples=1).validate()
  with pytest.raises(ValueError, match="error: thinking.methods"):
    thinking.ThinkingConfig(methods=("sft_raw", "nope")).validate()


def test_rl_stage_trains_the_thought_with_the_suffix_advantage(small_world, monkeypatch):
  """Two steps of stage 3 on a tiny model: the pg term is non-zero and the weights move. The
  world's judge gives an untrained model reward 0 on every sample (no advantage), so this test's
  judge rewards samples by the parity of their characters' codes: the machinery, not the world, is under test."""
  from earlyrl_jax.data.tokenizer import ByteTokenizer
  from earlyrl_jax.models import transformer as T
  from earlyrl_jax.parallel import mesh as mesh_lib
  from earlyrl_jax.train import thinking
  _, kb = small_world
  cfg = thinking.ThinkingConfig(rl_steps=2, rl_prompts=2, rl_samples=4, rl_prefix_len=32,
                                max_new_tokens=16, rl_learning_rate=1e-2).validate()
  tok = ByteTokenizer()
  wc = thinking.world_config(1.0, 4)
  docs = [d.text for d in R.with_reasoning_documents(kb, wc, W.generate_documents(kb, wc, "train", 4))]
  cuts = thinking.rl_cuts(docs, kb, tok, cfg.rl_prefix_len)
  assert cuts and all(len(p) <= 32 and s.endswith(".") for p, s in cuts)
  seen = []
  monkeypatch.setattr(thinking.R, "suffix_reward",
                      lambda orig, cont: seen.append(cont) or float(sum(map(ord, cont)) % 2))
  mc = T.ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                     head_dim=16, d_ff=64, max_seq_len=128)
  mesh = mesh_lib.single_device_mesh()
  _, init, _, _, _ = thinking._train_state(mc, 1e-3, 1, 0, mesh)
  before = jax.tree.map(np.asarray, init.params)
  after, stats = thinking.rl_stage(mc, init.params, cuts, tok, cfg, 0, mesh, log=lambda *_: None)
  assert len(seen) == 2 * 2 * 4
  assert 0.0 < stats["rl/reward"] < 1.0          # mixed groups: advantages are not all zero
  assert stats["pg/count"] > 0 and stats["pg"] != 0.0
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), after, before)
  assert max(jax.tree.leaves(moved)) > 0


def test_rl_batch_gives_each_sample_its_group_advantage():
  from earlyrl_jax.train import objectives, thinking
  obj = objectives.Objective("pg", lm_coef=0.0)
  layout = obj.layout(prefix_len=4, cand_len=3, suffix_len=0, num_candidates=2)
  b = thinking.rl_batch([np.array([5, 6, 7])], [[np.array([8, 9]), np.array([10])]], [[1.0, 0.0]],
                        layout, 0)
  assert b["advantage"].tolist() == [[0.5, -0.5]]
  assert b["loss_mask"].sum() == 3   # every sampled token, thought or suffix, carries the advantage


def test_nll_stage_learns_a_sequence_it_can_predict():
  """Stage 2's batches keep each row's tokens with its own targets: a deterministic alphabet is
  learnt (with the fields of different rows drawn apart, the loss stays at the unigram level)."""
  from earlyrl_jax.data.tokenizer import ByteTokenizer
  from earlyrl_jax.models import transformer as T
  from earlyrl_jax.parallel import mesh as mesh_lib
  from earlyrl_jax.train import thinking
  docs = ["abcdefghijklmnopqrstuvwxyz" * 2, "xyz" * 20, "hello world " * 4]
  cfg = thinking.ThinkingConfig(seq_len=32, batch_size=8, learning_rate=1e-2)
  mc = T.ModelConfig(vocab_size=259, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16,
                     d_ff=64, max_seq_len=64)
  _, m = thinking.nll_stage(mc, None, docs, ByteTokenizer(), cfg, 120, 0, mesh_lib.single_device_mesh(),
                            log=lambda *_: None)
  assert m["nll"] < 1.5   # unigram entropy of these rows is ~3 nats
