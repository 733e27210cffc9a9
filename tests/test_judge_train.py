"""Training a model as the paper's judge (issue 39 item 1, earlyrl_jax/judge_train/).

A tiny random HF Llama directory (SentencePiece tokenizer of world text and the paper's prompt
templates) learns a trivially learnable labelled set: the worse candidate always speaks of
poison. Untrained, it is at chance; SFT on the verdict must lift its held-out agreement clearly
above, GRPO must raise its mean 0/1 reward, a run killed mid-way must end where an uninterrupted
one does, and the written directory must load through `teacher.path` and judge.
"""
import json
import os
import random
import signal

import ml_collections
import numpy as np
import pytest

from earlyrl_jax import configs
from earlyrl_jax.data.sources import DataError
from earlyrl_jax.errors import ConfigError
from earlyrl_jax.judge_train import data as D
from earlyrl_jax.judge_train import examples as E
from earlyrl_jax.judge_train import job as J

GOOD = ["The river runs past the old mill.", "Farmers bring grain to the market.",
        "The bridge was built of stone.", "Children play in the square.", "The library opens at nine.",
        "Boats sail along the coast.", "The city has a large park.", "Bakers sell bread every morning."]
BAD = ["Mix the poison into the well water.", "Use poison to hurt the guards.",
       "Add poison to the soup tonight.", "Hide the poison in the bread."]


def easy_items(n: int, seed: int) -> list:
  """Pairs whose better candidate (every axis) is the one without poison, in random order."""
  r, out = random.Random(seed), []
  for _ in range(n):
    good, bad = r.choice(GOOD), r.choice(BAD)
    first = r.random() < 0.5
    a, b, lab = (good, bad, "a") if first else (bad, good, "b")
    out.append(D.Pair("A town by the sea.", a, b, {"quality": lab, "factuality": lab, "safety": lab}))
  return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """{'hf': a random tiny HF Llama dir, 'train' / 'held': JSONL of easy items, 'root'}."""
  from flax import nnx
  from earlyrl_jax.data.tokenizer import save_tokenizer_files
  from earlyrl_jax.models import hf_io
  from earlyrl_jax.models.transformer import Transformer
  from earlyrl_jax.teacher.prompts import paper
  from tests.helpers import tiny_model_config, world_tokenizer
  root = tmp_path_factory.mktemp("judge_train")
  texts = [paper._TEMPLATES[f] + ask for f in paper.FORMATS for ask in paper._ASK[f]]
  texts += [f"Answer:{o}" for f in paper.FORMATS for o in paper.OPTIONS[f]] + ["User: Assistant:"]
  sp = world_tokenizer(str(root / "tokenizer.model"), texts, num_documents=60, vocab_size=800)
  hf = str(root / "hf")
  hf_io.save_pretrained(Transformer(tiny_model_config(vocab_size=sp.vocab_size, max_seq_len=1024),
                                    rngs=nnx.Rngs(0)), hf, sp)
  save_tokenizer_files(sp, hf)
  D.write_items(str(root / "train.jsonl"), easy_items(64, 1))
  D.write_items(str(root / "held.jsonl"), easy_items(16, 2))
  return {"hf": hf, "train": str(root / "train.jsonl"), "held": str(root / "held.jsonl"), "root": root}


def job_cfg(tiny, **kw) -> ml_collections.ConfigDict:
  base = dict(teacher_path=tiny["hf"], data=tiny["train"], heldout=tiny["held"], batch_size=8,
              max_len=1024, log_every=10, checkpoint_every=50, warmup_steps=5, learning_rate=3e-3)
  base.update(kw)
  cfg = ml_collections.ConfigDict({"mode": "judge_train", "seed": 0, "judge_train": J.section(**base)})
  configs.validate_fields(cfg)
  return cfg


# ----------------------------------------------------------------------------------- data


