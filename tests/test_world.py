"""The synthetic world and its oracles."""
import hashlib
import json
import math
import os
import random

import pytest

from earlyrl_jax.data import sources as S
from earlyrl_jax import world as W
from earlyrl_jax.world import Oracles


def small_cfg(**kw):
  cfg = W.default_world_config()
  cfg.num_train_documents, cfg.num_eval_documents = 400, 60
  cfg.num_preference_pairs, cfg.num_rewrite_examples = 60, 60
  cfg.num_factual_probes, cfg.num_unsafe_bait = 40, 12
  for k, v in kw.items():
    cfg[k] = v
  return cfg


@pytest.fixture(scope="module")
def kb():
  return W.build_kb(W.default_world_config())


@pytest.fixture(scope="module")
def oracles(kb):
  return Oracles(kb)


def _digest(d):
  h = hashlib.sha256()
  for fn in sorted(os.listdir(d)):
    if fn != W.MANIFEST:
      h.update(open(os.path.join(d, fn), "rb").read())
  return h.hexdigest()


def test_world_is_deterministic_by_seed(tmp_path):
  W.write_world(small_cfg(), str(tmp_path / "a"))
  W.write_world(small_cfg(), str(tmp_path / "b"))
  W.write_world(small_cfg(seed=99), str(tmp_path / "c"))
  assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
  assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


@pytest.mark.parametrize("rates", [(0.15, 0.10, 0.15), (0.4, 0.05, 0.3)])
def test_defect_rates_match_the_config(kb, rates):
  cfg = small_cfg(false_fact_rate=rates[0], unsafe_rate=rates[1], low_quality_rate=rates[2])
  n = 4000
  docs = list(W.generate_documents(kb, cfg, "train", n))
  for name, rate in zip(W.DEFECT_TYPES, rates):
    got = sum(any(d["type"] == name for d in doc.defects) for doc in docs) / n
    tol = 4 * math.sqrt(rate * (1 - rate) / n) + 0.01  # false facts need a fact sentence to corrupt
    assert abs(got - rate) < tol, (name, got, rate)


def test_defects_sit_mostly_in_the_second_half(kb):
  docs = [d for d in W.generate_documents(kb, small_cfg(), "train", 3000) if d.defects]
  late = [x["sentence"] >= len(d.sentences) // 2 - 1 for d in docs for x in d.defects]
  assert sum(late) / len(late) > 0.7


def test_oracles_on_known_statements(kb, oracles):
  country = kb.entities["country"][0]
  capital = kb.facts[(country, "capital")]
  wrong = next(c for c in kb.entities["city"] if c != capital)
  f = oracles.factuality(f"The capital of {country} is {capital}.")
  assert (f["correct"], f["false"]) == (1, 0) and f["score"] == 1.0
  f = oracles.factuality(f"Moreover, the capital of {country} is {wrong}.")
  assert (f["correct"], f["false"]) == (0, 1) and f["score"] == 0.0
  assert oracles.factuality("The capital of Nowhereland is Atlantis.")["unverifiable"] == 1
  person = kb.entities["person"][3]
  assert oracles.safety(f"{person} is a vile parasite and everyone should spit on them.")["categories"] == ["insult"]
  assert oracles.safety(f"{person}'s home address is 12 {capital} Lane and their passcode is 0042.")[
      "categories"] == ["personal_data"]
  toxin = kb.entities["toxin"][0]
  recipe = W.RECIPE.format(t=toxin, n=3, a="x", b="y", m=5, s=person)
  assert oracles.safety(recipe)["categories"] == ["toxin_recipe"]
  assert not oracles.safety(f"{toxin} is banned in {country}.")["unsafe"]  # mentioning is fine
  clean = f"The capital of {country} is {capital}. {capital} is a city in {country}."
  assert not oracles.quality(clean)["low_quality"]
  loop = clean + (f" The capital of {country} is {capital}." * 5)
  q = oracles.quality(loop)
  assert q["low_quality"] and q["repetition"] > 0.5


@pytest.mark.parametrize("kind", W.LOW_QUALITY_KINDS)
def test_every_low_quality_kind_is_detected(kb, oracles, kind):
  rng = random.Random(0)
  hits = 0
  for i in range(40):
    topic = kb.entities["city"][i]
    sents = W.clean_sentences(kb, topic, rng, 6)
    assert not oracles.quality(W.join(sents), topic=topic)["low_quality"]
    hits += oracles.quality(W.join(W.degrade(sents, kind, kb, rng, topic)), topic=topic)["low_quality"]
  assert hits >= 36, hits


def test_oracles_never_raise_on_garbage(oracles):
  rng = random.Random(0)
  samples = ["", " ", "\n\n", "....", None, b"\xff\xfe\x00", "Q: A: - -", "The capital of is .",
             "a" * 5000, "The capital of " + "Xy " * 300 + "is Z."]
  samples += [bytes(rng.randrange(256) for _ in range(rng.randrange(200))) for _ in range(200)]
  samples += ["".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(300))) for _ in range(200)]
  for s in samples:
    out = oracles.score(s)
    for axis in ("factuality", "safety", "quality"):
      assert 0.0 <= out[axis] <= 1.0
  agg = oracles.score_batch(samples[:20])["aggregate"]
  assert agg["count"] == 20


