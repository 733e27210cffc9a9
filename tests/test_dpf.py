"""Principle-guided rewriting (DPF, docs/principles.md): the mention oracle, the world's reviser,
the rewrite prompt with a principle, DPF's pairs and rows, the judge's mention penalty, a DPF run
end to end, a short training that lowers the mention rate, and the config's errors."""
import collections
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from ml_collections import ConfigDict

from earlyrl_jax import configs
from earlyrl_jax import world as W
from earlyrl_jax.data import tokenizer as TK
from earlyrl_jax.teacher import principles as PL
from earlyrl_jax.teacher.prompts import paper_rewrite as PR
from earlyrl_jax.train import objectives, sip
from earlyrl_jax.world.principled import WorldReviser, longer_names
from tests.helpers import default_world, set_fields, tiny_model


def _toy_kb():
  """A world whose names nest: 'Tal' (a country) inside 'Tal Verin' (a person), beside 'Talmoor'."""
  return W.KnowledgeBase({"country": ["Tal", "Vexia"], "city": ["Talmoor", "Brisk"],
                          "person": ["Tal Verin"], "organisation": [], "substance": [], "toxin": []},
                         {("Talmoor", "located_in"): "Tal", ("Brisk", "located_in"): "Vexia",
                          ("Tal", "capital"): "Talmoor", ("Vexia", "capital"): "Brisk",
                          ("Tal Verin", "born_in"): "Brisk", ("Brisk", "population"): 40,
                          ("Vexia", "independent_since"): 1400})


# --------------------------------------------------------------------------- the oracle


def test_the_oracle_counts_mentions_exactly_and_not_inside_other_names():
  oracles = W.Oracles(_toy_kb())
  text = ("Tal is old. Tal Verin was born in Talmoor, not in Tal. Tal's capital is Talmoor. "
          "A tall tale of TAL and Tals.")
  assert oracles.mentions(text, ["Tal"]) == 3          # 'Tal', 'in Tal.', "Tal's"
  assert oracles.mentions(text, ["Tal Verin"]) == 1
  assert oracles.mentions(text, ["Talmoor"]) == 2
  assert oracles.mentions(text, ["Tal", "Talmoor"]) == 5
  assert oracles.mentions("", ["Tal"]) == 0 and oracles.mentions(None, ["Tal"]) == 0
  assert oracles.mention_rate(["Tal is here.", "Tal Verin is here.", "Brisk.", "In Tal"], ["Tal"]) == 0.5
  # The principle counts the same once it knows the longer names (what the world gives it).
  p = PL.Principle(("Tal",), "Vexia", longer_names=longer_names(_toy_kb(), ["Tal"]))
  assert longer_names(_toy_kb(), ["Tal"]) == ("Tal Verin",)
  assert p.mentions(text) == 3
  assert p.text == "Do not mention Tal; discuss Vexia instead."


# --------------------------------------------------------------------------- the world's reviser


def test_the_world_reviser_removes_the_banned_entity_keeps_the_rest_and_says_true_things():
  _, kb, oracles = default_world()
  x = kb.entities["country"][0]
  y = kb.facts[(x, "capital")]                 # a city IN X: 'Y lies in X' must not be written
  c = kb.facts[(kb.entities["country"][1], "capital")]
  keep = f"{c} has a population of {kb.facts[(c, 'population')]} thousand."
  suffix = (f" The capital of {x} is {y}. {keep}\n\n{x} has been independent since "
            f"{kb.facts[(x, 'independent_since')]}. The capital of {x}")
  rv = WorldReviser(kb, [x], y)
  out = rv.rewrite(["prefix"], [suffix])[0]
  assert oracles.mentions(out, [x]) == 0 and oracles.mentions(suffix, [x]) == 3
  assert out.startswith(" ") and f" {keep}\n\n" in out          # untouched piece and whitespace kept
  assert oracles.mentions(out, [y]) >= 3                          # each replaced piece discusses Y
  assert len(set(W.sentences_of(out))) == len(W.sentences_of(out))  # and repeats no sentence
  f = oracles.factuality(out)
  assert f["false"] == 0 and f["correct"] >= 2 and f["unverifiable"] == 0  # true claims only
  assert rv.revise(out) == out                                    # nothing left to revise
  clean = f" {keep} Many stories are told about {c}."
  assert rv.rewrite(["p"], [clean]) == [clean] and (rv.calls, rv.revised) == (2, 1)
  for i in range(30):   # whatever relation is drawn, the sentence about Y never names X
    assert oracles.mentions(rv.about_instead(f"seed {i}"), [x]) == 0
  with pytest.raises(ValueError, match="principle.banned"):
    WorldReviser(kb, ["Nowhere"], y)


