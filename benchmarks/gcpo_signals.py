"""How well each group signal of `sip.advantage` predicts the per-group gradient norms (issue 40).

  PYTHONPATH=. python benchmarks/gcpo_signals.py [--pretrain_steps 600] [--batches 10] [--rollouts 6] [--workdir /tmp/gcpo_signals]

A small policy (configs/tiny.py shape, byte tokenizer, the small world) is pretrained for a few
steps, then SIP batches are made as `sip.recipe='pg'` makes them (oracle judge, K rollouts, no
rewrite). For every group (prefix) it measures, with the plain GRPO advantages A_gc:

  grad_norm      ||∇ Σ_c A_gc log π(c | prefix)||                 (the group's update)
  grad_norm_var  Var_c ||A_gc ∇ log π(c | prefix)||               (per-candidate norms' spread)

and the Spearman rank correlation of each signal with them over all groups: 'none' (GRPO: a
constant weight, correlation 0 by definition), token entropy, reward dispersion alone, cosine and
transport dispersion alone, and the gcpo weights (dispersion x reward dispersion). No timing in it.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from earlyrl_jax.configs import set_fields


def _spearman(x, y) -> float:
  from scipy.stats import spearmanr
  x, y = np.asarray(x, float), np.asarray(y, float)
  if np.ptp(x) == 0 or np.ptp(y) == 0:
    return 0.0
  return float(spearmanr(x, y).statistic)


def small_cfg(seed: int, **kw):
  """configs/tiny.py at the measurement's small shape (byte tokenizer, small world), with `kw`
  ('a.b': value) set."""
  from configs import tiny
  c = tiny.get_config()
  base = {"seed": seed, "eval_every_steps": 0, "eval_world_prompts": 0, "log_every_steps": 50,
          "checkpoint.every_steps": 1000, "data.tokenizer": "byte", "model.vocab_size": 384,
          "data.batch_size": 8, "data.seq_len": 64, "world.num_train_documents": 300,
          "world.num_eval_documents": 20, "world.num_preference_pairs": 10,
          "world.num_rewrite_examples": 10, "world.num_factual_probes": 10, "world.num_unsafe_bait": 6}
  base.update(kw)
  return set_fields(c, base)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--pretrain_steps", type=int, default=600)
  ap.add_argument("--batches", type=int, default=4)
  ap.add_argument("--rollouts", type=int, default=4)
  ap.add_argument("--suffix_len", type=int, default=48)
  ap.add_argument("--workdir", default="/tmp/gcpo_signals")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()
  from earlyrl_jax.train import advantages as A
  from earlyrl_jax.train import loop, sip
  from earlyrl_jax.teacher.rewriter import group_advantages

  cfg_with = lambda **kw: small_cfg(args.seed, **kw)

  t0 = time.time()
  pre = os.path.join(args.workdir, "pretrain")
  loop.train(cfg_with(mode="pretrain", num_steps=args.pretrain_steps,
                      **{"opt.warmup_steps": 20}), pre)
  cfg = cfg_with(mode="sip", num_steps=args.batches, **{
      "init.params_from": pre, "sip.recipe": "pg", "sip.judge": "oracle", "sip.rewrite": "none",
      "sip.num_rollouts": args.rollouts, "sip.advantage": "gcpo",
      "data.prefix_len": 40, "data.suffix_len": args.suffix_len})
  run = loop.setup(cfg, os.path.join(args.workdir, "sip"))
  state = loop.initial_state(run, seed=cfg.seed, params_from=loop.params_from(cfg))
  job = sip.sip_job(run, None, None)
  producer = getattr(job.next_batch, "produce", None)   # the Prefetcher holds the SIPProducer
  seen = []

  def record(orig):
    def f(params, prefixes, cand_ids, j, stats):
      seen.append((prefixes, cand_ids, j))
      return orig(params, prefixes, cand_ids, j, stats)
    return f

  if producer is None:
    raise SystemExit("benchmarks/gcpo_signals.py: the Prefetcher holds no `produce` attribute")
  producer._group_weights = record(producer._group_weights)
  for step in range(args.batches):
    job.next_batch(state, step)

  model = nnx.merge(run.graphdef, state.params)
  graphdef, params = nnx.split(model)

  def cand_logp(p, rows):
    from earlyrl_jax.train import losses
    return losses.sequence_logprobs(nnx.merge(graphdef, p), rows)[0]           # [R]

  @jax.jit
  def group_grad_norm(p, rows, adv):
    g = jax.grad(lambda q: jnp.sum(adv * cand_logp(q, rows)))(p)
    return jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(g)))

  @jax.jit
  def row_grad_norms(p, rows):
    one = lambda r: jax.grad(lambda q: cand_logp(q, jax.tree.map(lambda x: x[None], r))[0])(p)
    norm = lambda r: jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(one(r))))
    return jax.lax.map(norm, rows)

  L = int(cfg.data.prefix_len) + int(cfg.data.suffix_len)
  sig = {k: [] for k in ("token_entropy", "reward_dispersion", "cosine", "transport",
                         "gcpo_cosine", "gcpo_transport")}
  targets = {"grad_norm": [], "grad_norm_var": []}
  for prefixes, cand_ids, j in seen:
    lay = producer.signal_layout
    wr = sip.window_rows(lay, prefixes, cand_ids, None, producer.tok.pad_id)
    from earlyrl_jax.models.scoring import local_rows
    from earlyrl_jax.parallel import mesh as mesh_lib
    from earlyrl_jax.train.objectives import MODEL_FIELDS
    h, ent = (local_rows(x) for x in producer.signal_pass(
        state.params, mesh_lib.shard_batch({k: wr[k] for k in MODEL_FIELDS}, run.mesh)))
    cos = A.group_signals(h, ent, wr, producer.C, dispersion="cosine")
    tr = A.group_signals(h, ent, wr, producer.C, dispersion="transport")
    rd = A.reward_dispersion(j.rewards)
    sig["token_entropy"] += list(cos["entropy"])
    sig["reward_dispersion"] += list(rd)
    sig["cosine"] += list(cos["dispersion"])
    sig["transport"] += list(tr["dispersion"])
    sig["gcpo_cosine"] += list(cos["dispersion"] * rd)
    sig["gcpo_transport"] += list(tr["dispersion"] * rd)
    adv = group_advantages(j.rewards)
    for g in range(len(prefixes)):
      cr = sip.candidate_rows([prefixes[g]] * len(cand_ids[g]), list(cand_ids[g]), L, producer.tok.pad_id)
      cr = {k: jnp.asarray(v) for k, v in cr.items()}
      targets["grad_norm"].append(float(group_grad_norm(params, cr, jnp.asarray(adv[g]))))
      norms = np.asarray(row_grad_norms(params, cr)) * np.abs(adv[g])
      targets["grad_norm_var"].append(float(norms.var()))
  # A tied group (no reward spread) has zero advantages and no gradient: every signal that
  # multiplies by the reward spread "predicts" those zeros. The telling numbers are over the
  # groups the judge separates (untied).
  untied = np.asarray(sig["reward_dispersion"]) > 0
  rank = lambda keep: {name: {t: round(_spearman(np.asarray(v)[keep], np.asarray(targets[t])[keep]), 3)
                              for t in targets}
                       for name, v in [("none", np.ones(len(untied)))] + list(sig.items())}
  out = {"groups": len(untied), "untied_groups": int(untied.sum()),
         "seconds": round(time.time() - t0, 1), "load": os.getloadavg()[0],
         "spearman_all": rank(np.ones(len(untied), bool)), "spearman_untied": rank(untied)}
  print("gcpo_signals:", json.dumps(out))


if __name__ == "__main__":
  main()
