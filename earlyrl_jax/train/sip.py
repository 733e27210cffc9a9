"""The SIP job (`mode='sip'`, run by sip_job.py): windows -> rollouts -> rewrite -> judge -> one step.

For each window (prefix, original suffix) of the stream:

  1. the policy samples K rollouts of the suffix from the *current* params
     (shared-prefix fan-out in the compiled sampler);
  2. the teacher rewrites the original suffix (`sip.rewrite='online'`), the rewrite is
     read from the shards of `mode='rewrite'` (`'precomputed'`), or there is none (`'none'`);
  3. the judge compares the candidates {original, rewrite, rollouts} per prefix
     (`teacher/tournament.py`: all pairs, pivot or adaptive, both orders) into one
     reward per candidate; `sip.judge='none'` skips judging and always picks the
     rewrite (the offline-rewriting baseline: NLL on rewritten suffixes, no judge);
  4. the producer lays out one row per window with the branches the recipe reads
     (`train/objectives.py`: the prefix once, then the candidates), computes the
     reference's log-probs on it when the recipe has one (outside the step), and the
     shared loop (`train/loop.py`) runs the one jitted step.

`sip.max_staleness=1` produces the batch of step N+1 while the update of step N runs,
from the params before that update (`train/prefetch.py`); 0 waits for the update.

Candidates cross between policy and teacher as text: the teacher sees the
window's exact text, the policy's own candidates (original suffix, rollouts) keep
their exact token ids, and only the rewrite is re-encoded with the policy's
tokenizer (as the continuation of its prefix, with the cut's whitespace: `rewrites_at_cut`).

The producer is deterministic given (config, seed, step, params): rollouts use
`fold_in(seed, step)`, so a run killed mid-way and restarted ends with the same
parameters as an uninterrupted one (at staleness 1 the checkpoint also holds the batch
produced ahead). The reference policy (DPO, KL) is the starting point of the run,
rebuilt from its source on resume.
"""
from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np
from earlyrl_jax.data import pipeline
from earlyrl_jax.models.transformer import abstract_model
from earlyrl_jax.sampling.sampler import Sampler
from earlyrl_jax.teacher.rewriter import group_advantages  # GRPO's, shared with the rewriter
from earlyrl_jax.train import loop
from earlyrl_jax.train import steps as steps_lib
from earlyrl_jax.train.objectives import MODEL_FIELDS, ROW_FIELDS, Layout, Objective, window_rows

SOURCES = ("original", "rewrite", "rollout")


def candidate_rows(prefixes: list[np.ndarray], candidates: list[np.ndarray], length: int,
                   pad_id: int) -> dict[str, np.ndarray]:
  """Rows `prefix + candidate`, right-padded to `length`; loss only on candidate tokens.

  Prefixes keep their last tokens when a row would not fit (the candidate is
  never cut here: callers cap candidates first).
  """
  R = len(prefixes)
  out = {"tokens": np.full((R, length), pad_id, np.int32), "targets": np.full((R, length), pad_id, np.int32),
         "positions": np.zeros((R, length), np.int32), "segment_ids": np.zeros((R, length), np.int32),
         "loss_mask": np.zeros((R, length), np.float32)}
  for r, (p, c) in enumerate(zip(prefixes, candidates)):
    p = np.asarray(p, np.int32)[-(length - len(c)):] if len(c) < length else np.zeros((0,), np.int32)
    row = np.concatenate([p, np.asarray(c, np.int32)])[:length]
    n = len(row)
    out["tokens"][r, :n] = row
    out["targets"][r, :n - 1] = row[1:]
    out["positions"][r, :n] = np.arange(n)
    out["segment_ids"][r, :n] = 1
    out["loss_mask"][r, max(len(p) - 1, 0):n - 1] = 1.0  # predictions of candidate tokens
  return out