# --------------------------------------------------------------------------- the rewrite prompt


class _Scripted:
  name, max_len = "scripted teacher", 4096

  def __init__(self, replies):
    self.tokenizer, self.replies, self.calls = TK.ByteTokenizer(), list(replies), []
    self.failures = collections.Counter()

  def generate(self, prompts, *, max_new_tokens, temperature=0.0, top_p=1.0, n=1, stop=(), seed=0):
    self.calls.append(list(prompts))
    return [[self.replies.pop(0)] for _ in prompts]


def test_the_paper_rewriter_prompt_carries_the_principle_escaped():
  from earlyrl_jax.teacher.rewriter import PaperRewriter
  principle = "Do not mention Tal </continuation><rewrite>; discuss Vexia instead."
  be = _Scripted([" Vexia is old."])
  rw = PaperRewriter(be, principle=principle)
  assert rw.rewrite(["Some words here."], [" Tal is old."]) == [" Vexia is old."]
  prompt = be.calls[0][0]
  assert "Do not mention Tal < /continuation>< rewrite>; discuss Vexia instead." in prompt
  assert rw.prompts.version == PR.PRINCIPLE_VERSION
  plain = PR.RewritePrompts(TK.ByteTokenizer(), max_len=4096)
  text = plain.render("Some words here.", " Tal is old.", max_new_tokens=20).text
  assert "principle" not in text and plain.version == PR.PROMPT_VERSION
  for tag in ("</continuation>", "<rewrite>"):      # the principle adds none of the family's tags
    assert prompt.count(tag) == text.count(tag)


# --------------------------------------------------------------------------- DPF's pairs and rows


def test_dpf_pairs_choose_the_revision_and_reject_the_original_in_the_dpo_rows():
  p = PL.Principle(("Tal",), "Vexia")
  cands = [[" Tal is old.", " Vexia is old."],        # breaks the principle: a pair
           [" Brisk is old.", " Brisk is old."],       # no mention: no pair
           [" Tal is old.", " Tal is old. "]]          # a revision that changed nothing: no pair
  j = PL.dpf_judgement(p, cands)
  assert j.chosen.tolist() == [1, 1, 1] and j.rejected.tolist() == [0, 0, 0]
  assert j.all_tied.tolist() == [False, True, True] and j.calls == 0
  # The producer's rows (the dpo recipe's layout): chosen branch = revision, rejected = original.
  obj = objectives.Objective("dpo", lm_coef=1.0)
  lay = obj.layout(prefix_len=4, cand_len=3, suffix_len=3, num_candidates=2)
  prod = type("P", (), {})()
  prod.objective, prod.layout, prod.lm_target, prod.judge = obj, lay, "window", None
  prod.tok = TK.ByteTokenizer()
  prod.s = ConfigDict({"rf_threshold": 0.0, "rf_fallback": "skip"})
  prefixes = [np.array([5, 6, 7]), np.array([8, 9]), np.array([5, 6])]
  orig, rev = [np.array([10, 11]), np.array([12]), np.array([10, 11])], [np.array([20, 21, 22]), np.array([12]), np.array([10, 11])]
  batch = sip.SIPProducer._rows(prod, prefixes, orig, [[o, r] for o, r in zip(orig, rev)], j)
  assert batch["pair_mask"].tolist() == [1.0, 0.0, 0.0]
  chosen = batch["tokens"][0][(batch["branch_ids"][0] == 1)]
  rejected = batch["tokens"][0][(batch["branch_ids"][0] == 2)]
  assert chosen.tolist() == [7, 20, 21, 22] and rejected.tolist() == [7, 10, 11]


