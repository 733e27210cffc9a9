"""Self-improving pretraining (`mode='sip'`): windows -> rollouts -> rewrite -> judge -> one step.

For each window (prefix, original suffix) of the stream:

  1. the policy samples K rollouts of the suffix from the *current* params
     (shared-prefix fan-out in the compiled sampler);
  2. the teacher rewrites the original suffix (`sip.rewrite='online'`), the rewrite is
     read from the shards of `mode='rewrite'` (`'precomputed'`), or there is none (`'none'`);
  3. the judge compares the candidates {original, rewrite, rollouts} per prefix
     (`teacher/tournament.py`: all pairs, pivot or adaptive, both orders) into one
     reward per candidate; `sip.judge='none'` skips judging and always picks the
     rewrite (the offline-rewriting baseline: NLL on rewritten suffixes, no judge);
  4. the producer lays out the rows the recipe needs (`train/objectives.py`) and the
     shared loop (`train/loop.py`) runs the one jitted step.

Candidates cross between policy and teacher as text: the teacher sees the
window's exact text, the policy's own candidates (original suffix, rollouts) keep
their exact token ids, and only the rewrite is re-encoded with the policy's
tokenizer (as a continuation, so no spurious leading piece).

The producer is deterministic given (config, seed, step, params): rollouts use
`fold_in(seed, step)`, so a run killed mid-way and restarted ends with the same
parameters as an uninterrupted one. The reference policy (DPO, KL) is the
starting point of the run, rebuilt from its source on resume.
"""
from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np
from earlyrl_jax.data import pipeline
from earlyrl_jax.models.transformer import abstract_model
from earlyrl_jax.sampling.sampler import Sampler
from earlyrl_jax.teacher.rewriter import group_advantages  # GRPO's, shared with the rewriter
from earlyrl_jax.train import loop
from earlyrl_jax.train.objectives import ROW_FIELDS, Objective

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