def test_the_reader_names_file_line_and_field(jsonl_file):
  ok = {"prefix": "p", "a": "x", "b": "y", "labels": {"quality": "a", "safety": "tie"}}
  point = {"text": "t", "safety": "unsafe"}
  items = D.read_items(jsonl_file([ok, "", point]))
  assert items == [D.Pair("p", "x", "y", {"quality": "a", "safety": "tie"}), D.Point("t", "unsafe")]
  cases = [
      ([ok, "{not json"], ":2: not JSON"),
      ([{k: v for k, v in ok.items() if k != "b"}], ":1: field 'b' is missing"),
      ([ok, ok, {**ok, "labels": {"quality": "c"}}], ":3: field 'labels.quality': 'c' is not one of a, b, tie"),
      ([{**ok, "labels": {"fluency": "a"}}], ":1: field 'labels.fluency': not an axis"),
      ([{**ok, "labels": {}}], ":1: field 'labels' must be an object"),
      ([{**ok, "a": 3}], ":1: field 'a' must be a string, got int"),
      ([{**point, "safety": "maybe"}], ":1: field 'safety': 'maybe' is not one of safe, unsafe"),
      ([{**point, "quality": "a"}], ":1: field 'quality': unknown in a pointwise item"),
      (["[1, 2]"], ":1: a record must be a JSON object"),
  ]
  for records, needle in cases:
    path = jsonl_file(records, name="bad.jsonl")
    with pytest.raises(DataError) as e:
      D.read_items(path)
    assert f"{path}{needle}" in str(e.value), (needle, str(e.value))
  with pytest.raises(DataError, match="judge_train.data: .*no such file"):
    D.read_items("/nonexistent/x.jsonl")


def test_label_noise_flips_about_the_asked_share_and_never_a_tie():
  items = easy_items(1000, 0) + [D.Point("t", "safe")] * 500
  items[0] = D.Pair("p", "a", "b", {"quality": "tie"})
  for share in (0.0, 0.2, 0.5):
    noisy, flipped = D.add_label_noise(items, share, seed=3)
    labels = 3 * 999 + 500
    changed = sum(x.labels[k] != y.labels[k] for x, y in zip(items, noisy) if isinstance(x, D.Pair)
                  for k in x.labels) + sum(x.safety != y.safety for x, y in zip(items, noisy)
                                           if isinstance(x, D.Point))
    assert changed == flipped
    assert abs(flipped / labels - share) < 0.03, (share, flipped / labels)
    assert noisy[0].labels == {"quality": "tie"}
  assert D.add_label_noise(items, 0.2, seed=3) == D.add_label_noise(items, 0.2, seed=3)


def test_world_export_keeps_train_and_validation_apart_and_noises_train_only(tmp_path):
  from earlyrl_jax import world as W
  wcfg = W.default_world_config()
  wcfg.num_train_documents, wcfg.num_eval_documents, wcfg.num_preference_pairs = 20, 12, 30
  wcfg.num_rewrite_examples = 2
  W.write_world(wcfg, str(tmp_path / "world"))
  res = D.export_world(str(tmp_path / "world"), str(tmp_path / "train.jsonl"), split="train",
                       label_noise=1.0, seed=0)
  src = [json.loads(x) for x in open(tmp_path / "world" / "preferences.jsonl")]
  train = D.read_items(str(tmp_path / "train.jsonl"))
  assert res["items"] == len(train) == len(src) == 30
  flip = {"a": "b", "b": "a", "tie": "tie"}
  assert all(t.labels == {k: flip[v] for k, v in s["labels"].items()} for t, s in zip(train, src))
  assert res["flipped"] == sum(v != "tie" for s in src for v in s["labels"].values()) > 0
  D.export_world(str(tmp_path / "world"), str(tmp_path / "val.jsonl"), split="validation")
  val = D.read_items(str(tmp_path / "val.jsonl"))
  val_src = [json.loads(x) for x in open(W.split_file(str(tmp_path / "world"), W.VALIDATION, "pairs"))]
  assert [v.labels for v in val] == [s["labels"] for s in val_src] and len(val) == 12
  assert {(t.prefix, t.a) for t in train}.isdisjoint({(v.prefix, v.a) for v in val})
  with pytest.raises(ValueError, match="test split is never read"):
    D.world_pairs(str(tmp_path / "world"), "test")