def test_the_judges_mention_penalty_moves_the_picks():
  from earlyrl_jax.teacher.tournament import Judgement
  p = PL.Principle(("Tal",), "Vexia", judge_penalty=1.0)
  j = Judgement(rewards=np.array([[0.9, 0.5, 0.1], [0.6, 0.6, 0.2]], np.float32), per_axis={}, prefs={},
                calls=6, position_consistency=1.0, chosen=np.array([0, 0]), rejected=np.array([2, 2]),
                all_tied=np.array([False, False]))
  cands = [[" Tal is old.", " Vexia is old.", " Brisk."], [" Brisk.", " Tal.", " Vexia."]]
  out = PL.penalize_mentions(j, p, cands, [np.random.default_rng(g) for g in range(2)])
  assert out.chosen.tolist() == [1, 0] and out.rejected.tolist() == [0, 1]
  np.testing.assert_allclose(out.rewards, [[-0.1, 0.5, 0.1], [0.6, -0.4, 0.2]], rtol=1e-6)
  assert out.per_axis["principle"].tolist() == [[0, 1, 1], [1, 0, 1]]
  # The producer applies it to its judge's verdicts in 'guide' mode only (and DPF pairs in 'dpf').
  prod = type("P", (), {})()
  prod.principle, prod.judge, prod.cfg = p, object(), ConfigDict({"seed": 0})
  prod._judge_candidates = lambda *a: j
  for mode, chosen in (("guide", [1, 0]), ("off", [0, 0])):
    prod.principle_mode = mode
    assert sip.SIPProducer._judge(prod, ["p", "q"], None, cands, 3).chosen.tolist() == chosen
  prod.principle_mode = "dpf"
  got = sip.SIPProducer._judge_candidates(prod, ["p", "q"], None, [c[:2] for c in cands], 3)
  assert got.all_tied.tolist() == [False, True] and got.calls == 0


def test_the_principle_line_precedes_the_prompt_whole():
  line = np.array([50, 51, 52])
  assert PL.with_prompt_ids([1, 5, 6, 7, 8], line, 6, bos_id=1).tolist() == [1, 50, 51, 52, 7, 8]
  assert PL.with_prompt_ids([5, 6], line, 6, bos_id=1).tolist() == [50, 51, 52, 5, 6]


# --------------------------------------------------------------------------- end to end


def _dpf_cfg(tmp_path, **kw):
  from tests.test_train import tiny_cfg
  cfg = tiny_cfg(**{"mode": "sip", "num_steps": 3, "log_every_steps": 1, "checkpoint.every_steps": 3,
                    "sip.recipe": "dpo", "sip.judge": "none", "sip.rewrite": "principle",
                    "sip.num_rollouts": 0, "sip.principle_mode": "dpf", "data.batch_size": 8,
                    "data.prefix_len": 40, "data.suffix_len": 24, "data.seq_len": 64, **kw})
  kb = W.build_kb(cfg.world)
  # Every country: in a world this small one name is rarely in 24 windows.
  cfg.principle.banned = ",".join(kb.entities["country"])
  cfg.principle.instead = kb.entities["substance"][0]
  return cfg, kb


@pytest.mark.slow
def test_a_dpf_run_trains_a_non_zero_dpo_term(tmp_path):
  from earlyrl_jax import sip_job
  from earlyrl_jax.eval.principle_eval import principle_prompts
  cfg, kb = _dpf_cfg(tmp_path)
  configs.validate_fields(cfg)
  sip_job.run(cfg, str(tmp_path))
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [1, 2, 3]
  paired = [l for l in lines if l["sip/principle_pairs_frac"] > 0]
  assert len(paired) >= 2 and paired[0]["step"] == 1
  assert all(l["dpo"] > 0.1 for l in paired)          # the DPO term trains on DPF's pairs
  np.testing.assert_allclose(lines[0]["dpo"], np.log(2.0), rtol=1e-4)   # policy = reference: log 2
  assert all(l["dpo"] == 0 for l in lines if l not in paired)            # no pair, no term
  assert all("sip/judge_calls" in l and l["sip/judge_calls"] == 0 for l in lines)   # nothing judged
  # The evaluation's prompts: cut right before a sentence that names a banned country.
  p = PL.Principle(tuple(cfg.principle.banned.split(",")), cfg.principle.instead)
  prompts = principle_prompts(str(tmp_path / "world"), "validation", p, 5)
  docs = [json.loads(l)["text"] for l in open(tmp_path / "world" / "validation_docs.jsonl")]
  assert len(prompts) == 5
  for q in prompts:
    doc = next(d for d in docs if d.startswith(q))
    nxt = W.sentences_of(doc[len(q):])[0]
    assert W.Oracles(kb).mentions(nxt, p.banned) > 0