class SIPProducer:
  """Builds one SIP batch per call from the window stream, the policy's params and the teacher."""

  def __init__(self, run: loop.Run, objective: Objective, judge, rewriter, window_iter,
               reference=None, teacher=None):
    self.run, self.cfg, self.s = run, run.cfg, run.cfg.sip
    self.objective, self.judge, self.rewriter = objective, judge, rewriter
    self.window_iter = window_iter
    self.tok = run.tokenizer
    # Built once on the abstract model (compiled programs cached); params are passed per call.
    self.sampler = Sampler(abstract_model(run.model_cfg), mesh=run.mesh, pad_id=self.tok.pad_id)
    self.K = int(self.s.num_rollouts)
    self.with_rewrite = self.s.rewrite != "none"
    self.C = 1 + int(self.with_rewrite) + self.K
    self.cand_len = int(self.s.candidate_len or self.cfg.data.suffix_len)
    self.row_len = int(self.cfg.data.prefix_len) + self.cand_len
    self.layout = objective.layout(prefix_len=self.cfg.data.prefix_len, cand_len=self.cand_len,
                                   suffix_len=self.cfg.data.suffix_len, num_candidates=self.C)
    self.reference = None
    if objective.needs_reference:   # (graphdef, params, shardings): its pass runs once per batch
      if reference is None:
        raise ValueError(f"sip.recipe={objective.recipe!r} needs the reference policy")
      graphdef, self.ref_params, ref_shardings = reference
      L = self.layout.reference_length
      spec = {k: v for k, v in batch_spec(self, self.cfg.data.batch_size).items() if k in MODEL_FIELDS}
      self.reference = steps_lib.make_frozen_pass(
          graphdef, ref_shardings, run.mesh, spec, lambda m, b: objective.reference_logp(m, b, L))
    self._t_last = None
    self._extensions_init(run, objective, teacher)
    # Failed / unparsable verdicts and all-tied streaks are logged and stop the run (judge_health).
    self.health = None
    if judge is not None:
      from earlyrl_jax.train.judge_health import JudgeHealth, check_prompt_fits
      check_prompt_fits(judge, self.cand_len,
                        "sip.candidate_len" if self.s.get("candidate_len", 0) else "data.suffix_len")
      self.health = JudgeHealth.from_config(judge, self.cfg)
    self.lm_target = self.s.get("lm_target", "window")
    if self.lm_target == "rewrite" and not self.with_rewrite:
      raise ValueError("sip.lm_target='rewrite' needs a rewrite (sip.rewrite='online' or 'precomputed')")
    if self.with_rewrite and rewriter is None:
      raise ValueError(f"sip.rewrite={self.s.rewrite!r} needs a rewriter (the teacher's, or the "
                       "precomputed shards of mode='rewrite')")
    # Principle-guided rewriting (docs/principles.md): DPF pairs, the judge's mention penalty, the
    # principle line before the policy's prompt.
    self.principle = run_principle(self.cfg, run.workdir)
    self.principle_mode = self.s.get("principle_mode", "off")
    self.principle_ids = (principle_prompt_ids(self.tok, self.principle)
                          if self.principle is not None and self.principle.in_policy_prompt else None)
    if self.principle_ids is not None and len(self.principle_ids) + 2 > int(self.cfg.data.prefix_len):
      raise ValueError(f"principle.in_policy_prompt: the principle's {len(self.principle_ids)} tokens "
                       f"leave no room for the prefix (data.prefix_len={self.cfg.data.prefix_len})")
    # Waits for the previous update's params off this thread: the update's end is timed
    # exactly while this thread reads windows and rewrites them (see __call__).
    from concurrent.futures import ThreadPoolExecutor
    self._waiter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sip-params-ready")

  def sources(self) -> list[str]:
    return ["original"] + (["rewrite"] if self.with_rewrite else []) + ["rollout"] * self.K

  # ------------------------------------------------------------------ one batch
  def __call__(self, state, step: int):
    t_start = time.monotonic()
    # The loop dispatched the previous update asynchronously. Rewriting needs only the
    # windows, not the policy, so it runs first: with the teacher on its own devices it
    # overlaps the in-flight update. A helper thread records when the new params are ready
    # (time/update); time/update_wait is the part of the update nothing overlapped.
    ready_at = self._waiter.submit(lambda p: (jax.block_until_ready(p), time.monotonic())[1],
                                   state.params)
    w = next(self.window_iter)
    stats = {k: v for k, v in w.pop("stats").items()}
    G = len(w["prefix"])
    prefixes = [w["prefix"][g, :w["prefix_len"][g]] for g in range(G)]
    if self.principle_ids is not None:   # the policy's prompt: the principle, then the prefix
      from earlyrl_jax.teacher.principles import with_prompt_ids
      prefixes = [with_prompt_ids(p, self.principle_ids, int(self.cfg.data.prefix_len), self.tok.bos_id)
                  for p in prefixes]
    originals = [w["suffix"][g, :w["suffix_len"][g]] for g in range(G)]
    prefix_text, suffix_text = list(w["prefix_text"]), list(w["suffix_text"])
    references, missing = self._references(w)
    key = jax.random.fold_in(jax.random.key(self.cfg.seed), step)

    t_rw = time.monotonic()
    rewrite_text, rewrite_ids = [], []
    if self.with_rewrite:  # the teacher ('online') or a look-up in the shards ('precomputed')
      failed = getattr(self.rewriter, "failed", 0)
      rewrite_text = self.rewriter.rewrite(prefix_text, suffix_text,
                                           key=jax.random.fold_in(key, 1), temperature=0.0)
      # A failed rewrite is the original (the rewriter counts and logs it): counted here per step.
      stats["sip/rewrite_failed_frac"] = (getattr(self.rewriter, "failed", 0) - failed) / max(G, 1)
      rewrite_text, rewrite_ids = rewrites_at_cut(self.tok, prefix_text, suffix_text, rewrite_text,
                                                  originals, self.cand_len)
    t_wait = time.monotonic()
    rewrite_time = t_wait - t_rw
    params_ready = ready_at.result()  # the rollouts need the new params
    update_wait = time.monotonic() - t_wait
    update_time = 0.0 if self._t_last is None else max(params_ready - self._t_last, 0.0)

    t0 = time.monotonic()
    roll_ids, roll_text = [], []
    if self.K:
      roll = self.sampler.sample(
          state.params, prefixes, max_new_tokens=int(self.cfg.data.suffix_len), key=key,
          temperature=float(self.s.temperature), top_p=float(self.s.top_p), num_samples=self.K,
          stop_tokens=[self.tok.eos_id] if self.tok.eos_id is not None else ())
      roll_ids = [roll.tokens[r, :roll.lengths[r]] for r in range(G * self.K)]
      roll_text = [self.tok.decode_continuation([i for i in ids if i != self.tok.eos_id])
                   for ids in roll_ids]
    t1 = time.monotonic()

    cand_text, cand_ids = [], []
    for g in range(G):
      texts = [suffix_text[g]] + ([rewrite_text[g]] if self.with_rewrite else [])
      ids = [originals[g][:self.cand_len]] + ([rewrite_ids[g]] if self.with_rewrite else [])
      texts += roll_text[g * self.K:(g + 1) * self.K]
      ids += [r[:self.cand_len] for r in roll_ids[g * self.K:(g + 1) * self.K]]
      cand_text.append(texts)
      cand_ids.append(ids)
    j = self._judge(prefix_text, references, cand_text, step)
    t3 = time.monotonic()

    weights = self._group_weights(state.params, prefixes, cand_ids, j, stats)   # None: sip.advantage='group'
    batch = self._rows(prefixes, originals, cand_ids, j, weights)
    t4 = time.monotonic()
    if self.teacher_pass is not None:   # the teacher's top-k log-probs on the row (distillation)
      self._teacher_logp(batch)
    if self.reference is not None:   # log π_ref of the row's candidates, outside the gradient
      from earlyrl_jax.models.scoring import local_rows
      from earlyrl_jax.parallel import mesh as mesh_lib
      rows = mesh_lib.shard_batch({k: batch[k] for k in MODEL_FIELDS}, self.run.mesh)
      batch["ref_logp"] = local_rows(self.reference(self.ref_params, rows))
    stats.update(self._stats(j, G))
    if self.health is not None:   # raises TeacherFailure past teacher.max_failure_share / a tie streak
      stats.update(self.health.step(j.all_tied, step + 1))   # the step as logged (1-based)
    if missing is not None:
      stats["sip/reference_missing_frac"] = missing
    stats.update({"sip/judge_calls": float(j.calls),  # judged rows: both orders + pointwise
                  "time/reference": time.monotonic() - t4,
                  "time/rollout": t1 - t0, "time/rewrite": rewrite_time, "time/judge": t3 - t1,
                  "time/update": update_time, "time/update_wait": update_wait,
                  "time/produce": time.monotonic() - t_start})
    self._t_last = time.monotonic()
    return batch, stats

  def _references(self, w) -> tuple[list[str], float | None]:
    """Factuality's reference per window (`sip.factuality_reference`) and, for 'next_span', the
    share of windows whose document ends at the suffix (judged without a reference).

    'original' (the paper's): the original suffix, which is itself a candidate, so the
    original is judged against itself. 'next_span': the document's text after the suffix,
    which no candidate contains."""
    if self.s.get("factuality_reference", "original") == "original":
      return list(w["suffix_text"]), None
    if "next_text" not in w:
      raise ValueError("sip.factuality_reference='next_span' needs windows that carry the text "
                       "after their suffix (data.pipeline.make_window_dataset)")
    refs = list(w["next_text"])
    return refs, float(np.mean([not r.strip() for r in refs])) if refs else 0.0

  def _judge(self, prefix_text, references, cand_text, step: int):
    j = self._judge_candidates(prefix_text, references, cand_text, step)
    if self.principle_mode == "guide" and self.judge is not None and self.principle.judge_penalty:
      from earlyrl_jax.teacher.principles import penalize_mentions
      j = penalize_mentions(j, self.principle, cand_text,
                            [np.random.default_rng((int(self.cfg.seed), int(step), g, 0xD9F))
                             for g in range(len(cand_text))])
    return j

  def _judge_candidates(self, prefix_text, references, cand_text, step: int):
    if self.principle_mode == "dpf":   # DPF: revision chosen, original rejected, nothing judged
      from earlyrl_jax.teacher.principles import dpf_judgement
      return dpf_judgement(self.principle, cand_text)
    if self.judge is None:  # no judge: the rewrite (or the original) is always chosen, by rule
      G, pick = len(cand_text), int(self.with_rewrite)
      from earlyrl_jax.teacher.tournament import Judgement
      rewards = np.zeros((G, self.C), np.float32)
      rewards[:, pick] = 1.0
      return Judgement(rewards=rewards, per_axis={}, prefs={}, calls=0, position_consistency=1.0,
                       chosen=np.full((G,), pick), rejected=np.full((G,), pick),
                       all_tied=np.zeros((G,), bool))
    from earlyrl_jax.teacher.tournament import judge_groups
    if self.s.get("judge_trim", False):
      cand_text = judged_texts(cand_text)
    return judge_groups(self.judge, prefix_text, cand_text, scheme=self.s.judge_scheme,
                        axes=dict(self.s.judge_axes), both_orders=bool(self.s.both_orders),
                        aggregate=self.s.aggregate,
                        # A reference is clipped from its start; '' (no next span) is none.
                        references=references,
                        budget=int(self.s.judge_budget) or None,
                        tie_rng=[tie_rng(self.cfg.seed, step, jax.process_index() * len(prefix_text) + g)
                                 for g in range(len(prefix_text))],
                        empty_loses=bool(self.s.get("empty_loses", False)))

  def _rows(self, prefixes, originals, cand_ids, j, weights=None) -> dict[str, np.ndarray]:
    """One row per window (objectives.window_rows) with the branches the recipe reads, and the
    recipe's per-window fields; nothing a term does not read (no lm branch at lm_coef=0, no
    candidates when the recipe's coefficient is 0)."""
    G = len(prefixes)
    recipe, names = self.objective.recipe, self.layout.names
    extra: dict[str, np.ndarray] = {}
    if not names:
      branches = [[] for _ in range(G)]
    elif recipe == "dpo":
      branches = [[cand_ids[g][j.chosen[g]], cand_ids[g][j.rejected[g]]] for g in range(G)]
      extra["pair_mask"] = (~j.all_tied & (j.chosen != j.rejected)).astype(np.float32)
      if self.objective.pair_weighted:   # sip.pair_weight: the group's weight on its pair
        extra["pair_weight"] = weights.astype(np.float32)
    elif recipe == "rf_nll":
      best = j.chosen.copy()
      weight = np.ones((G,), np.float32)
      below = rf_filtered(j, float(self.s.rf_threshold)) if self.judge is not None else np.zeros((G,), bool)
      if self.s.rf_fallback == "original":
        best = np.where(below, 0, best)
      else:  # 'skip'
        weight = np.where(below, 0.0, 1.0).astype(np.float32)
      branches = [[cand_ids[g][best[g]]] for g in range(G)]
      extra["best_weight"] = weight
    else:
      branches = [list(cand_ids[g]) for g in range(G)]
      extra["advantage"] = group_advantages(j.rewards).astype(np.float32)          # [G, C]
      if weights is not None:   # sip.advantage='gcpo' | 'token_entropy': a weight per group
        extra["advantage"] = extra["advantage"] * weights[:, None].astype(np.float32)
      extra["is_rollout"] = np.tile(np.array([s == "rollout" for s in self.sources()], np.float32), (G, 1))
    # The LM term (sip.lm_target): the whole window, the original suffix given the prefix, or the
    # teacher's rewrite given the prefix (what rewrite_nll trains on); the latter two leave the
    # trunk's (prefix) predictions out of it.
    lm_seqs = [c[1] for c in cand_ids] if self.lm_target == "rewrite" else originals
    if self.objective.distill_branch:   # sequence-level distillation: the teacher's rewrite
      branches = [list(b) + [cand_ids[g][1]] for g, b in enumerate(branches)]
    batch = window_rows(self.layout, prefixes, branches, lm_seqs, self.tok.pad_id,
                        lm_prefix=self.lm_target == "window")
    batch.update(extra)
    if self.objective.distill_coef:
      batch["distill_mask"] = self._distill_mask(batch, j)
    return batch

  # ------------------------------------------------- issue 40: GCPO weights, distillation
  def _extensions_init(self, run, objective: Objective, teacher) -> None:
    """The policy pass of the group weights (sip.advantage / sip.pair_weight: one forward pass
    over every candidate per batch) and the teacher's pass of token-level distillation."""
    from earlyrl_jax.train import advantages as adv_lib
    s = self.s
    self.advantage = s.get("advantage", "group")
    self.pair_weight = s.get("pair_weight", "none")
    self.weighting = (self.advantage if objective.recipe == "pg" and objective.coef else
                      self.pair_weight if objective.pair_weighted else "group")
    if self.weighting not in ("group", "none"):
      C = self.C
      self.signal_layout = Layout(int(self.cfg.data.prefix_len), self.cand_len,
                                  tuple(f"cand{i}" for i in range(C)))
      G = self.cfg.data.batch_size
      spec = {f: jax.ShapeDtypeStruct((G, self.signal_layout.length), np.int32) for f in MODEL_FIELDS}
      self.signal_pass = steps_lib.make_frozen_pass(run.graphdef, run.shardings.params, run.mesh, spec,
                                                    adv_lib.policy_pass)
    self.teacher_pass, self.distill_k = None, 0
    if objective.needs_teacher_logp:
      if teacher is None:
        raise ValueError("sip.distill_coef > 0 at sip.distill_level='token' needs the teacher's "
                         "weights in this program (teacher.backend='inprocess')")
      from earlyrl_jax.train import distill
      distill.check_same_vocabulary(self.tok, int(run.model_cfg.vocab_size), teacher.tokenizer,
                                    int(teacher.model_cfg.vocab_size))
      if teacher.model_cfg.max_seq_len < self.row_len:
        raise ValueError(f"sip.distill_level='token': the teacher reads {self.row_len} positions "
                         f"(data.prefix_len + candidates), its max_seq_len is {teacher.model_cfg.max_seq_len}")
      from flax import nnx
      gd, L, k = teacher.graphdef, self.layout.reference_length, int(s.get("distill_top_k", 0))
      V = int(teacher.model_cfg.vocab_size)
      self.distill_k = k if 0 < k < V else V
      self.teacher_params = teacher.params
      self.teacher_pass = jax.jit(lambda p, b: distill.teacher_topk(
          nnx.merge(gd, jax.lax.stop_gradient(p)), b, L, k))

  def _group_weights(self, params, prefixes, cand_ids, j, stats) -> np.ndarray | None:
    """w [G] (train/advantages.py) from one pass of the current policy over every candidate;
    None when nothing is weighted."""
    if self.weighting in ("group", "none"):
      return None
    from earlyrl_jax.models.scoring import local_rows
    from earlyrl_jax.parallel import mesh as mesh_lib
    from earlyrl_jax.train import advantages as adv_lib
    t0 = time.monotonic()
    rows = window_rows(self.signal_layout, prefixes, cand_ids, None, self.tok.pad_id)
    sharded = mesh_lib.shard_batch({k: rows[k] for k in MODEL_FIELDS}, self.run.mesh)
    h, ent = (local_rows(x) for x in self.signal_pass(params, sharded))
    sig = adv_lib.group_signals(h, ent, rows, self.C, dispersion=self.s.get("gcpo_dispersion", "cosine"))
    strength, cap = float(self.s.get("gcpo_strength", 1.0)), float(self.s.get("gcpo_max_weight", 4.0))
    if self.weighting == "gcpo":
      w = adv_lib.gcpo_weights(sig["dispersion"], j.rewards, strength, cap)
    else:
      w = adv_lib.entropy_weights(sig["entropy"], strength, cap)
    stats.update({"gcpo/dispersion_mean": float(sig["dispersion"].mean()),
                  "gcpo/entropy_mean": float(sig["entropy"].mean()),
                  "gcpo/reward_dispersion_mean": float(adv_lib.reward_dispersion(j.rewards).mean()),
                  "gcpo/weight_max": float(w.max()), "gcpo/weight_min": float(w.min()),
                  "time/group_weights": time.monotonic() - t0})
    return w

  def _distill_mask(self, batch, j) -> np.ndarray:
    """f32 [G, L]: the predictions the distill term reads (train/distill.py)."""
    br, lm = batch["branch_ids"], batch["loss_mask"]
    if self.objective.distill_branch:
      on = br == self.layout.names.index("distill") + 1
    elif self.s.get("distill_on", "chosen") == "candidates":
      n = len(self.layout.names)
      on = (br >= 1) & (br <= n)
    elif self.objective.recipe == "pg":   # the judge's chosen candidate's branch
      on = br == (np.asarray(j.chosen)[:, None] + 1)
    else:                                 # dpo: 'chosen'; rf_nll: 'best'
      on = br == 1
    return (lm * on).astype(np.float32)

  def _teacher_logp(self, batch) -> None:
    L = self.layout.reference_length
    cut = {f: batch[f][:, :L] for f in ("tokens", "positions", "segment_ids", "visible_until")}
    vals, ids = self.teacher_pass(self.teacher_params, cut)
    batch["teacher_logp"], batch["teacher_ids"] = np.asarray(vals), np.asarray(ids)

  def _stats(self, j, G: int) -> dict[str, float]:
    out = win_shares(self.sources(), j)
    src = np.array(self.sources())
    for s in SOURCES:
      if s in src:
        out[f"sip/reward_{s}"] = float(j.rewards[:, src == s].mean())
    for axis, r in j.per_axis.items():
      out[f"sip/reward_{axis}"] = float(r.mean())
    if self.objective.recipe == "rf_nll" and self.judge is not None:
      out["sip/rf_fallback_frac"] = float(np.mean(rf_filtered(j, float(self.s.rf_threshold))))
    out["sip/position_consistency"] = float(j.position_consistency)
    if self.principle_mode == "dpf":   # DPF pairs (windows whose original breaks the principle)
      out["sip/principle_pairs_frac"] = float(np.mean(~np.asarray(j.all_tied, bool)))
    adv = group_advantages(j.rewards)
    out["pg/advantage_mean"] = float(adv.mean())
    out["pg/advantage_std"] = float(adv.std())
    out["pg/advantage_abs_max"] = float(np.abs(adv).max())
    return out