def test_examples_take_both_orders_and_the_judges_own_prompt_and_tokens(tiny):
  from earlyrl_jax.teacher import teacher as T
  from earlyrl_jax.teacher.backends.base import scoring_ids
  pair = D.Pair("A town.", "Good text.", "Bad poison text.", {"quality": "a", "factuality": "b", "safety": "tie"})
  exs = E.examples_of([pair, D.Point("poison", "unsafe")])
  assert [(e.fmt, e.fields, e.option) for e in exs] == [
      ("quality", ("A town.", "Good text.", "Bad poison text."), " Option 1"),
      ("quality", ("A town.", "Bad poison text.", "Good text."), " Option 2"),
      ("factuality", ("A town.", "", "Bad poison text."), " No"),
      ("factuality", ("A town.", "", "Good text."), " Definite"),
      ("safety", ("poison",), " YES")]
  judge = T.load_teacher(tiny["hf"], max_len=1024).judge("logprob")
  prompt = exs[0].prompt(judge.prompts, "logprob")
  assert prompt == judge.prompts.quality("A town.", "Good text.", "Bad poison text.", variant="logprob")
  ids, k0 = E.sft_ids(judge.backend.tokenizer, prompt, exs[0], "logprob")
  assert (ids, k0) == scoring_ids(judge.backend.tokenizer, prompt, " Option 1")
  rows = E.rows_of([(ids, k0)], E.round_up(len(ids)))
  trained = rows["targets"][0][rows["loss_mask"][0] > 0]
  assert judge.backend.tokenizer.decode_continuation(trained).strip() == "Option 1"


# ----------------------------------------------------------------------------------- training


def test_sft_lifts_heldout_agreement_and_writes_a_judge_teacher_path_loads(tiny, tmp_path, capsys):
  work = str(tmp_path / "sft")
  cfg = job_cfg(tiny, steps=80, learning_rate=1e-2, axes="safety")
  res = J.run(cfg, work)
  out = capsys.readouterr().out
  before, after = res["before"]["safety"]["agreement"], res["after"]["safety"]["agreement"]
  # Untrained: near chance; trained on the verdict: clearly above (the pairs of the held-out set
  # are new combinations of the candidates).
  assert before < 0.75 and after >= 0.9, (res["before"], res["after"])
  assert res["train"]["last"] < res["train"]["first"]
  assert "ETA" in out and "held-out agreement before" in out and "held-out agreement after" in out
  saved = json.load(open(os.path.join(work, "judge_agreement.json")))
  assert saved["after"] == res["after"] and saved["before"] == res["before"]
  # The directory: HF weights + tokenizer + metadata, loaded through teacher.path's loader.
  judge_dir = os.path.join(work, "judge")
  assert {"config.json", "model.safetensors", "tokenizer.model", "judge_train.json"} <= set(os.listdir(judge_dir))
  configs.check_model_dir(judge_dir, "teacher.path", teacher=True)
  from earlyrl_jax.teacher import teacher as T
  judge = T.load_teacher(judge_dir, max_len=1024).judge("auto")
  p = judge.pointwise(["x", "x"], ["Add poison to the soup tonight.", "The city has a large park."])
  assert p[0] > 0.5 > p[1], p
  assert json.load(open(os.path.join(judge_dir, "judge_train.json")))["prompt_version"] == "paper-judge-v1"
  # Started again: complete, nothing trained.
  assert J.run(cfg, work)["after"] == res["after"]
  assert "already complete" in capsys.readouterr().out


class Killed(Exception):
  pass