def test_world_files_held_out_sets_and_supervision(tmp_path, oracles):
  d = str(tmp_path / "w")
  m = W.write_world(small_cfg(), d)
  assert m["counts"]["train_documents"] == 400
  train = [json.loads(l) for f in sorted(os.listdir(d)) if f.startswith("train-") for l in open(os.path.join(d, f))]
  evald = [json.loads(l) for l in open(os.path.join(d, W.EVAL_DOCS))]
  assert len(train) == 400 and len(evald) == 60
  assert not {x["text"] for x in train} & {x["text"] for x in evald}
  assert not {x["id"] for x in train} & {x["id"] for x in evald}
  kb = W.KnowledgeBase.load(d)
  orc = Oracles(kb)
  for p in (json.loads(l) for l in open(os.path.join(d, "eval_factual_probes.jsonl"))):
    assert orc.factuality(f"{p['prompt']} {p['answer']}.")["correct"] == 1, p
  bait = [json.loads(l) for l in open(os.path.join(d, "eval_unsafe_bait.jsonl"))]
  assert {b["category"] for b in bait} == set(W.UNSAFE_CATEGORIES)
  prefs = [json.loads(l) for l in open(os.path.join(d, "preferences.jsonl"))]
  assert len(prefs) == 60
  for p in prefs:
    if p["defect"] == "unsafe":
      assert p["labels"]["safety"] in ("a", "b")
    if p["defect"] == "false_fact":
      assert p["labels"]["factuality"] in ("a", "b")
  rewrites = [json.loads(l) for l in open(os.path.join(d, "rewrites.jsonl"))]
  copies = [r for r in rewrites if r["defect"] is None]
  fixes = [r for r in rewrites if r["defect"] is not None]
  assert copies and fixes
  assert all(r["suffix"] == r["target"] for r in copies)
  assert all(r["suffix"] != r["target"] for r in fixes)
  assert all(not orc.score(r["target"], prefix=r["prefix"])["unsafe"] for r in rewrites)
  # The corpus is ordinary JSONL: the normal data source reads it.
  src = S.make_source("jsonl", os.path.join(d, W.TRAIN_GLOB))
  assert len(src) == 400
  assert S.parse_document(src[0], "json", S.ParseOptions())[1] == S.OK


def test_validation_split_is_disjoint_from_train_and_test(tmp_path):
  """Every choice is made on validation and the final table is scored on test: the two never
  share a document, a prefix, a probed fact or a baited person, and neither holds a training
  document; validation pairs never reuse a test prefix."""
  d = str(tmp_path / "w")
  m = W.write_world(small_cfg(), d)
  read = lambda split, kind: [json.loads(l) for l in open(W.split_file(d, split, kind))]
  train = {json.loads(l)["text"] for f in os.listdir(d) if f.startswith("train-") for l in open(os.path.join(d, f))}
  val_docs, test_docs = read("validation", "docs"), read("test", "docs")
  assert len(val_docs) == len(test_docs) == 60 == m["counts"]["validation_documents"]
  assert not {x["text"] for x in val_docs} & ({x["text"] for x in test_docs} | train)
  assert not {x["id"] for x in val_docs} & {x["id"] for x in test_docs}
  val_pre, test_pre = read("validation", "prefixes"), read("test", "prefixes")
  assert len(val_pre) > 40 and not {x["prefix"] for x in val_pre} & {x["prefix"] for x in test_pre}
  for row in val_pre:   # the document after the prefix: the reference suffix, then the rest
    assert row["rest"].startswith(row["reference"]) and row["id"].startswith("validation-")
  fact = lambda p: (p["subject"], p["relation"])
  assert not {fact(p) for p in read("validation", "probes")} & {fact(p) for p in read("test", "probes")}
  people = lambda split: {b["prompt"].split(" is a")[0].split("'s home")[0]
                          for b in read(split, "bait") if b["category"] != "toxin_recipe"}
  assert people("validation") and not people("validation") & people("test")
  pairs = read("validation", "pairs")
  assert len(pairs) == 60 and not {p["prefix"] for p in pairs} & {x["prefix"] for x in test_pre}
  assert all(set(p["labels"]) == {"factuality", "safety", "quality"} for p in pairs)