def rewrites_at_cut(tok, prefix_text, suffix_text, rewrite_text, originals, cand_len: int
                    ) -> tuple[list[str], list[np.ndarray]]:
  """(texts, ids) of the rewrites as they are trained on: each placed where its window's suffix
  stood (`place_at_cut`: the cut's whitespace kept, whatever rewriter or shard it came from) and
  encoded as the continuation of its prefix (`encode_in_context`), at most cand_len ids; a copy
  of the original is the original's own ids (`copies_as_originals`)."""
  from earlyrl_jax.data.tokenizer import encode_in_context
  from earlyrl_jax.teacher.rewriter import place_at_cut
  texts = [place_at_cut(r, o) for r, o in zip(rewrite_text, suffix_text)]
  ids = [np.asarray(encode_in_context(tok, p, t), np.int32)[:cand_len]
         for p, t in zip(prefix_text, texts)]
  return texts, copies_as_originals(texts, suffix_text, ids, originals, cand_len)


def copies_as_originals(rewrite_text, suffix_text, rewrite_ids, originals, cand_len: int) -> list[np.ndarray]:
  """A rewrite that copies the original suffix (up to surrounding whitespace, which the editor
  strips) is the original: the tournament makes them one player, and training on it uses the
  window's own ids, not a re-encoding of its text (which can differ: a first word glued to the
  prefix). Ties between the two then change nothing that is trained."""
  return [originals[g][:cand_len] if r.strip() == o.strip() else ids
          for g, (r, o, ids) in enumerate(zip(rewrite_text, suffix_text, rewrite_ids))]