def _prefixed(rows: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  return {prefix + k: v for k, v in rows.items()}


class SIPProducer:
  """Builds one SIP batch per call from the window stream, the policy's params and the teacher."""

  def __init__(self, run: loop.Run, objective: Objective, judge, rewriter, window_iter):
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
    self._t_last = None
    self.lm_target = self.s.get("lm_target", "window")
    if self.lm_target == "rewrite" and not self.with_rewrite:
      raise ValueError("sip.lm_target='rewrite' needs a rewrite (sip.rewrite='online' or 'precomputed')")
    if self.with_rewrite and rewriter is None:
      raise ValueError(f"sip.rewrite={self.s.rewrite!r} needs a rewriter (the teacher's, or the "
                       "precomputed shards of mode='rewrite')")
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
    originals = [w["suffix"][g, :w["suffix_len"][g]] for g in range(G)]
    prefix_text, suffix_text = list(w["prefix_text"]), list(w["suffix_text"])
    references, missing = self._references(w)
    key = jax.random.fold_in(jax.random.key(self.cfg.seed), step)

    t_rw = time.monotonic()
    rewrite_text, rewrite_ids = [], []
    if self.with_rewrite:  # the teacher ('online') or a look-up in the shards ('precomputed')
      rewrite_text = self.rewriter.rewrite(prefix_text, suffix_text,
                                           key=jax.random.fold_in(key, 1), temperature=0.0)
      rewrite_ids = [np.asarray(self.tok.encode_continuation(t), np.int32)[:self.cand_len]
                     for t in rewrite_text]
      rewrite_ids = copies_as_originals(rewrite_text, suffix_text, rewrite_ids, originals, self.cand_len)
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

    batch = self._rows(prefixes, originals, cand_ids, j)
    stats.update(self._stats(j, G))
    if missing is not None:
      stats["sip/reference_missing_frac"] = missing
    stats.update({"sip/judge_calls": float(j.calls),  # judged rows: both orders + pointwise
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
                        tie_rng=tie_rng(self.cfg.seed, step),
                        empty_loses=bool(self.s.get("empty_loses", False)))

  def _rows(self, prefixes, originals, cand_ids, j) -> dict[str, np.ndarray]:
    G, pad = len(prefixes), self.tok.pad_id
    # The LM term (sip.lm_target): the whole window, its original suffix given the prefix, or the
    # teacher's rewrite given the prefix (what rewrite_nll trains on).
    if self.lm_target == "window":
      docs = [np.concatenate([p, o]) for p, o in zip(prefixes, originals)]
      lm = candidate_rows([d[:1] for d in docs], [d[1:] for d in docs], self.row_len, pad)
    else:
      lm = candidate_rows(prefixes, [c[1] if self.lm_target == "rewrite" else o
                                     for c, o in zip(cand_ids, originals)], self.row_len, pad)
    batch = _prefixed(lm, "lm_")
    recipe = self.objective.recipe
    if recipe == "dpo":
      batch.update(_prefixed(candidate_rows(prefixes, [cand_ids[g][j.chosen[g]] for g in range(G)],
                                            self.row_len, pad), "chosen_"))
      batch.update(_prefixed(candidate_rows(prefixes, [cand_ids[g][j.rejected[g]] for g in range(G)],
                                            self.row_len, pad), "rejected_"))
      batch["pair_mask"] = (~j.all_tied & (j.chosen != j.rejected)).astype(np.float32)
    elif recipe == "rf_nll":
      best = j.chosen.copy()
      weight = np.ones((G,), np.float32)
      below = rf_filtered(j, float(self.s.rf_threshold)) if self.judge is not None else np.zeros((G,), bool)
      if self.s.rf_fallback == "original":
        best = np.where(below, 0, best)
      else:  # 'skip'
        weight = np.where(below, 0.0, 1.0).astype(np.float32)
      batch.update(_prefixed(candidate_rows(prefixes, [cand_ids[g][best[g]] for g in range(G)],
                                            self.row_len, pad), "best_"))
      batch["best_weight"] = weight
    else:
      flat_p = [prefixes[g] for g in range(G) for _ in range(self.C)]
      flat_c = [c for g in range(G) for c in cand_ids[g]]
      batch.update(_prefixed(candidate_rows(flat_p, flat_c, self.row_len, pad), "cand_"))
      batch["advantage"] = group_advantages(j.rewards).reshape(-1).astype(np.float32)
      batch["is_rollout"] = np.tile(np.array([s == "rollout" for s in self.sources()], np.float32), G)
    return batch

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
    adv = group_advantages(j.rewards)
    out["pg/advantage_mean"] = float(adv.mean())
    out["pg/advantage_std"] = float(adv.std())
    out["pg/advantage_abs_max"] = float(np.abs(adv).max())
    return out


def copies_as_originals(rewrite_text, suffix_text, rewrite_ids, originals, cand_len: int) -> list[np.ndarray]:
  """A rewrite that copies the original suffix (up to surrounding whitespace, which the editor
  strips) is the original: the tournament makes them one player, and training on it uses the
  window's own ids, not a re-encoding of its text (which can differ: a first word glued to the
  prefix). Ties between the two then change nothing that is trained."""
  return [originals[g][:cand_len] if r.strip() == o.strip() else ids
          for g, (r, o, ids) in enumerate(zip(rewrite_text, suffix_text, rewrite_ids))]


def tie_rng(seed: int, step: int) -> np.random.Generator:
  """The generator that draws among a step's tied candidates (teacher/tournament.py): a function of
  the run's seed and the step only, so a resumed run draws what an uninterrupted one did."""
  return np.random.default_rng((int(seed), int(step), 0x7135))


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


def batch_spec(producer: SIPProducer, global_windows: int) -> dict[str, jax.ShapeDtypeStruct]:
  """Global shapes of one SIP batch (host-local rows x process count)."""
  G, L, C = global_windows, producer.row_len, producer.C
  spec = {}

  def rows(prefix, n):
    for f in ROW_FIELDS:
      spec[prefix + f] = jax.ShapeDtypeStruct((n, L), np.float32 if f == "loss_mask" else np.int32)

  rows("lm_", G)
  recipe = producer.objective.recipe
  if recipe == "dpo":
    rows("chosen_", G)
    rows("rejected_", G)
    spec["pair_mask"] = jax.ShapeDtypeStruct((G,), np.float32)
  elif recipe == "rf_nll":
    rows("best_", G)
    spec["best_weight"] = jax.ShapeDtypeStruct((G,), np.float32)
  else:
    rows("cand_", G * C)
    spec["advantage"] = jax.ShapeDtypeStruct((G * C,), np.float32)
    spec["is_rollout"] = jax.ShapeDtypeStruct((G * C,), np.float32)
  return spec


def objective_from_config(s) -> Objective:
  return Objective(recipe=s.recipe, beta=float(s.beta), lm_coef=float(s.lm_coef), coef=float(s.coef),
                   kl_coef=float(s.kl_coef))


def judged_texts(cand_text: list[list[str]]) -> list[list[str]]:
  """Candidates as the judge sees them with `sip.judge_trim`: each up to its last sentence end.

  The window cuts the original suffix after N tokens, mid-sentence, and a rollout is cut at
  the same N unless it ended its document first. A judge that penalises a cut-off sentence
  (the oracles halve quality for it, and the embedded teacher learns that) then prefers
  every rollout that stopped early to the real continuation, and DPO teaches the policy to
  stop early. The cut is the window's, not the writer's, so every candidate is judged on its
  complete sentences (a candidate without one is judged as it is); training still uses the
  whole candidate."""
  from earlyrl_jax.teacher.editor import trim_to_sentence_end
  return [[trim_to_sentence_end(t) or t for t in texts] for texts in cand_text]


def build_judge(cfg, run: loop.Run, teacher):
  """The configured judge: the teacher's LM judge, the world's oracles (ground truth), or none;
  with `sip.oracle_axes`, the teacher's judge with those axes judged by the oracles."""
  from earlyrl_jax.teacher.judge import AxisJudges, OracleJudge
  if cfg.sip.judge == "none":
    return None
  oracle = lambda: OracleJudge.from_world_dir(loop.world_dir_of(cfg, run.workdir))
  if cfg.sip.judge == "oracle":
    return oracle()
  from earlyrl_jax import configs
  axes = configs.oracle_axes(cfg)
  return AxisJudges(teacher.judge(), dict.fromkeys(axes, oracle())) if axes else teacher.judge()


def reference_tree(run: loop.Run, state) -> tuple[Any, Any, Any]:
  """The frozen reference (graphdef, params, shardings): a copy of the starting policy."""
  params = jax.tree.map(lambda x: x.copy(), state.params)
  return run.graphdef, params, run.shardings.params


def sip_job(run: loop.Run, teacher, rewrite_memo: dict[str, str] | None = None) -> loop.Job:
  cfg, d = run.cfg, run.cfg.data
  objective = objective_from_config(cfg.sip)
  host_windows = d.batch_size // jax.process_count()
  windows = iter(pipeline.make_window_dataset(
      d, run.tokenizer, host_batch_size=host_windows, seed=cfg.seed,
      process_index=jax.process_index(), process_count=jax.process_count(), files=run.train_files))
  judge = build_judge(cfg, run, teacher)
  from earlyrl_jax.rewrite_job import sip_rewriter  # the teacher, precomputed shards, or none
  rewriter = sip_rewriter(run, teacher, rewrite_memo)
  producer = SIPProducer(run, objective, judge, rewriter, windows)
  frozen = {}
  if objective.needs_reference:
    start = loop.initial_state(run, seed=cfg.seed, params_from=loop.params_from(cfg))
    frozen["reference"] = reference_tree(run, start)
  keys = ("loss", "nll", objective.recipe, "rewards/accuracy", "sip/win_share_rollout",
          "sip/win_share_original", "sip/win_share_rewrite")
  return loop.Job(name=f"sip ({objective.recipe})", batch_spec=batch_spec(producer, d.batch_size),
                  next_batch=producer, data_iter=windows, loss_fn=objective, coefs=objective.coefs,
                  frozen=frozen, evaluate=loop.world_eval_during(run), at_end=loop.world_eval_at_end(run),
                  console_keys=keys)


def teacher_config(cfg):
  """The embedded teacher's config (`teacher.config`), on the run's world.

  It trains on its own config's `mesh` (before SIP starts, so every device is free) and is
  then loaded where `teacher.placement` puts it (`load_teacher_for`).
  """
  from earlyrl_jax import configs
  path = cfg.teacher.config
  if not os.path.isabs(path) and not os.path.exists(path):
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "configs", path)
  if not os.path.exists(path):
    raise configs.ConfigError(f"teacher.config: {cfg.teacher.config!r} not found")
  tcfg = configs.load_config_file(path)
  tcfg.world = cfg.world
  return tcfg


def teacher_mesh(cfg, policy_mesh):
  """Where the teacher runs (`teacher.placement`).

  'shared': on the policy's mesh; judging and rewriting take turns with the update.
  'submesh': on its own devices (`teacher.devices`, laid out by `teacher.mesh`), the ones
  `loop.setup` left out of the policy's mesh, so the teacher's work can run while the
  policy's update is in flight. Candidates cross as host text, so no array ever moves
  between the two meshes.
  """
  from earlyrl_jax import configs
  from earlyrl_jax.parallel import mesh as mesh_lib
  _, devices = mesh_lib.placement_devices(cfg.get("teacher"))
  if devices is None:
    return policy_mesh
  try:
    return mesh_lib.make_mesh(mesh_lib.teacher_mesh_shape(cfg.teacher), devices)
  except mesh_lib.MeshConfigError as e:
    raise configs.ConfigError(f"teacher.mesh: {e}") from None


def _check_teacher_fits(path: str, mesh, field: str) -> None:
  """The teacher's shape splits over `mesh` (checked before its weights are read)."""
  from earlyrl_jax import configs
  from earlyrl_jax.teacher.teacher import read_teacher_config
  meta = read_teacher_config(path)
  try:
    if meta is not None:
      from earlyrl_jax.models.transformer import ModelConfig
      mc = ModelConfig(**meta["model"])
    else:
      from earlyrl_jax.models import hf_io
      mc = hf_io.model_config_from_hf(hf_io.read_hf_config(path))
  except Exception:  # unreadable here: load_teacher names the problem
    return
  bad = configs.model_mesh_mismatch(mc, fsdp=mesh.shape["fsdp"], tensor=mesh.shape["tensor"])
  if bad is not None:
    name, value, axis, size = bad
    raise configs.ConfigError(f"{field}.{axis}={size}: the teacher in {path} has {name}={value}, "
                              f"not divisible by it")


def teacher_workdir(cfg, workdir: str) -> str:
  """Where the embedded teacher is trained and reused: `teacher.workdir`, or WORKDIR/teacher_run."""
  return cfg.teacher.workdir or os.path.join(workdir, "teacher_run")


def load_teacher_for(cfg, workdir: str, mesh):
  """The configured teacher: `teacher.path`, or the embedded teacher (trained once, then reused).

  `mesh` is the policy's; under teacher.placement='submesh' the teacher gets its own.
  """
  from earlyrl_jax.teacher.teacher import load_teacher
  tmesh = teacher_mesh(cfg, mesh)
  field = "mesh" if tmesh is mesh else "teacher.mesh"
  if cfg.teacher.path:
    path = cfg.teacher.path
  else:
    from earlyrl_jax.teacher import train_teacher
    tdir = teacher_workdir(cfg, workdir)
    train_teacher.run(teacher_config(cfg), tdir)  # trains once; reused while its config is unchanged
    path = os.path.join(tdir, "teacher")
  _check_teacher_fits(path, tmesh, field)
  teacher = load_teacher(path, mesh=tmesh)
  if tmesh is not mesh:
    loop.log(f"teacher on its own sub-mesh {dict(tmesh.shape)} ({tmesh.devices.size} devices); "
             f"policy mesh {dict(mesh.shape)} ({mesh.devices.size} devices)")
  return teacher


def run(cfg, workdir: str, *, rewrite_memo: dict[str, str] | None = None) -> dict[str, Any]:
  """`mode='sip'`: self-improving pretraining (runs or resumes).

  rewrite_memo: greedy rewrites by window, shared by runs over the same windows (the report)."""
  r = loop.setup(cfg, workdir)  # the policy's mesh: every device, or those the teacher leaves
  needs_teacher = cfg.sip.judge == "teacher" or cfg.sip.rewrite == "online"
  teacher = load_teacher_for(cfg, workdir, r.mesh) if needs_teacher else None
  return loop.train_loop(r, sip_job(r, teacher, rewrite_memo))