def _toy_rows(obj, tok, prefixes, conts_a, conts_b=None):
  lay = obj.layout(prefix_len=16, cand_len=48, suffix_len=16, num_candidates=2)
  enc = lambda t: np.asarray(tok.encode(t), np.int32)
  pre = [np.asarray([tok.bos_id] + tok.encode(p), np.int32) for p in prefixes]
  if conts_b is None:
    branches = [[] for _ in prefixes]
  else:
    branches = [[enc(a), enc(b)] for a, b in zip(conts_a, conts_b)]
  return lay, objectives.window_rows(lay, pre, branches, [enc(a) for a in conts_a], tok.pad_id)


def _mention_rate(model, tok, prefixes, p, key):
  from earlyrl_jax.sampling.sampler import Sampler
  out = Sampler(model, pad_id=tok.pad_id)([[tok.bos_id] + tok.encode(q) for q in prefixes],
                                           max_new_tokens=8, key=key, temperature=1.0, num_samples=16)
  texts = out.texts(tok)
  return float(np.mean([p.mentions(t) > 0 for t in texts]))


def _train(model, obj, batch, steps, lr):
  opt = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, batch):
    def loss_fn(m):
      terms, _ = obj(m, batch)
      return sum(obj.coefs[k] * s / jnp.maximum(n, 1.0) for k, (s, n) in terms.items())
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss

  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  for _ in range(steps):
    step(model, opt, batch)


def test_a_short_dpf_training_lowers_the_mention_rate():
  """A tiny model first learns the corpus (NLL on windows that mention 'Tal'), then DPF's pairs
  (world reviser's revision chosen, original rejected) move it off Tal; NLL alone does not."""
  tok = TK.ByteTokenizer(vocab_size=384)
  kb = _toy_kb()
  p = PL.Principle(("Tal",), "Vexia", longer_names=longer_names(kb, ["Tal"]))
  prefixes = ["Doc one:", "Doc two:", "Doc three:", "Doc four:"]
  originals = [" Tal is old.", " Tal is big.", " Tal is far.", " Tal is old."]
  revised = WorldReviser(kb, ["Tal"], "Vexia").rewrite(prefixes, originals)
  assert all(p.mentions(r) == 0 for r in revised)
  model = tiny_model(seed=0, vocab_size=384)
  nll = objectives.Objective("dpo", lm_coef=1.0, coef=0.0)
  _, batch = _toy_rows(nll, tok, prefixes, originals)
  _train(model, nll, batch, 60, 1e-2)
  key = jax.random.key(0)
  before = _mention_rate(model, tok, prefixes, p, key)
  assert before > 0.8, before
  # DPF: the pairs of dpf_judgement through the dpo recipe's rows, against the NLL model.
  j = PL.dpf_judgement(p, [[o, r] for o, r in zip(originals, revised)])
  dpo = objectives.Objective("dpo", beta=0.5, lm_coef=0.0, coef=1.0)
  chosen = [[o, r][c] for o, r, c in zip(originals, revised, j.chosen)]
  rejected = [[o, r][c] for o, r, c in zip(originals, revised, j.rejected)]
  lay, rows = _toy_rows(dpo, tok, prefixes, chosen, rejected)
  rows["pair_mask"] = (~j.all_tied).astype(np.float32)
  rows["ref_logp"] = np.asarray(dpo.reference_logp(model, {k: jnp.asarray(v) for k, v in rows.items()},
                                                   lay.reference_length))
  _train(model, dpo, rows, 25, 1e-2)
  after = _mention_rate(model, tok, prefixes, p, key)
  assert after < before - 0.5, (before, after)


# --------------------------------------------------------------------------- config errors


def _cfg(**kw):
  from configs import tiny
  return set_fields(tiny.get_config(), kw)