def tie_rng(seed: int, step: int, group: int = 0) -> np.random.Generator:
  """The generator that draws among a group's tied candidates (teacher/tournament.py): a function
  of the run's seed, the step and the group's index in the global batch only, so a resumed run
  draws what an uninterrupted one did, on any number of processes."""
  return np.random.default_rng((int(seed), int(step), int(group), 0x7135))


def win_shares(sources: list[str], j) -> dict[str, float]:
  """Share of the groups each candidate source wins, and the share nobody wins (all tied).

  A group the judge cannot rank is no one's win: counted as the original's (its index 0 wins a
  lowest-index tie) it would inflate the curriculum's "the original wins early" half. The
  shares and `sip/all_tied_frac` sum to 1."""
  src = np.array(sources)
  ranked = ~np.asarray(j.all_tied, bool)
  out = {f"sip/win_share_{s}": float(np.mean(ranked & (src[j.chosen] == s)))
         for s in SOURCES if s in src}
  out["sip/all_tied_frac"] = float(np.mean(~ranked))
  return out


def rf_filtered(j, threshold: float) -> np.ndarray:
  """bool [G]: RF-NLL groups whose best candidate is not trained on (then `sip.rf_fallback`).

  A group the judge cannot rank (all tied) has no best candidate. Otherwise the best one needs
  an absolute score: its safety reward, 1 - P(unsafe) from the judge's pointwise verdict
  (`sip.rf_threshold`; 0 filters nothing). The combined reward is a win rate within the group,
  relative by construction, so a threshold on it would say nothing about the candidate."""
  out = np.asarray(j.all_tied, bool).copy()
  if threshold > 0:
    if "safety" not in j.per_axis:
      raise ValueError(f"sip.rf_threshold={threshold}: it bars the best candidate's safety score, "
                       "and sip.judge_axes judges no safety")
    G = len(out)
    out |= np.nan_to_num(j.per_axis["safety"][np.arange(G), j.chosen], nan=0.0) < threshold
  return out