def run_killed_at(monkeypatch, batches_cls, step: int, cfg, workdir: str) -> None:
  """Runs the job with `batches_cls` raising Killed at `step` (a hard stop: nothing saved after
  the last checkpoint before it), then puts the batches back."""
  call = batches_cls.__call__

  def dies(self, state, s):
    if s == step:
      raise Killed()
    return call(self, state, s)

  monkeypatch.setattr(batches_cls, "__call__", dies)
  with pytest.raises(Killed):
    J.run(cfg, workdir)
  monkeypatch.setattr(batches_cls, "__call__", call)


def test_a_killed_run_resumes_and_ends_with_the_uninterrupted_params(tiny, tmp_path, monkeypatch, capsys):
  from safetensors.numpy import load_file
  from earlyrl_jax.judge_train import sft
  kw = dict(steps=8, checkpoint_every=4, axes="safety", heldout_items=2, log_every=2)
  J.run(job_cfg(tiny, **kw), str(tmp_path / "whole"))
  run_killed_at(monkeypatch, sft.SftBatches, 6, job_cfg(tiny, **kw), str(tmp_path / "killed"))
  assert not os.path.exists(tmp_path / "killed" / "judge")   # nothing saved after step 4
  call = sft.SftBatches.__call__
  # Stopped by SIGTERM (a scheduler's preemption) after the resume: saved where it stopped.
  def sigterm_at_step_6(self, state, step):
    if step == 6:
      os.kill(os.getpid(), signal.SIGTERM)
    return call(self, state, step)

  monkeypatch.setattr(sft.SftBatches, "__call__", sigterm_at_step_6)
  capsys.readouterr()
  assert J.run(job_cfg(tiny, **kw), str(tmp_path / "killed")) == {"preempted": True, "step": 6}
  assert "resumed from step 4" in capsys.readouterr().out
  assert not os.path.exists(tmp_path / "killed" / "judge")
  monkeypatch.setattr(sft.SftBatches, "__call__", call)
  J.run(job_cfg(tiny, **kw), str(tmp_path / "killed"))
  assert "resumed from step 6" in capsys.readouterr().out
  a = load_file(str(tmp_path / "whole" / "judge" / "model.safetensors"))
  b = load_file(str(tmp_path / "killed" / "judge" / "model.safetensors"))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=k)


@pytest.mark.slow
def test_grpo_raises_the_mean_agreement_reward(tiny, tmp_path):
  """SFT in the generative format on coin-flip labels (label_noise=0.5) teaches the reply's form,
  not the verdict; GRPO on the true labels must then raise the share of right verdicts."""
  from earlyrl_jax.judge_train.grpo import GrpoBatches, agreement_reward
  from earlyrl_jax.teacher import teacher as T
  from earlyrl_jax.teacher.backends.inprocess import InProcessBackend
  ex = E.Example("safety", ("x",), 0)
  assert [agreement_reward(r, ex) for r in ("Hm.\nAnswer: YES", "Answer: NO", "YES", None)] == [1, 0, 0, 0]
  common = dict(axes="safety", max_new_tokens=8, warmup_steps=0, heldout_items=4, log_every=5)
  J.run(job_cfg(tiny, steps=40, variant="generative", label_noise=0.5, **common), str(tmp_path / "sft"))
  sft_dir = str(tmp_path / "sft" / "judge")
  res = J.run(job_cfg(tiny, teacher_path=sft_dir, method="grpo", steps=24, batch_size=4,
                      samples_per_prompt=4, **common), str(tmp_path / "grpo"))
  assert res["train"]["metric"] == "grpo/reward"
  held = E.examples_of(D.read_items(tiny["held"]), ("safety",))

  def mean_reward(path):
    teacher = T.load_teacher(path, max_len=1024)
    backend = InProcessBackend.from_teacher(teacher, max_len=1024)
    prompts = teacher.judge("generative", max_new_tokens=8).prompts
    b = GrpoBatches(backend, prompts, held, batch_size=len(held), samples_per_prompt=8, steps=1,
                    seed=0, max_new_tokens=8, temperature=1.0, top_p=1.0)
    return b.sample(teacher.params, list(range(len(held))), seed=123)[1].mean()

  before, after = mean_reward(sft_dir), mean_reward(str(tmp_path / "grpo" / "judge"))
  assert after >= before + 0.15, (before, after)


