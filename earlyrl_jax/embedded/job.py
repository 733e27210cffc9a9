"""mode='teacher': train the embedded teacher on the synthetic world, save it, report on held-out pairs.

  python -m earlyrl_jax.main --config=configs/teacher_tiny.py --workdir=DIR

Stages (each a job of the shared loop, `training.py`: progress lines, metrics.jsonl, checkpoints):
  1. tokenizer   SentencePiece on clean world documents + prompt markup; every marker one token
  2. pretrain    next-token loss on CLEAN world documents (the teacher stands for a strong,
                 post-trained model: it should know the world's facts)
  3. sft         judge supervision (scored: each candidate's quality / factuality verdict with the
                 oracles' graded score as a soft label; or pairwise in both orders), safety
                 pointwise, adversarial candidates carrying instructions aimed at the judge, and
                 edit supervision; loss on verdict tokens, beside rehearsed pretraining rows
                 (with the claims verdict, two noisy policies are trained first: `policy`)
  4. grpo        the rewriter's RL: K rewrites per input, rewards from the teacher's own judge,
                 group-normalised advantages, KL to the post-SFT model
  5. report      WORKDIR/teacher_report.{json,md} on held-out documents never trained on

The result lives in WORKDIR/teacher/ and is reused (not retrained) while the hash of the
teacher's config (and prompt version) is unchanged. The stages run in
WORKDIR/teacher_train/<config hash>/<stage>/: a job killed mid-way resumes each stage from its
newest checkpoint (the tokenizer is kept), and a finished stage is not run again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import time

import jax

from earlyrl_jax import configs
from earlyrl_jax import world as W
from earlyrl_jax.embedded import recipe as R
from earlyrl_jax.embedded.data import (TRAIN_INJECTIONS, clean_docs, fact_sheets, lm_rows, make_pairs,
                                       make_rewrites, pack_examples, sft_examples, train_tokenizer,
                                       with_rehearsal)
from earlyrl_jax.embedded.report import build_heldout, log_report, report
from earlyrl_jax.embedded.training import claim_rollout_texts, grpo, lm_stage, noisy_policies
from earlyrl_jax.parallel import mesh as mesh_lib
from earlyrl_jax.teacher import teacher as T
from earlyrl_jax.teacher.prompts import markup as P
from earlyrl_jax.teacher.prompts.markup_ids import PromptEncoder
from earlyrl_jax.teacher.prompts.text import PromptLimits

STAGES_DIR = "teacher_train"   # WORKDIR/teacher_train/<config hash>/<stage>


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def config_hash(cfg) -> str:
  """Hash of everything that determines the teacher's weights (model, world, teacher section
  but its `inference` settings, prompts)."""
  teacher = {k: v for k, v in cfg.teacher.to_dict().items() if k != "inference"}
  # The teacher learns from clean documents: the corpus's misconceptions (world.myth_*) are
  # not in them, so they do not change its weights (its held-out report, whose noisy policies
  # read the corpus, is then the one measured beside the world it was first trained with).
  # Unless its claims verdict learns from rollouts of policies trained on that corpus.
  learns_rollouts = bool(cfg.teacher.sft.get("claim_rollouts", 0)) and bool(cfg.teacher.policy.steps)
  world = {k: v for k, v in cfg.world.to_dict().items() if learns_rollouts or not k.startswith("myth_")}
  blob = json.dumps({"model": cfg.model.to_dict(), "world": world,
                     "teacher": teacher, "opt": cfg.opt.to_dict(), "seed": cfg.seed,
                     "prompts": P.PROMPT_VERSION, "limits": dataclasses.asdict(_limits(cfg))},
                    sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def inference_settings(cfg) -> dict:
  """`teacher.inference` as a plain dict (recipe.INFERENCE_DEFAULTS where unset), checked."""
  sec = cfg.teacher.get("inference")
  try:
    return R.inference_settings(sec.to_dict() if sec is not None else None)
  except ValueError as e:
    raise configs.ConfigError(f"teacher.inference: {e}") from None


def _limits(cfg) -> PromptLimits:
  t = cfg.teacher
  return PromptLimits(prefix_chars=t.prefix_chars, candidate_chars=t.candidate_chars,
                      reference_chars=t.reference_chars)


def stages_dir(workdir: str, config_hash_: str) -> str:
  """Where the stages of the teacher with this config hash run (and resume)."""
  return os.path.join(workdir, STAGES_DIR, config_hash_)


def _policies(cfg, kb, tokenizer, mesh, stages: str) -> list:
  return noisy_policies(cfg, kb, tokenizer, mesh, os.path.join(stages, "policy")) if cfg.teacher.policy.steps else []


def run(cfg, workdir: str) -> dict:
  """Trains (or reuses) the embedded teacher in WORKDIR/teacher and writes the held-out report."""
  t_start = time.time()
  tc = cfg.teacher
  os.makedirs(workdir, exist_ok=True)
  out_dir = os.path.join(workdir, "teacher")
  h = config_hash(cfg)
  stages = stages_dir(workdir, h)
  mesh = mesh_lib.mesh_from_config(cfg.mesh)
  kb = W.build_kb(cfg.world)
  oracles = W.Oracles(kb)
  inference = inference_settings(cfg)
  meta = T.read_teacher_config(out_dir)
  if meta is not None and meta.get("config_hash") == h:
    _log(f"teacher: reusing {out_dir} (config hash {h} unchanged)")
    if meta.get("inference") != inference:   # new settings: recorded with the teacher (report below)
      _log(f"teacher: inference settings now {inference} (were {meta.get('inference')})")
      T.write_teacher_config(out_dir, {**meta, "inference": inference})
    teacher = T.load_teacher(out_dir, mesh=mesh)
    rep_path = os.path.join(workdir, "teacher_report.json")
    if os.path.exists(rep_path):   # reused only when measured with these settings
      with open(rep_path) as f:
        cached = json.load(f)
      if cached.get("inference") == inference:
        return {"teacher": teacher, "report": cached, "reused": True}
    heldout = build_heldout(cfg, kb, oracles, teacher.tokenizer, mesh,
                            _policies(cfg, kb, teacher.tokenizer, mesh, stages))
    res = report(cfg, workdir, teacher, oracles, heldout,
                 {"config_hash": h, "reused": True, "train_seconds": meta.get("train_seconds", 0.0),
                  "sft_counts": meta.get("sft_counts", {})})
    log_report(res, workdir)
    return {"teacher": teacher, "report": res, "reused": True}

  from flax import nnx
  from earlyrl_jax.data.tokenizer import SentencePieceTokenizer
  from earlyrl_jax.models.transformer import Transformer
  timings = {}
  os.makedirs(stages, exist_ok=True)
  model_cfg = configs.model_config(cfg)
  limits = _limits(cfg)
  rng = random.Random(cfg.seed)

  # 1. tokenizer (kept in the stages' directory: resumed stages were trained with it)
  t0 = time.time()
  pre_docs = clean_docs(kb, cfg.world, "teacher-pretrain", tc.pretrain.num_documents)
  sup_docs = clean_docs(kb, cfg.world, "teacher-supervision", tc.sft.num_documents)
  tok_path = os.path.join(stages, T.TOKENIZER_FILE)
  if not os.path.exists(tok_path):
    markup = [P.pair_prompt("p", "a", "b", ax, "r", limits) for ax in ("quality", "factuality")]
    markup += [P.score_prompt("p", "c", ax, "r", limits) for ax in ("quality", "factuality")]
    markup += [P.point_prompt("p", "c", "safety", limits), P.rewrite_prompt("p", "s", limits) + " x " + P.REWRITE_CLOSE,
               P.edit_head("p", limits) + P.edit_tail(["a. ", "b."], limits) + P.VERDICT_KEEP + P.VERDICT_DROP]
    markup += [f"{x} {inj}" for x in ("a", "b") for inj in TRAIN_INJECTIONS]
    train_tokenizer([d.text for d in pre_docs[:tc.tokenizer_documents]] + markup * 20, tok_path,
                    tc.tokenizer_vocab_size)
  tokenizer = SentencePieceTokenizer(tok_path)
  if tokenizer.vocab_size > model_cfg.vocab_size:
    raise configs.ConfigError(f"model.vocab_size={model_cfg.vocab_size} < tokenizer vocabulary "
                              f"{tokenizer.vocab_size} (teacher.tokenizer_vocab_size)")
  timings["tokenizer_s"] = time.time() - t0
  _log(f"teacher: tokenizer {tokenizer.vocab_size} pieces ({timings['tokenizer_s']:.1f}s); "
       f"model {model_cfg.num_params() / 1e6:.2f}M params, max_seq_len {model_cfg.max_seq_len}; "
       f"stages in {stages}")

  # 2. pretraining on clean documents
  t0 = time.time()
  graphdef, params = nnx.split(Transformer(model_cfg, rngs=nnx.Rngs(cfg.seed)))
  sheets = fact_sheets(kb, tc.pretrain.fact_sheets, random.Random(cfg.seed + 5))
  pre_rows = lm_rows(tokenizer, [d.text for d in pre_docs] + sheets, tc.pretrain.seq_len)
  params, _ = lm_stage(cfg, "pretrain", os.path.join(stages, "pretrain"), params, model_cfg, mesh, tokenizer,
                       pre_rows, steps=tc.pretrain.steps, lr=tc.pretrain.learning_rate,
                       batch_size=tc.pretrain.batch_size, seed=cfg.seed, log_every=tc.log_every_steps)
  timings["pretrain_s"] = time.time() - t0

  # 3. SFT on judge + rewrite supervision (+ the claims verdict on noisy policies' rollouts)
  t0 = time.time()
  enc = PromptEncoder(tokenizer, max_len=model_cfg.max_seq_len, limits=limits)
  half = int(len(sup_docs) * tc.sft.judge_share)
  policies, claim_texts = None, []
  n_rollouts = int(tc.sft.get("claim_rollouts", 0))
  if n_rollouts and tc.policy.steps:
    policies = _policies(cfg, kb, tokenizer, mesh, stages)
    claim_texts = claim_rollout_texts(cfg, sup_docs[:n_rollouts], policies, tokenizer)
    timings["claim_rollouts_s"] = time.time() - t0
    _log(f"teacher/sft: {len(claim_texts)} policy rollouts for the claims verdict "
         f"({timings['claim_rollouts_s']:.1f}s)")
  pairs = make_pairs(kb, oracles, sup_docs[:half], rng, max_sentences=tc.max_suffix_sentences,
                     false_fact_share=tc.sft.false_fact_share, cut_share=tc.sft.cut_share,
                     minimal_share=tc.sft.minimal_share)
  rewrites = make_rewrites(kb, sup_docs[half:], rng, max_sentences=tc.max_suffix_sentences,
                           max_chars=tc.candidate_chars)
  examples, counts = sft_examples(enc, oracles, pairs, rewrites, tc, rng, claim_texts)
  rows = with_rehearsal(pack_examples(examples, model_cfg.max_seq_len, rng), pre_rows,
                        tc.sft.lm_rows_share, tc.sft.lm_weight, rng)
  _log(f"teacher/sft: {len(examples)} examples {counts} packed into {rows['tokens'].shape[0]} rows "
       f"({time.time() - t0:.1f}s)")
  params, _ = lm_stage(cfg, "sft", os.path.join(stages, "sft"), params, model_cfg, mesh, tokenizer, rows,
                       steps=tc.sft.steps, lr=tc.sft.learning_rate, batch_size=tc.sft.batch_size,
                       seed=cfg.seed + 1, log_every=tc.log_every_steps)
  timings["sft_s"] = time.time() - t0

  # 4. rewriter GRPO
  t0 = time.time()
  info = {"judge_format": tc.judge_format}
  teacher = T.Teacher(graphdef, params, tokenizer, model_cfg, mesh, limits, info)
  params, grpo_stats = grpo(cfg, teacher, rewrites, mesh, os.path.join(stages, "grpo"))
  info = {**info, "inference": inference}   # GRPO trained the verdicts alone; use adds these
  teacher = T.Teacher(graphdef, params, tokenizer, model_cfg, mesh, limits, info)
  timings["grpo_s"] = time.time() - t0
  train_s = time.time() - t_start
  if os.path.exists(os.path.join(out_dir, T.CONFIG_FILE)):   # another config's teacher: gone first,
    os.remove(os.path.join(out_dir, T.CONFIG_FILE))          # so a half-written one is never loaded
  os.makedirs(out_dir, exist_ok=True)
  shutil.copy(tok_path, os.path.join(out_dir, T.TOKENIZER_FILE))
  T.save_teacher(out_dir, teacher, h, {"train_seconds": train_s, "sft_counts": counts, **info, **timings})
  _log(f"teacher: saved to {out_dir} (config hash {h}) after {train_s:.0f}s")

  # 5. report on held-out documents (policies trained here on the noisy corpus)
  t0 = time.time()
  if policies is None:
    policies = _policies(cfg, kb, tokenizer, mesh, stages)
  heldout = build_heldout(cfg, kb, oracles, tokenizer, mesh, policies)
  timings["heldout_s"] = time.time() - t0
  res = report(cfg, workdir, teacher, oracles, heldout,
               {"config_hash": h, "train_seconds": train_s, "timings": timings, "sft_counts": counts,
                **grpo_stats})
  log_report(res, workdir)
  _log(f"teacher: total {time.time() - t_start:.0f}s")
  return {"teacher": teacher, "report": res, "reused": False}