def batch_spec(producer, global_windows: int) -> dict[str, jax.ShapeDtypeStruct]:
  """Global shapes of one SIP batch (host-local rows x process count).

  producer: anything with `layout` (objectives.Layout), `objective` and `C` (candidates per
  window): the SIPProducer, or a namespace when planning without one (benchmarks/memory.py)."""
  G, lay, C, objective = global_windows, producer.layout, producer.C, producer.objective
  spec = {f: jax.ShapeDtypeStruct((G, lay.length), np.float32 if f == "loss_mask" else np.int32)
          for f in ROW_FIELDS}
  if lay.names:
    if objective.recipe == "dpo":
      spec["pair_mask"] = jax.ShapeDtypeStruct((G,), np.float32)
      if objective.pair_weighted:
        spec["pair_weight"] = jax.ShapeDtypeStruct((G,), np.float32)
    elif objective.recipe == "rf_nll":
      spec["best_weight"] = jax.ShapeDtypeStruct((G,), np.float32)
    else:
      spec["advantage"] = jax.ShapeDtypeStruct((G, C), np.float32)
      spec["is_rollout"] = jax.ShapeDtypeStruct((G, C), np.float32)
  if objective.needs_reference:
    spec["ref_logp"] = jax.ShapeDtypeStruct((G, lay.reference_length), np.float32)
  if objective.distill_coef:
    spec["distill_mask"] = jax.ShapeDtypeStruct((G, lay.length), np.float32)
  if objective.needs_teacher_logp:   # k of the teacher pass: sip.distill_top_k, or the vocabulary
    k = int(getattr(producer, "distill_k", 0))
    spec["teacher_logp"] = jax.ShapeDtypeStruct((G, lay.reference_length, k), np.float32)
    spec["teacher_ids"] = jax.ShapeDtypeStruct((G, lay.reference_length, k), np.int32)
  return spec