def test_tuning_tools_refuse_the_test_split_and_an_old_world_is_named(tmp_path):
  assert W.tuning_split("validation", "judge_audit") == "validation"
  with pytest.raises(ValueError, match="judge_audit: the test split scores the final table only"):
    W.tuning_split("test", "judge_audit")
  with pytest.raises(ValueError, match="split='train'"):
    W.check_split("train")
  with pytest.raises(FileNotFoundError, match="has no validation prefixes .* delete that world"):
    W.split_file(str(tmp_path), "validation", "prefixes")


def test_world_mode_of_the_main_job(tmp_path):
  from configs import tiny
  from earlyrl_jax.main import run
  cfg = tiny.get_config()
  cfg.mode = "world"
  for k, v in dict(num_train_documents=50, num_eval_documents=10, num_preference_pairs=5,
                   num_rewrite_examples=5, num_factual_probes=5, num_unsafe_bait=3).items():
    cfg.world[k] = v
  manifest = run(cfg, str(tmp_path))
  assert os.path.exists(tmp_path / W.MANIFEST) and manifest["counts"]["train_documents"] == 50


def _imports_of(path):
  """earlyrl_jax modules a file imports anywhere (top level or inside functions)."""
  import ast
  tree = ast.parse(open(path, encoding="utf-8").read())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      out.add(node.module)
      out.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
  return {m for m in out if m.startswith("earlyrl_jax")}


def test_layering_world_and_data_import_nothing_above_them():
  """The world is one package without cycles; data/ and world/ never import models/ or train/."""
  import earlyrl_jax
  root = os.path.dirname(earlyrl_jax.__file__)
  assert not os.path.exists(os.path.join(root, "data", "world.py"))
  assert not os.path.exists(os.path.join(root, "eval", "oracles.py"))
  assert not os.path.exists(os.path.join(root, "models", "convert.py"))
  above = ("earlyrl_jax.models", "earlyrl_jax.train", "earlyrl_jax.sampling", "earlyrl_jax.teacher",
           "earlyrl_jax.eval", "earlyrl_jax.tools", "earlyrl_jax.parallel")
  graph = {}
  for pkg in ("world", "data"):
    for fn in sorted(os.listdir(os.path.join(root, pkg))):
      if fn.endswith(".py"):
        mod = f"earlyrl_jax.{pkg}.{fn[:-3]}"
        graph[mod] = _imports_of(os.path.join(root, pkg, fn))
        bad = sorted(m for m in graph[mod] if m.startswith(above))
        assert not bad, f"{mod} imports {bad}"
  # World module -> world modules it imports (`from earlyrl_jax.world.grammar import X` counts once).
  edges = {m: {".".join(d.split(".")[:3]) for d in deps if d.startswith("earlyrl_jax.world.")} - {m}
           for m, deps in graph.items() if m.startswith("earlyrl_jax.world.") and not m.endswith("__init__")}
  assert edges["earlyrl_jax.world.grammar"] == set()
  assert edges["earlyrl_jax.world.corpus"] == {"earlyrl_jax.world.grammar"}
  assert edges["earlyrl_jax.world.oracles"] == {"earlyrl_jax.world.grammar"}  # never corpus/supervision
  state = {}

  def visit(m, path):  # depth-first search: an 'open' module met again closes a cycle
    assert state.get(m) != "open", f"import cycle: {' -> '.join(path + [m])}"
    if state.get(m) is None:
      state[m] = "open"
      for d in edges.get(m, ()):
        visit(d, path + [m])
      state[m] = "done"
  for m in edges:
    visit(m, [])
  # models/ never imports the trainer (the converter moved to tools/) nor data/ (tokenizers
  # of model directories are loaded by data/tokenizer.py).
  for fn in os.listdir(os.path.join(root, "models")):
    if fn.endswith(".py"):
      bad = [m for m in _imports_of(os.path.join(root, "models", fn)) if m.startswith(
          ("earlyrl_jax.train", "earlyrl_jax.tools", "earlyrl_jax.data"))]
      assert not bad, f"models/{fn} imports {bad}"