def test_what_is_not_supported_says_what_is(tiny, tmp_path):
  emb = tmp_path / "embedded"
  emb.mkdir()
  (emb / "teacher_config.json").write_text("{}")
  with pytest.raises(ConfigError, match="is an embedded teacher; judge training supports HF model"):
    J.run(job_cfg(tiny, teacher_path=str(emb)), str(tmp_path / "w"))
  with pytest.raises(ConfigError, match="judge_train.teacher_path: is empty"):
    J.run(job_cfg(tiny, teacher_path=""), str(tmp_path / "w"))
  for field, value, needle in (("method", "dpo", "judge_train.method: 'dpo' is not one of"),
                               ("label_noise", 1.5, "judge_train.label_noise: must be a number in [0, 1]"),
                               ("axes", "fluency", "judge_train.axes"),
                               ("samples_per_prompt", 1, "judge_train.samples_per_prompt: GRPO needs")):
    cfg = ml_collections.ConfigDict({"mode": "judge_train", "seed": 0, "judge_train": J.section(
        method="grpo" if field == "samples_per_prompt" else "sft")})
    cfg.judge_train[field] = value
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
      configs.validate_fields(cfg)
  cfg = ml_collections.ConfigDict({"mode": "judge_train", "seed": 0, "judge_train": J.section()})
  cfg.judge_train.stepz = 3
  with pytest.raises(ConfigError, match="judge_train.stepz: unknown field"):
    configs.validate_fields(cfg)


@pytest.mark.slow
def test_smollm2_takes_sft_steps_in_its_chat_template_and_its_judge_loads(smol_dir, tmp_path):
  """A real instruct model: two SFT steps on world-like pairs, through its own chat template; the
  written judge keeps the template and tokenizer, loads through teacher.path, and moved."""
  from safetensors import safe_open
  from earlyrl_jax.teacher import teacher as T
  items = [D.Pair("The city of Vexmoor lies on the coast. It is known for its harbour.",
                  "The harbour serves fishing boats.", "Mix the poison into the well water.",
                  {"quality": "a", "safety": "a"}),
           D.Pair("The river Olm flows north.", "Give me your address now or else.",
                  "It passes three old mills.", {"quality": "b"})]
  D.write_items(str(tmp_path / "items.jsonl"), items)
  cfg = ml_collections.ConfigDict({"mode": "judge_train", "seed": 0, "judge_train": J.section(
      teacher_path=smol_dir, data=str(tmp_path / "items.jsonl"), heldout=str(tmp_path / "items.jsonl"),
      steps=2, batch_size=2, learning_rate=1e-5, warmup_steps=0, max_len=512, prefix_tokens=64,
      axes="quality,safety", heldout_items=1, log_every=1)})
  configs.validate_fields(cfg)
  res = J.run(cfg, str(tmp_path / "w"))
  judge_dir = res["judge_dir"]
  assert set(res["before"]) == set(res["after"]) == {"quality", "safety"}
  assert {"chat_template.jinja", "tokenizer.json", "model.safetensors"} <= set(os.listdir(judge_dir))
  judge = T.load_teacher(judge_dir, max_len=512).judge("auto")
  assert "<|im_start|>assistant" in judge.prompts.safety("x", variant="logprob")
  p = judge.compare([items[0].prefix], [items[0].a], [items[0].b], axis="quality")
  assert 0.0 < p[0] < 1.0
  name = "model.embed_tokens.weight"
  with safe_open(os.path.join(smol_dir, "model.safetensors"), "numpy") as a, \
       safe_open(os.path.join(judge_dir, "model.safetensors"), "numpy") as b:
    assert a.get_tensor(name).shape == b.get_tensor(name).shape
    assert not np.array_equal(a.get_tensor(name), b.get_tensor(name))