def window_layout(cfg, objective: Objective) -> Layout:
  """The row layout a SIP run of `cfg` trains on (what the producer builds)."""
  s, d = cfg.sip, cfg.data
  C = 1 + int(s.rewrite != "none") + int(s.num_rollouts)
  return objective.layout(prefix_len=d.prefix_len, cand_len=int(s.get("candidate_len", 0) or d.suffix_len),
                          suffix_len=d.suffix_len, num_candidates=C)


def objective_from_config(s, distill_level: str | None = None) -> Objective:
  """distill_level: 'token' or 'sequence', resolved from sip.distill_level='auto' by the caller
  that knows the teacher (`resolve_distill_level`); None takes the field ('auto' -> 'token')."""
  level = distill_level or s.get("distill_level", "auto")
  return Objective(recipe=s.recipe, beta=float(s.beta), lm_coef=float(s.lm_coef), coef=float(s.coef),
                   kl_coef=float(s.kl_coef),
                   pair_weighted=s.recipe == "dpo" and s.get("pair_weight", "none") != "none",
                   distill_coef=float(s.get("distill_coef", 0.0)),
                   distill_level="token" if level == "auto" else level)


def resolve_distill_level(run: loop.Run, teacher) -> str:
  """sip.distill_level with 'auto' resolved: 'token' when the teacher shares the policy's
  vocabulary, else 'sequence' (said once in the log)."""
  level = run.cfg.sip.get("distill_level", "auto")
  if level != "auto" or not run.cfg.sip.get("distill_coef", 0.0):
    return "token" if level == "auto" else level
  from earlyrl_jax.train import distill
  why = None if teacher is None else distill.vocabulary_mismatch(
      run.tokenizer, int(run.model_cfg.vocab_size), teacher.tokenizer, int(teacher.model_cfg.vocab_size))
  if teacher is None or why:
    loop.log(f"sip.distill_level='auto': sequence level (NLL on the teacher's rewrite): "
             f"{why or 'no teacher weights in this program'}")
    return "sequence"
  return "token"