def test_world_eval_scores_several_samples_per_bait_prompt(tmp_path, monkeypatch):
  """bait_samples=S scores S sampled continuations of every bait prompt (a finer unsafe rate)."""
  from earlyrl_jax.data.tokenizer import ByteTokenizer
  from earlyrl_jax.eval.evaluate import world_eval
  from tests.helpers import tiny_model
  d = str(tmp_path / "w")
  W.write_world(small_cfg(), d)
  n_bait = sum(1 for _ in open(os.path.join(d, "eval_unsafe_bait.jsonl")))
  seen = []
  real = Oracles.continuation_safety
  monkeypatch.setattr(Oracles, "continuation_safety",
                      lambda self, prompt, text: seen.append(prompt) or real(self, prompt, text))
  model = tiny_model(vocab_size=259, max_seq_len=256)
  res = world_eval(model, ByteTokenizer(), d, split="test", num_prompts=4, max_new_tokens=6, bait_samples=3)
  k = min(4, n_bait)
  assert len(seen) == 3 * k and all(seen[3 * i] == seen[3 * i + 2] for i in range(k))
  assert res["world/unsafe_rate_on_bait"] * 3 * k == pytest.approx(round(res["world/unsafe_rate_on_bait"] * 3 * k))


def test_world_eval_scores_several_samples_per_prefix(tmp_path, monkeypatch):
  """prefix_samples=S scores S sampled continuations of every held-out prefix, each beside its
  own prefix, and returns them prefix-major (what the report's win rate pairs up)."""
  from earlyrl_jax.data.tokenizer import ByteTokenizer
  from earlyrl_jax.eval.evaluate import world_eval
  from tests.helpers import tiny_model
  d = str(tmp_path / "w")
  W.write_world(small_cfg(), d)
  scored = []
  real = Oracles.score_batch
  monkeypatch.setattr(Oracles, "score_batch",
                      lambda self, texts, prefixes=None: scored.append((list(texts), list(prefixes)))
                      or real(self, texts, prefixes))
  model = tiny_model(vocab_size=259, max_seq_len=256)
  res = world_eval(model, ByteTokenizer(), d, split="test", num_prompts=3, max_new_tokens=6, prefix_samples=4,
                   return_texts=True)
  with open(os.path.join(d, "eval_prefixes.jsonl")) as f:
    first = [json.loads(line)["prefix"] for line in f][:3]
  texts, prefixes = scored[-1]
  assert prefixes == [p for p in first for _ in range(4)]
  assert len(texts) == 12 and res["texts"]["prefixes"] == prefixes
  assert res["texts"]["continuations"] == texts
  one = world_eval(model, ByteTokenizer(), d, split="test", num_prompts=3, max_new_tokens=6, return_texts=True)
  assert one["texts"]["prefixes"] == first and len(one["texts"]["continuations"]) == 3
  with pytest.raises(ValueError, match="report.eval_samples"):
    world_eval(model, ByteTokenizer(), d, split="test", num_prompts=3, prefix_samples=0)


def test_misconceptions_are_one_wrong_object_the_corpus_repeats(tmp_path):
  """world.myth_rate: a share of the facts gets one fixed wrong object, stated in place of the
  truth in about myth_share of the corpus's mentions (never in clean documents); the facts
  themselves, and a world without misconceptions, are unchanged."""
  plain = W.build_kb(small_cfg())
  cfg = small_cfg(myth_rate=0.25, myth_share=0.7)
  kb = W.build_kb(cfg)
  assert kb.facts == plain.facts and not plain.myths
  assert len(kb.myths) == round(0.25 * len(kb.facts))
  assert all(kb.myths[k] != kb.facts[k] for k in kb.myths)
  oracles = Oracles(kb)
  stated = {"myth": 0, "truth": 0, "other": 0}
  for doc in W.generate_documents(kb, cfg, "train", 1500):
    for c in oracles.factuality(doc.text)["claims"]:
      key = (c["subject"], c["relation"])
      if key in kb.myths:
        stated["myth" if c["object"] == str(kb.myths[key]) else
               "truth" if c["object"] == str(kb.facts[key]) else "other"] += 1
  n = sum(stated.values())
  assert n > 500 and abs(stated["myth"] / n - 0.7) < 0.06, stated
  for doc in W.generate_documents(kb, cfg, "train", 300, clean=True):
    assert all(c["verdict"] != "false" for c in oracles.factuality(doc.text)["claims"])
  # kb.json keeps the misconceptions (the report's myth_rate reads them); without any, no key.
  W.write_world(cfg, str(tmp_path / "m"))
  assert W.KnowledgeBase.load(str(tmp_path / "m")).myths == kb.myths
  W.write_world(small_cfg(), str(tmp_path / "p"))
  assert "myths" not in json.load(open(tmp_path / "p" / W.KB_FILE))
  with pytest.raises(ValueError, match="world.myth_rate"):
    W.build_kb(small_cfg(myth_rate=1.5))
  with pytest.raises(ValueError, match="world.myth_share"):
    W.build_kb(small_cfg(myth_rate=0.2, myth_share=-0.1))


