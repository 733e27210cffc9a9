"""Thinking mid-training in miniature (the paper's v3 §2): SFT on thought-augmented text, then RL.

The ladder, each rung from one base model and one world (docs/thinking.md):

  nll           the base: next-token training on the raw corpus (reasoning documents included)
  sft_raw       + stage 2 on half A of the corpus, raw
  sft_think     + stage 2 on half A after stage 1 (`world.reasoning.augment` inserts the thoughts)
  sft_think_rl  sft_think + stage 3 on half B: every true two-hop conclusion is cut into a prefix
                and its original suffix; the policy samples `thought + suffix` (a group per
                prefix); the reward is 1 iff the suffix after the thought matches the original
                (`reasoning.suffix_reward`: the world's exact comparison stands in for the
                paper's teacher judge); the thought is not scored but its tokens share the
                sample's advantage. The update is the project's pg recipe
                (`objectives.Objective('pg')`: group-baseline REINFORCE over window rows).

The reasoning column is `reasoning.probe_accuracy` on the held-out split's two-hop prompts
(validation for choices, test for the final table), greedy, thoughts stripped before scoring.

Stages 2 and 3 run through the shared train step (`steps.make_train_step`) on one device; the
world's corpus is generated in memory (`world.generate_documents`), nothing is written.
"""
from __future__ import annotations

import dataclasses
import json
import random
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from earlyrl_jax import world as W
from earlyrl_jax.data.tokenizer import ByteTokenizer
from earlyrl_jax.models import transformer as T
from earlyrl_jax.parallel import mesh as mesh_lib
from earlyrl_jax.sampling.sampler import Sampler
from earlyrl_jax.train import objectives, steps
from earlyrl_jax.train import state as state_lib
from earlyrl_jax.world import reasoning as R

METHODS = ("nll", "sft_raw", "sft_think", "sft_think_rl")


@dataclasses.dataclass(frozen=True)
class ThinkingConfig:
  """One ladder run. Defaults: a byte-level tiny model on a small world (minutes on a CPU)."""
  methods: tuple[str, ...] = METHODS
  split: str = "validation"          # the probe's split: 'validation' for choices, 'test' final
  seed: int = 0                      # model init, batches and sampling (the world has its own)
  reasoning_rate: float = 0.3        # world.reasoning_rate of the corpus
  num_documents: int = 600           # training documents read (halves A and B alternate)
  seq_len: int = 256                 # tokens per training row (bytes)
  batch_size: int = 8
  pretrain_steps: int = 300
  sft_steps: int = 150
  rl_steps: int = 30
  rl_prompts: int = 4                # prefixes per RL step
  rl_samples: int = 4                # the group: samples per prefix
  rl_prefix_len: int = 96            # prefix tokens kept (the end of the prefix)
  max_new_tokens: int = 128          # the thought and the answer
  temperature: float = 1.0
  learning_rate: float = 1e-3
  rl_learning_rate: float = 1e-4
  probe_items: int = 64
  d_model: int = 128
  n_layers: int = 2

  def validate(self) -> "ThinkingConfig":
    def need(ok, field, what):
      if not ok:
        raise ValueError(f"error: thinking.{field}={getattr(self, field)!r}: {what}")
    need(self.methods and all(m in METHODS for m in self.methods), "methods", f"each one of {METHODS}")
    need(self.split in ("validation", "test"), "split", "'validation' or 'test'")
    need(0.0 <= self.reasoning_rate <= 1.0, "reasoning_rate", "must be in [0, 1]")
    for f in ("num_documents", "seq_len", "batch_size", "rl_prompts", "rl_samples", "rl_prefix_len",
              "max_new_tokens", "probe_items", "d_model", "n_layers"):
      need(getattr(self, f) >= 1, f, "must be >= 1")
    for f in ("pretrain_steps", "sft_steps", "rl_steps"):
      need(getattr(self, f) >= 0, f, "must be >= 0")
    need(self.rl_samples >= 2, "rl_samples", "a group baseline needs >= 2 samples per prefix")
    need(self.temperature > 0, "temperature", "RL samples need a temperature > 0")
    need(self.learning_rate > 0 and self.rl_learning_rate > 0, "learning_rate", "must be > 0")
    return self