def judged_texts(cand_text: list[list[str]]) -> list[list[str]]:
  """Candidates as the judge sees them with `sip.judge_trim`: each up to its last sentence end.

  The window cuts the original suffix after N tokens, mid-sentence, and a rollout is cut at
  the same N unless it ended its document first. A judge that penalises a cut-off sentence
  (the oracles halve quality for it, and the embedded teacher learns that) then prefers
  every rollout that stopped early to the real continuation, and DPO teaches the policy to
  stop early. The cut is the window's, not the writer's, so every candidate is judged on its
  complete sentences (a candidate without one is judged as it is); training still uses the
  whole candidate."""
  from earlyrl_jax.teacher.prompts.text import trim_to_sentence_end
  return [[trim_to_sentence_end(t) or t for t in texts] for texts in cand_text]


def build_judge(cfg, run: loop.Run, teacher):
  """The configured judge: the teacher's LM judge, the world's oracles (ground truth), or none;
  with `sip.oracle_axes`, the teacher's judge with those axes judged by the oracles."""
  from earlyrl_jax import world
  from earlyrl_jax.teacher.judges.oracle import AxisJudges, OracleJudge
  if cfg.sip.judge == "none":
    return None
  oracle = lambda: OracleJudge(world.Oracles.from_dir(loop.world_dir_of(cfg, run.workdir)))
  if cfg.sip.judge == "oracle":
    return oracle()
  from earlyrl_jax import configs
  from earlyrl_jax.teacher.judges.configured import configured_judge
  axes = configs.oracle_axes(cfg)
  judge = configured_judge(cfg.teacher, teacher)
  return AxisJudges(judge, dict.fromkeys(axes, oracle())) if axes else judge