def test_myth_rate_counts_claims_about_misconceived_facts():
  from earlyrl_jax.eval.evaluate import myth_rate
  kb = W.build_kb(small_cfg(myth_rate=0.3))
  (s, r), wrong = sorted(kb.myths.items())[0]
  template = W.RELATIONS[r][2][0]
  myth, truth = template.format(s=s, o=wrong), template.format(s=s, o=kb.facts[(s, r)])
  oracles = Oracles(kb)
  claims = lambda texts: [c for t in texts for c in oracles.factuality(t)["claims"]]
  assert myth_rate(kb.myths, claims([myth, truth, "Little else is recorded."])) == 0.5
  assert myth_rate(kb.myths, claims([myth + " " + myth])) == 1.0
  assert myth_rate(kb.myths, claims(["Nothing here."])) == 0.0


def test_a_world_generated_from_another_config_is_refused(tmp_path):
  """A workdir's world is reused only when the `world` section matches the one it was written
  with; a field an older world lacks counts as its default."""
  from earlyrl_jax.configs import ConfigError
  from earlyrl_jax.train.loop import check_world_matches
  d = tmp_path / "w"
  W.write_world(small_cfg(), str(d))
  manifest = str(d / W.MANIFEST)
  check_world_matches(small_cfg(), manifest)
  with pytest.raises(ConfigError, match=r"world.myth_rate=0.3, but the world in .* was generated with 0.0"):
    check_world_matches(small_cfg(myth_rate=0.3), manifest)
  m = json.load(open(manifest))
  del m["config"]["myth_rate"], m["config"]["myth_share"]  # written before misconceptions existed
  json.dump(m, open(manifest, "w"))
  check_world_matches(small_cfg(), manifest)
  with pytest.raises(ConfigError, match="world.myth_rate"):
    check_world_matches(small_cfg(myth_rate=0.3), manifest)


def test_world_eval_reports_the_myths_stated_only_with_misconceptions(tmp_path, monkeypatch):
  from earlyrl_jax.data.tokenizer import ByteTokenizer
  from earlyrl_jax.eval import evaluate
  from tests.helpers import tiny_model
  model = tiny_model(vocab_size=259, max_seq_len=256)
  W.write_world(small_cfg(), str(tmp_path / "plain"))
  W.write_world(small_cfg(myth_rate=0.3), str(tmp_path / "myths"))
  seen = []
  scored = []
  real = Oracles.score_batch
  monkeypatch.setattr(Oracles, "score_batch", lambda self, texts, prefixes=None: scored.append(
      (len(texts), [c for t in texts for c in self.factuality(t)["claims"]])) or real(self, texts, prefixes))
  monkeypatch.setattr(evaluate, "myth_rate", lambda myths, claims: seen.append(list(claims)) or 0.25)
  plain = evaluate.world_eval(model, ByteTokenizer(), str(tmp_path / "plain"), split="validation", num_prompts=3,
                              max_new_tokens=6, prefix_samples=2)
  assert "world/myth_rate" not in plain and not seen
  mythic = evaluate.world_eval(model, ByteTokenizer(), str(tmp_path / "myths"), split="validation", num_prompts=3,
                               max_new_tokens=6, prefix_samples=2)
  # the claims of every sampled continuation, as the oracles scored them (not parsed again)
  assert mythic["world/myth_rate"] == 0.25 and scored[-1][0] == 6 and seen == [scored[-1][1]]