@pytest.mark.parametrize("overrides, field", [
    ({"sip.principle_mode": "dpf", "sip.judge": "none", "sip.rewrite": "principle",
      "sip.num_rollouts": 0}, "principle.banned"),
    ({"sip.principle_mode": "dpf", "principle.banned": "Tal", "sip.judge": "none",
      "sip.rewrite": "principle", "sip.num_rollouts": 0}, "principle.instead"),
    ({"sip.principle_mode": "dpf", "principle.banned": "Tal", "principle.instead": "Tal",
      "sip.judge": "none", "sip.rewrite": "principle", "sip.num_rollouts": 0}, "principle.instead"),
    ({"sip.principle_mode": "dpf", "principle.banned": "Tal", "principle.instead": "Vexia"}, "sip.judge"),
    ({"sip.principle_mode": "dpf", "principle.banned": "Tal", "principle.instead": "Vexia",
      "sip.judge": "none", "sip.recipe": "rf_nll", "sip.rewrite": "principle"}, "sip.recipe"),
    ({"sip.rewrite": "principle"}, "sip.rewrite"),
    ({"sip.principle_mode": "sometimes"}, "sip.principle_mode"),
    ({"sip.principle_mode": "guide", "principle.banned": "Tal", "principle.instead": "Vexia",
      "principle.judge_penalty": -1.0}, "principle.judge_penalty"),
])
def test_config_errors_name_the_field(overrides, field):
  cfg = _cfg(mode="sip", **overrides)
  with pytest.raises(configs.ConfigError, match=rf"^(report method .*: )?{field}"):
    configs.validate_fields(cfg)


def test_the_report_checks_its_principle_methods_and_the_world_its_names():
  cfg = _cfg(**{"report.methods": "nll,dpf"})
  with pytest.raises(configs.ConfigError, match="report method 'dpf': principle.banned"):
    configs.validate_fields(cfg)
  cfg.principle.banned, cfg.principle.instead = "Tal", "Vexia"
  configs.validate_fields(cfg)
  assert not configs.needs_teacher(cfg)          # the world's reviser needs no teacher
  cfg.sip.principle_mode = "guide"
  with pytest.raises(configs.ConfigError, match=r"principle.banned: \['Nowhere'\] not in the world"):
    PL.principle_of(_cfg(**{"sip.principle_mode": "guide", "principle.banned": "Nowhere",
                             "principle.instead": "Vexia"}), known=["Tal", "Vexia"])
  with pytest.raises(configs.ConfigError, match="principle.instead: 'Brisk' not in the world"):
    PL.principle_of(_cfg(**{"sip.principle_mode": "guide", "principle.banned": "Tal",
                             "principle.instead": "Brisk"}), known=["Tal", "Vexia"])
  cfg.principle.oops = 1
  with pytest.raises(configs.ConfigError, match=r"principle.oops: unknown field"):
    PL.principle_of(cfg)


def test_an_online_rewriter_gets_the_principle_and_the_embedded_editor_is_refused(tmp_path):
  from types import SimpleNamespace
  from earlyrl_jax.rewrite_job import principle_kw
  cfg = _cfg(**{"mode": "sip", "sip.principle_mode": "guide", "principle.banned": "Tal",
                "principle.instead": "Vexia"})
  run = SimpleNamespace(cfg=cfg, workdir=str(tmp_path))
  instruct = SimpleNamespace(rewriter_kind=lambda kind: "generative")
  assert principle_kw(run, instruct) == {"principle": "Do not mention Tal; discuss Vexia instead."}
  with pytest.raises(configs.ConfigError, match="never trained on principles"):
    principle_kw(run, SimpleNamespace(rewriter_kind=lambda kind: "edit"))
  cfg.sip.principle_mode = "off"
  assert principle_kw(run, instruct) == {}


def test_the_report_tables_the_mention_rates():
  from earlyrl_jax.tools import report
  cfg = _cfg(**{"principle.banned": "Tal", "principle.instead": "Vexia"})
  summary = report.summarise({
      "nll": [{"factuality": 0.5, "mention_rate": 0.4, "mention_rate_prompted": 0.5,
               "instead_rate": 0.1, "instead_rate_prompted": 0.2}],
      "dpf": [{"factuality": 0.5, "mention_rate": 0.1, "mention_rate_prompted": 0.2,
               "instead_rate": 0.3, "instead_rate_prompted": 0.3}]})
  lines = report.principle_lines(cfg, summary)
  assert "Do not mention Tal; discuss Vexia instead." in lines[0]
  assert "| dpf | 0.100 | 0.200 | 0.300 | 0.300 |" in lines
  assert report.principle_lines(cfg, report.summarise({"nll": [{"factuality": 0.5}]})) == []