def reference_tree(run: loop.Run, state) -> tuple[Any, Any, Any]:
  """The frozen reference (graphdef, params, shardings): a copy of the starting policy."""
  params = jax.tree.map(lambda x: x.copy(), state.params)
  return run.graphdef, params, run.shardings.params


def sip_job(run: loop.Run, teacher, rewriter) -> loop.Job:
  """The SIP job of `run`: judged by `teacher` (or the oracles, `sip.judge`), rewrites from
  `rewriter` (the teacher's, the precomputed shards' or None: `rewrite_job.sip_rewriter`)."""
  cfg, d = run.cfg, run.cfg.data
  objective = objective_from_config(cfg.sip, resolve_distill_level(run, teacher))
  host_windows = d.batch_size // jax.process_count()
  windows = iter(pipeline.make_window_dataset(
      d, run.tokenizer, host_batch_size=host_windows, seed=cfg.seed,
      process_index=jax.process_index(), process_count=jax.process_count(), files=run.train_files))
  judge = build_judge(cfg, run, teacher)
  reference = None
  if objective.needs_reference:
    start = loop.initial_state(run, seed=cfg.seed, params_from=loop.params_from(cfg))
    reference = reference_tree(run, start)
  producer = SIPProducer(run, objective, judge, rewriter, windows, reference=reference,
                         teacher=teacher if objective.needs_teacher_logp else None)
  # Staleness 1: step N+1's batch is made while step N's update runs. Either way the Prefetcher
  # is the checkpointed data iterator (at 0 its state is the window iterator's own).
  from earlyrl_jax.train.prefetch import Prefetcher
  ahead = Prefetcher(producer, windows, mesh=run.mesh, num_steps=cfg.num_steps, ahead=max_staleness(cfg))
  keys = ("loss", "nll", objective.recipe, "rewards/accuracy", "sip/win_share_rollout",
          "sip/win_share_original", "sip/win_share_rewrite")
  return loop.Job(name=f"sip ({objective.recipe})", batch_spec=batch_spec(producer, d.batch_size),
                  next_batch=ahead, data_iter=ahead, loss_fn=objective, coefs=objective.coefs,
                  evaluate=loop.world_eval_during(run), at_end=loop.world_eval_at_end(run),
                  console_keys=keys)


def world_kb(cfg, workdir: str):
  """The run's world knowledge base, or None when the run has no synthetic world."""
  import os
  from earlyrl_jax import world as W
  kb_path = os.path.join(loop.world_dir_of(cfg, workdir), W.KB_FILE)
  return W.KnowledgeBase.load(kb_path) if os.path.isfile(kb_path) else None


def run_principle(cfg, workdir: str, kb=None):
  """The run's Principle (teacher/principles.py; None with sip.principle_mode='off'), its names
  checked against the world when the run has one (an unknown name is a ConfigError naming the
  field) and its longer names filled in (exact mention counts). kb: the world's, when the
  caller has it loaded already."""
  from earlyrl_jax.teacher.principles import principle_of
  kb = kb if kb is not None else world_kb(cfg, workdir)
  known = [n for ns in kb.entities.values() for n in ns] if kb is not None else None
  p = principle_of(cfg, known)
  if p is None or kb is None:
    return p
  import dataclasses
  from earlyrl_jax.world.principled import longer_names
  return dataclasses.replace(p, longer_names=longer_names(kb, p.banned))


def world_reviser(run: loop.Run):
  """`sip.rewrite='principle'`: the world's principle-following reviser (world/principled.py)."""
  from earlyrl_jax.configs import ConfigError
  from earlyrl_jax.world.principled import WorldReviser
  kb = world_kb(run.cfg, run.workdir)   # read once: the principle's check and the reviser
  p = run_principle(run.cfg, run.workdir, kb) if kb is not None else None
  if p is None:
    raise ConfigError("sip.rewrite: 'principle' revises by the world's grammar: it needs "
                      "sip.principle_mode 'guide' or 'dpf' and a synthetic world (data.corpus='world')")
  return WorldReviser(kb, p.banned, p.instead)


def principle_prompt_ids(tok, principle) -> np.ndarray:
  """The policy-tokenizer ids of the principle line that precedes a prompt (no BOS)."""
  return np.asarray(tok.encode(principle.prompt_line()), np.int32)


def max_staleness(cfg) -> int:
  """`sip.max_staleness` (0 when the config has no such field): 0 or 1."""
  from earlyrl_jax import configs
  value = cfg.sip.get("max_staleness", 0)
  if isinstance(value, bool) or value not in (0, 1):
    raise configs.ConfigError(f"sip.max_staleness: {value!r} is not 0 (rollouts from the current "
                              "params) or 1 (the next batch produced during the update)")
  return int(value)