def world_config(reasoning_rate: float, num_documents: int) -> ConfigDict:
  """A small world (few entities: a tiny model can learn its facts) with reasoning documents."""
  c = W.default_world_config()
  c.num_countries, c.num_cities, c.num_people, c.num_organisations = 6, 18, 120, 30
  c.num_substances, c.num_toxins = 6, 2
  c.false_fact_rate = c.unsafe_rate = c.low_quality_rate = 0.0   # clean text: reasoning is the variable
  c.num_train_documents = num_documents
  c.reasoning_rate = reasoning_rate
  return c


# --------------------------------------------------------------------------- stage 2: next-token rows


def packed_rows(texts, tokenizer, seq_len: int) -> dict[str, np.ndarray]:
  """Documents packed into rows of `seq_len` tokens, each document its own segment (positions
  restart, no attention across documents); the targets are the next token within a segment."""
  rows, cur, used = [], [], 0
  for t in texts:
    ids = [tokenizer.bos_id] + tokenizer.encode(t) + [tokenizer.eos_id]
    for i in range(0, len(ids), seq_len):
      piece = ids[i:i + seq_len]
      if used + len(piece) > seq_len:
        rows.append(cur)
        cur, used = [], 0
      cur.append(piece)
      used += len(piece)
  if cur:
    rows.append(cur)
  n = len(rows)
  out = {k: np.zeros((n, seq_len), np.int32) for k in ("tokens", "targets", "positions", "segment_ids")}
  out["loss_mask"] = np.zeros((n, seq_len), np.float32)
  for r, pieces in enumerate(rows):
    at = 0
    for s, p in enumerate(pieces, start=1):
      k = len(p)
      out["tokens"][r, at:at + k] = p
      out["targets"][r, at:at + k - 1] = p[1:]
      out["loss_mask"][r, at:at + k - 1] = 1.0
      out["positions"][r, at:at + k] = np.arange(k)
      out["segment_ids"][r, at:at + k] = s
      at += k
  return out


def _train_state(model_cfg, lr: float, num_steps: int, seed: int, mesh):
  opt = ConfigDict(dict(learning_rate=lr, warmup_steps=min(20, max(1, num_steps // 10)), min_lr_ratio=0.1,
                        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, grad_clip=1.0))
  tx = state_lib.make_optimizer(opt, max(1, num_steps))
  graphdef, state, shardings = state_lib.init_train_state(model_cfg, tx, mesh, seed)
  return graphdef, state, shardings, tx, state_lib.lr_schedule(opt, max(1, num_steps))


def _with_params(state, params, tx):
  """A fresh optimizer state around a copy of `params` (each stage starts its own schedule; the
  train step donates its state, and the caller's params start other rungs too)."""
  params = jax.tree.map(jnp.copy, params)
  return state.replace(step=state.step * 0, params=params, opt_state=tx.init(params))


def nll_stage(model_cfg, params, texts, tokenizer, cfg: ThinkingConfig, steps_n: int, seed: int, mesh,
              log=print):
  """Stage 2 (and the base's pretraining): `steps_n` NLL steps on random rows of the packed texts."""
  graphdef, state, shardings, tx, schedule = _train_state(model_cfg, cfg.learning_rate, steps_n, seed, mesh)
  if params is not None:
    state = _with_params(state, params, tx)
  if steps_n == 0:
    return state.params, {}
  data = packed_rows(texts, tokenizer, cfg.seq_len)
  rng = np.random.default_rng(seed)
  def pick():   # one draw of rows for every field (tokens, targets and masks of the same rows)
    rows = rng.integers(0, len(data["tokens"]), cfg.batch_size)
    return {k: v[rows] for k, v in data.items()}
  step = steps.make_train_step(graphdef, tx, schedule, mesh, shardings, steps.spec_of(pick()),
                               coefs={"nll": 1.0, "z_loss": 0.0})
  m = {}
  for i in range(steps_n):
    state, m = step(state, mesh_lib.shard_batch(pick(), mesh), {})
    if (i + 1) % max(1, steps_n // 4) == 0:
      log(f"  nll step {i + 1}/{steps_n}: nll={float(m['nll']):.3f}")
  return state.params, {k: float(v) for k, v in m.items()}


# --------------------------------------------------------------------------- stage 3: RL on suffixes


def rl_cuts(texts, kb, tokenizer, prefix_len: int) -> list[tuple[list[int], str]]:
  """(prefix token ids, original suffix) of every true two-hop conclusion in half B."""
  out = []
  for t in texts:
    for prefix, suffix in R.prefix_suffix_cuts(t, kb):
      ids = [tokenizer.bos_id] + tokenizer.encode(prefix)
      out.append((ids[-prefix_len:], suffix))
  return out


def answer_cut(continuation: str) -> str:
  """The part of a sample the policy is trained on: its thought and its suffix's first sentence
  (the text after that is outside the original suffix, neither judged nor trained)."""
  close = continuation.find(R.THINK_CLOSE)
  start = close + len(R.THINK_CLOSE) if close >= 0 else 0
  dot = continuation.find(".", start)
  return continuation if dot < 0 else continuation[:dot + 1]


def rl_batch(prefixes, samples_ids, rewards, layout, pad_id: int) -> dict[str, np.ndarray]:
  """Window rows of the pg recipe for one RL step: one row per prefix, its group as branches;
  advantage = reward − the group's mean (the thought's tokens get it too)."""
  rew = np.asarray(rewards, np.float32)                       # [G, K]
  rows = objectives.window_rows(layout, prefixes, samples_ids, None, pad_id)
  rows["advantage"] = rew - rew.mean(axis=1, keepdims=True)
  return rows


def rl_stage(model_cfg, params, cuts, tokenizer, cfg: ThinkingConfig, seed: int, mesh, log=print):
  """Stage 3: `cfg.rl_steps` group-baseline PG steps (the pg recipe) on suffix rewards."""
  graphdef, state, shardings, tx, schedule = _train_state(model_cfg, cfg.rl_learning_rate, cfg.rl_steps, seed,
                                                          mesh)
  state = _with_params(state, params, tx)
  if not cuts or cfg.rl_steps == 0:
    return state.params, {"rl/reward": float("nan")}
  K, G = cfg.rl_samples, cfg.rl_prompts
  obj = objectives.Objective("pg", lm_coef=0.0)
  layout = obj.layout(prefix_len=cfg.rl_prefix_len, cand_len=cfg.max_new_tokens, suffix_len=0,
                      num_candidates=K)
  step = None
  sampler = Sampler(nnx.merge(graphdef, state.params), pad_id=tokenizer.pad_id)
  rng = random.Random(seed)
  key = jax.random.key(seed)
  history = []
  m = {}
  for i in range(cfg.rl_steps):
    picked = rng.sample(cuts, min(G, len(cuts)))
    picked += [picked[j % len(picked)] for j in range(G - len(picked))]
    key, k = jax.random.split(key)
    out = sampler.sample(state.params, [p for p, _ in picked], max_new_tokens=cfg.max_new_tokens, key=k,
                         temperature=cfg.temperature, num_samples=K, stop_tokens=[tokenizer.eos_id])
    texts = [answer_cut(t) for t in out.texts(tokenizer)]
    rewards = [[R.suffix_reward(picked[g][1], texts[g * K + j]) for j in range(K)] for g in range(G)]
    cands = [[tokenizer.encode(texts[g * K + j])[:cfg.max_new_tokens] for j in range(K)] for g in range(G)]
    batch = rl_batch([p for p, _ in picked], cands, rewards, layout, tokenizer.pad_id)
    if step is None:
      step = steps.make_train_step(graphdef, tx, schedule, mesh, shardings, steps.spec_of(batch),
                                   loss_fn=obj, coefs=obj.coefs)
    state, m = step(state, mesh_lib.shard_batch(batch, mesh), {})
    history.append(float(np.mean(rewards)))
    if (i + 1) % max(1, cfg.rl_steps // 5) == 0:
      log(f"  rl step {i + 1}/{cfg.rl_steps}: reward={np.mean(history[-5:]):.3f} pg={float(m['pg']):.4f}")
  out = {k: float(v) for k, v in m.items()}
  out["rl/reward"] = float(np.mean(history))
  out["rl/reward_first"], out["rl/reward_last"] = history[0], history[-1]
  return state.params, out


# --------------------------------------------------------------------------- the probe


def reasoning_probe(model_cfg, params, graphdef, items, tokenizer, max_new_tokens: int) -> dict:
  """Greedy continuations of the held-out two-hop prompts, scored by the exact oracle."""
  model = nnx.merge(graphdef, params)
  sampler = Sampler(model, pad_id=tokenizer.pad_id)
  out = sampler.sample(params, [[tokenizer.bos_id] + tokenizer.encode(it["prompt"]) for it in items],
                       max_new_tokens=max_new_tokens, key=jax.random.key(0), temperature=0.0,
                       stop_tokens=[tokenizer.eos_id])
  conts = out.texts(tokenizer)
  return {"reasoning": R.probe_accuracy(items, conts),
          "thought_rate": float(np.mean([R.THINK_OPEN in c for c in conts])),
          "empty_rate": float(np.mean([not c.strip() for c in conts])),   # e.g. an EOS first
          "first_tokens": out.tokens[0, :8].tolist(),
          "example": {"prompt": items[0]["prompt"], "continuation": conts[0][:200]}}


def run_ladder(cfg: ThinkingConfig, log=print) -> dict[str, dict]:
  """Every method of `cfg.methods` from one base; returns method -> probe metrics (+ RL stats)."""
  cfg.validate()
  t0 = time.time()
  wcfg = world_config(cfg.reasoning_rate, cfg.num_documents)
  kb = W.build_kb(wcfg)
  generated = list(R.with_reasoning_documents(kb, wcfg, W.generate_documents(kb, wcfg, "train",
                                                                              cfg.num_documents)))
  docs = [d.text for d in generated]
  half_a, half_b = docs[0::2], docs[1::2]
  items = R.reasoning_items(kb, wcfg.seed, cfg.split)[:cfg.probe_items]
  tok = ByteTokenizer()
  model_cfg = T.ModelConfig(vocab_size=tok.vocab_size, d_model=cfg.d_model, n_layers=cfg.n_layers,
                            n_heads=4, n_kv_heads=2, head_dim=cfg.d_model // 4, d_ff=cfg.d_model * 3,
                            max_seq_len=max(cfg.seq_len, cfg.rl_prefix_len + cfg.max_new_tokens) * 2)
  mesh = mesh_lib.single_device_mesh()
  graphdef = nnx.graphdef(T.Transformer(model_cfg, rngs=nnx.Rngs(0)))
  log(f"thinking ladder: {len(docs)} documents ({sum(d.topic == 'reasoning' for d in generated)} reasoning documents), "
      f"{len(items)} {cfg.split} probe items, methods {cfg.methods}")
  results: dict[str, dict] = {}
  base, _ = nll_stage(model_cfg, None, docs, tok, cfg, cfg.pretrain_steps, cfg.seed, mesh, log)
  probe = lambda p: reasoning_probe(model_cfg, p, graphdef, items, tok, cfg.max_new_tokens)
  if "nll" in cfg.methods:
    results["nll"] = probe(base)
  if "sft_raw" in cfg.methods:
    p, _ = nll_stage(model_cfg, base, half_a, tok, cfg, cfg.sft_steps, cfg.seed + 1, mesh, log)
    results["sft_raw"] = probe(p)
  if {"sft_think", "sft_think_rl"} & set(cfg.methods):
    think, _ = nll_stage(model_cfg, base, [R.augment(t, kb) for t in half_a], tok, cfg, cfg.sft_steps,
                         cfg.seed + 1, mesh, log)
    if "sft_think" in cfg.methods:
      results["sft_think"] = probe(think)
    if "sft_think_rl" in cfg.methods:
      p, rl = rl_stage(model_cfg, think, rl_cuts(half_b, kb, tok, cfg.rl_prefix_len), tok, cfg,
                       cfg.seed + 2, mesh, log)
      results["sft_think_rl"] = {**probe(p), **{k: v for k, v in rl.items() if k.startswith("rl/")}}
  for m, r in results.items():
    log(f"{m:>13}: reasoning={r['reasoning']:.3f} thought_rate={r['thought_rate']:.2f}")
  log(f"ladder done in {time.time() - t0:.0f}s")
  return results


def main(argv=None):
  import argparse
  p = argparse.ArgumentParser(description="The thinking mid-training ladder (docs/thinking.md).")
  for f in dataclasses.fields(ThinkingConfig):
    if f.name == "methods":
      p.add_argument("--methods", default=",".join(METHODS))
    else:
      p.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
  p.add_argument("--out", default="")
  a = vars(p.parse_args(argv))
  out = a.pop("out")
  a["methods"] = tuple(m for m in a["methods"].split(",") if m)
  cfg = ThinkingConfig(**a)
  try:
    cfg.validate()
  except ValueError as e:
    raise SystemExit(str(e))
  res = run_ladder(cfg)
  if out:
    with open(out, "w", encoding="utf-8") as f:
      json.dump({"config": dataclasses.asdict(cfg), "results": res}, f, indent=1)


if __name__ == "__main__":
  main()
