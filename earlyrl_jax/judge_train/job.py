"""mode='judge_train': train an HF instruct model as the paper's judge; write a judge directory.

  python -m earlyrl_jax.main --config=configs/judge_train.py --workdir=DIR \
      --config.judge_train.teacher_path=MODEL_DIR

1. data      judge_train.data (JSONL, judge_train/data.py), or the world's training pairs
             exported to WORKDIR/judge_data/train.jsonl with judge_train.label_noise; held-out
             items: judge_train.heldout, or the world's validation pairs (clean labels)
2. before    held-out agreement per axis of the untrained model (judge_agreement_before.json)
   hybrid    judge_train.human_budget > 0: that many items keep their human labels, the rest
             are labelled by judge_train.ai_labels' judge or left out (hybrid.py)
3. train     judge_train.method 'sft' (sft.py), 'grpo' (grpo.py) or 'bt' (bradley_terry.py:
             a scalar reward head on the backbone), a Job of the shared loop in
             WORKDIR/judge_train/: progress lines with ETA, metrics.jsonl, checkpoints; a killed
             run resumes from its newest checkpoint, a finished one is not trained again
4. write     judge_train.out_dir (default WORKDIR/judge): safetensors + config.json + the
             tokenizer's files (chat template included) + judge_train.json, renamed into place
             whole, so `teacher.path` never sees half a judge
5. after     held-out agreement per axis of the trained judge; WORKDIR/judge_agreement.json
             holds both and the training's first / last mean reward or loss
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time

import ml_collections

from earlyrl_jax import configs
from earlyrl_jax.errors import ConfigError
from earlyrl_jax.judge_train import agreement as A
from earlyrl_jax.judge_train import data as D
from earlyrl_jax.judge_train import examples as E
from earlyrl_jax.judge_train.settings import (METHODS, VARIANTS, JudgeTrainConfig,  # noqa: F401
                                              judge_train_config, section)

DATA_DIR = "judge_data"
STAGE_DIR = "judge_train"
BEFORE_FILE = "judge_agreement_before.json"
RESULT_FILE = "judge_agreement.json"
META_FILE = "judge_train.json"


def check_teacher_path(path: str) -> None:
  """An HF model directory; the embedded teacher is refused with what is supported."""
  field = "judge_train.teacher_path"
  if not path:
    raise ConfigError(f"{field}: is empty; give the HF model directory to train as judge "
                      "(config.json + *.safetensors + tokenizer files, e.g. what `earlyrl-convert gguf` writes)")
  if os.path.isfile(os.path.join(path, "teacher_config.json")):
    raise ConfigError(
        f"{field}: {path} is an embedded teacher; judge training supports HF model directories "
        "(Llama-family: config.json + *.safetensors + tokenizer) in the paper's formats. The "
        "embedded teacher learns its own judge in mode='teacher' (teacher.sft, markup verdicts); "
        "to train it here, export its weights as an HF directory first.")
  configs.check_model_dir(path, field, teacher=True)


def _log(msg: str) -> None:
  print(msg, flush=True)


# ----------------------------------------------------------------------------------- data


def ensure_world(cfg, workdir: str) -> str:
  """The world directory (written from `cfg.world` when missing; checked against it when not)."""
  from earlyrl_jax import world as W
  from earlyrl_jax.train import loop
  world_dir = loop.world_dir_of(cfg, workdir)
  manifest = os.path.join(world_dir, W.MANIFEST)
  if not os.path.exists(manifest):
    t0 = time.time()
    W.write_world(cfg.world, world_dir)
    _log(f"judge_train: wrote the synthetic world to {world_dir} ({time.time() - t0:.1f}s)")
  loop.check_world_matches(cfg.world, manifest)
  return world_dir


def load_data(cfg, jc: JudgeTrainConfig, workdir: str) -> tuple[list, list, dict]:
  """(training items with label noise, held-out items, counts)."""
  data_dir = os.path.join(workdir, DATA_DIR)
  info = {}
  world_dir = None
  if not jc.data or not jc.heldout:
    world_dir = ensure_world(cfg, workdir)
  if jc.data:
    train, flipped = D.add_label_noise(D.read_items(jc.data, field="judge_train.data"),
                                       jc.label_noise, cfg.seed)
    info["train_source"] = jc.data
  else:
    path = os.path.join(data_dir, "train.jsonl")
    res = D.export_world(world_dir, path, split="train", label_noise=jc.label_noise,
                         seed=cfg.seed, limit=jc.world_pairs)
    train, flipped = D.read_items(path), res["flipped"]
    info["train_source"] = path
  if jc.heldout:
    heldout = D.read_items(jc.heldout, field="judge_train.heldout")
    info["heldout_source"] = jc.heldout
  else:
    path = os.path.join(data_dir, "validation.jsonl")
    D.export_world(world_dir, path, split="validation")   # clean labels: the oracles' truth
    heldout = D.read_items(path)
    info["heldout_source"] = path
  info.update(train_items=len(train), labels_flipped=flipped, train_labels=D.label_counts(train),
              heldout_items=len(heldout))
  return train, heldout, info


# ----------------------------------------------------------------------------------- the run


def _judge(backend, jc: JudgeTrainConfig, kind: str):
  from earlyrl_jax.teacher.prompts.paper import Budgets
  from earlyrl_jax.teacher.teacher import paper_judge
  budgets = Budgets(prefix_tokens=jc.prefix_tokens)
  return paper_judge(kind, backend, budgets=budgets, max_new_tokens=jc.max_new_tokens)


def fitting(items, prompts, variant: str) -> tuple[list, int]:
  """(the items all of whose prompts fit the judge's context with their candidates whole, how
  many were left out): a judge never sees a cut candidate, so neither does its training."""
  kept = []
  for it in items:
    try:
      for ex in E.examples_of([it]):
        ex.prompt(prompts, variant)
    except ValueError:
      continue
    kept.append(it)
  return kept, len(items) - len(kept)


def _eval_axes(jc: JudgeTrainConfig) -> tuple[str, ...]:
  axes = jc.axis_list()
  return tuple(a for a in A.ALL if a in axes or (a == "safety_point" and "safety" in axes))


def run(cfg, workdir: str) -> dict:
  """Trains (or resumes, or returns) the judge; returns judge_agreement.json's content."""
  import jax
  from earlyrl_jax.embedded.training import stage_run, starting_from
  from earlyrl_jax.parallel import mesh as mesh_lib
  from earlyrl_jax.teacher import teacher as T
  from earlyrl_jax.teacher.backends.inprocess import InProcessBackend
  from earlyrl_jax.train import loop
  from earlyrl_jax.train import state as state_lib

  jc = judge_train_config(cfg)
  check_teacher_path(jc.teacher_path)
  if jc.ai_labels not in ("none", "self"):
    configs.check_model_dir(jc.ai_labels, "judge_train.ai_labels", teacher=True)
  os.makedirs(workdir, exist_ok=True)
  out_dir = jc.out_dir or os.path.join(workdir, "judge")
  result_path = os.path.join(workdir, RESULT_FILE)
  if os.path.isfile(result_path):
    with open(result_path) as f:
      done = json.load(f)
    if done.get("config") == dataclasses.asdict(jc) and os.path.isfile(os.path.join(out_dir, META_FILE)):
      _log(f"judge_train: already complete in {workdir} (judge in {out_dir}); nothing to do")
      return done
  t_start = time.time()
  mesh = mesh_lib.single_device_mesh()
  teacher = T.load_teacher(jc.teacher_path, mesh=mesh, max_len=jc.max_len)
  if teacher.source != "hf":
    raise ConfigError(f"judge_train.teacher_path: {jc.teacher_path} did not load as an HF model")
  train, heldout, info = load_data(cfg, jc, workdir)
  backend = InProcessBackend.from_teacher(teacher, max_len=jc.max_len)
  axes = jc.axis_list()
  if jc.human_budget:
    train, hybrid_info = _hybrid(train, jc, backend, teacher, cfg.seed)
    info["hybrid"] = hybrid_info
    info["train_items"] = len(train)
    _log(f"judge_train: {hybrid_info['human_items']} items keep their human labels, "
         f"{hybrid_info['ai_items']} labelled by judge_train.ai_labels={jc.ai_labels!r}, "
         f"{hybrid_info['unlabelled_left_out']} left out")
  bt = None
  if jc.method == "bt":
    from earlyrl_jax.judge_train import bradley_terry as BT
    bt = _bt_setup(jc, teacher, mesh, cfg.seed)
    eval_judge = bt["judge"]
    train, dropped = _bt_fitting(train, teacher.tokenizer, jc)
    heldout, dropped_heldout = _bt_fitting(heldout, teacher.tokenizer, jc)
  else:
    eval_judge = _judge(backend, jc, jc.eval_variant)
    variant = jc.variant if jc.method == "sft" else "generative"
    train_prompts = _judge(backend, jc, variant).prompts
    train, dropped = fitting(train, train_prompts, variant)
    heldout, dropped_heldout = fitting(heldout, eval_judge.prompts, jc.eval_variant)
  info.update(train_items=len(train), heldout_items=len(heldout), train_items_too_long=dropped,
              heldout_items_too_long=dropped_heldout)
  if dropped or dropped_heldout:
    _log(f"judge_train: {dropped} training and {dropped_heldout} held-out items left out: their "
         f"prompts do not fit judge_train.max_len={jc.max_len} with the candidates whole")
  exs = E.examples_of(train, axes) if bt is None else BT.comparisons(train, axes)
  _log(f"judge_train: {jc.method} on {len(exs)} {'verdict examples' if bt is None else 'comparisons'} from {info['train_items']} items "
       f"({info['labels_flipped']} labels flipped by label_noise={jc.label_noise}); held out "
       f"{info['heldout_items']} items; model {teacher.model_cfg.num_params() / 1e6:.1f}M params")
  eval_axes = _eval_axes(jc)
  measured_by = "bt head" if bt is not None else jc.eval_variant

  def agreement(params) -> dict:
    if bt is not None:
      eval_judge.params = params
    else:
      backend.params = params
    return A.heldout_agreement(eval_judge, heldout, axes=eval_axes, limit=jc.heldout_items)

  before_path = os.path.join(workdir, BEFORE_FILE)
  key = {"teacher_path": jc.teacher_path, "heldout": info["heldout_source"], "axes": list(eval_axes),
         "limit": jc.heldout_items, "eval_variant": jc.eval_variant, "max_len": jc.max_len,
         "prefix_tokens": jc.prefix_tokens}
  if bt is not None:
    key.update(scorer="bt_head", seed=cfg.seed)   # the untrained head is the seed's
  before = None
  if os.path.isfile(before_path):
    with open(before_path) as f:
      saved = json.load(f)
    before = saved["agreement"] if saved.get("key") == key else None
  if before is None:
    t0 = time.time()
    before = agreement(bt["params"] if bt is not None else teacher.params)
    _write_json(before_path, {"key": key, "agreement": before})
    _log(f"judge_train: held-out agreement before ({measured_by}, {time.time() - t0:.0f}s): "
         f"{A.summary(before)}")
  else:
    _log(f"judge_train: held-out agreement before (saved): {A.summary(before)}")

  # ---- the training stage through the shared loop
  opt = ml_collections.ConfigDict(dict(
      learning_rate=jc.learning_rate, warmup_steps=min(jc.warmup_steps, max(jc.steps - 1, 0)),
      min_lr_ratio=jc.min_lr_ratio, b1=0.9, b2=0.95, eps=1e-8, weight_decay=jc.weight_decay,
      grad_clip=jc.grad_clip, grad_accum_steps=1))
  tx, schedule = state_lib.make_optimizer(opt, jc.steps), state_lib.lr_schedule(opt, jc.steps)
  stage_cfg = ml_collections.ConfigDict({"checkpoint": {"every_steps": jc.checkpoint_every, "keep": 2,
                                                        "async_save": True}})
  stage_dir = os.path.join(workdir, STAGE_DIR)
  run_ = stage_run(stage_cfg, stage_dir, model_cfg=teacher.model_cfg, tokenizer=teacher.tokenizer,
                   mesh=mesh, tx=tx, schedule=schedule, steps=jc.steps, seed=cfg.seed,
                   log_every=jc.log_every, opt=opt)
  run_.cfg.eval_every_steps = jc.eval_every
  start_params = teacher.params
  if jc.method == "bt":
    graphdef, abs_state, shardings = BT.abstract_state(teacher.model_cfg, len(axes), tx, mesh)
    run_ = dataclasses.replace(run_, graphdef=graphdef, abs_state=abs_state, shardings=shardings)
    batches = BT.BtBatches(teacher.tokenizer, train, axes, prefix_tokens=jc.prefix_tokens,
                           batch_size=jc.batch_size, steps=jc.steps, seed=cfg.seed)
    loss_fn, coefs, keys = BT.bt_terms, {"bt": 1.0}, ("loss", "bt/ranked_right")
    start_params = bt["params"]
  elif jc.method == "sft":
    from earlyrl_jax.judge_train.sft import SftBatches, verdict_nll_terms
    batches = SftBatches(teacher.tokenizer, train_prompts, exs, variant=jc.variant,
                         batch_size=jc.batch_size, steps=jc.steps, seed=cfg.seed)
    loss_fn, coefs, keys = verdict_nll_terms, {"nll": 1.0}, ("loss", "verdict/answer_logp")
  else:
    from earlyrl_jax.judge_train.grpo import GrpoBatches, pg_terms
    batches = GrpoBatches(backend, train_prompts, exs, batch_size=jc.batch_size,
                          samples_per_prompt=jc.samples_per_prompt, steps=jc.steps, seed=cfg.seed,
                          max_new_tokens=jc.max_new_tokens, temperature=jc.temperature, top_p=jc.top_p)
    loss_fn, coefs, keys = pg_terms, {"pg": 1.0}, ("loss", "grpo/reward", "grpo/parsed")

  def evaluate(state, step):
    del step
    return {f"heldout/{k}": v["agreement"] for k, v in agreement(state.params).items()}

  job = loop.Job(name=f"judge_train/{jc.method}", batch_spec=batches.batch_spec(), next_batch=batches,
                 data_iter=None, loss_fn=loss_fn, coefs=coefs, evaluate=evaluate if jc.eval_every else None,
                 console_keys=keys, start_state=starting_from(start_params, cfg.seed))
  out = loop.train_loop(run_, job)
  if out["preempted"]:   # a stop signal: its checkpoint is saved; main.py exits 75 (requeue)
    return {"preempted": True, "step": int(out["state"].step)}
  params = out["state"].params

  # ---- the judge directory, then its held-out agreement
  meta = {"prompt_version": _prompt_version(), "method": jc.method,
          "variant": {"sft": jc.variant, "grpo": "generative"}.get(jc.method), "steps": jc.steps,
          "source": jc.teacher_path, "label_noise": jc.label_noise, "axes": axes,
          "data": {k: v for k, v in info.items()}}
  if bt is not None:
    meta["head"] = BT.HEAD_FILE
    write_judge_dir(out_dir, teacher, params["backbone"], meta,
                    extra=lambda d: BT.save_head(d, params, axes))
  else:
    write_judge_dir(out_dir, teacher, params, meta)
  t0 = time.time()
  after = agreement(params)
  _log(f"judge_train: held-out agreement after ({measured_by}, {time.time() - t0:.0f}s): "
       f"{A.summary(after)}")
  trace = _logged(os.path.join(stage_dir, "metrics.jsonl"), "grpo/reward" if jc.method == "grpo" else "loss")

  result = {"config": dataclasses.asdict(jc), "judge_dir": out_dir, "before": before, "after": after,
            "gain": {k: after[k]["agreement"] - before[k]["agreement"] for k in after if k in before},
            "train": {"first": trace[0] if trace else None, "last": trace[-1] if trace else None,
                      "metric": "grpo/reward" if jc.method == "grpo" else "loss"},
            "data": info, "seconds": time.time() - t_start, "seed": cfg.seed,
            "devices": str(jax.devices()[0].platform)}
  _write_json(result_path, result)
  _log(f"judge_train: wrote {out_dir} and {result_path}")
  return result


def _hybrid(train, jc: JudgeTrainConfig, backend, teacher, seed: int) -> tuple[list, dict]:
  """The training items under judge_train.human_budget / ai_labels (hybrid.py)."""
  from earlyrl_jax.judge_train import hybrid as H
  judge = None
  if jc.ai_labels == "self":
    backend.params = teacher.params   # the model being trained, before training
    judge = _judge(backend, jc, "logprob")
  elif jc.ai_labels != "none":
    from earlyrl_jax.judge_train import bradley_terry as BT
    from earlyrl_jax.teacher import teacher as T
    from earlyrl_jax.teacher.backends.inprocess import InProcessBackend
    if os.path.isfile(os.path.join(jc.ai_labels, BT.HEAD_FILE)):
      judge = BT.load_reward_model(jc.ai_labels, max_len=jc.max_len, prefix_tokens=jc.prefix_tokens)
    else:
      other = T.load_teacher(jc.ai_labels, max_len=jc.max_len)
      judge = _judge(InProcessBackend.from_teacher(other, max_len=jc.max_len), jc, "logprob")
  t0 = time.time()
  items, info = H.hybrid_items(train, budget=jc.human_budget, ai_labels=jc.ai_labels, judge=judge,
                               axes=jc.axis_list(), seed=seed)
  if info["ai_items"]:
    _log(f"judge_train: AI labels on {info['ai_items']} items ({time.time() - t0:.0f}s), agreement "
         f"with the human labels they replace: {A.summary(info['ai_agreement_with_human'])}")
  return items, info


def _bt_setup(jc: JudgeTrainConfig, teacher, mesh, seed: int) -> dict:
  """{'params': the RewardModel's start (the teacher's backbone, a seeded head), 'judge'}."""
  from flax import nnx
  from earlyrl_jax.judge_train import bradley_terry as BT
  model = BT.reward_model(nnx.merge(teacher.graphdef, teacher.params), jc.axis_list(), seed)
  graphdef, params = nnx.split(model)
  judge = BT.RewardJudge(graphdef, params, teacher.tokenizer, jc.axis_list(),
                         prefix_tokens=jc.prefix_tokens, batch_size=jc.batch_size)
  return {"params": params, "judge": judge}


def _bt_fitting(items, tokenizer, jc: JudgeTrainConfig) -> tuple[list, int]:
  """`fitting` for the reward model: every candidate whole within max_len after the prefix."""
  from earlyrl_jax.judge_train import bradley_terry as BT
  kept = [it for it in items if BT.fits(tokenizer, it, jc.prefix_tokens, jc.max_len)]
  return kept, len(items) - len(kept)


def _prompt_version() -> str:
  from earlyrl_jax.teacher.prompts.paper import PROMPT_VERSION
  return PROMPT_VERSION


def write_judge_dir(out_dir: str, teacher, params, meta: dict, extra=None) -> None:
  """An HF directory (safetensors, config.json, the tokenizer's files with its chat template,
  judge_train.json) written beside `out_dir` and renamed into place whole."""
  from flax import nnx
  from earlyrl_jax.data.tokenizer import save_tokenizer_files
  from earlyrl_jax.models import hf_io
  out_dir = os.path.abspath(out_dir)
  tmp = out_dir + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  # teacher.graphdef carries the source's own shape (its full context), not the capped max_len
  hf_io.save_pretrained(nnx.merge(teacher.graphdef, params), tmp, teacher.tokenizer)
  save_tokenizer_files(teacher.tokenizer, tmp)
  _write_json(os.path.join(tmp, META_FILE), meta)
  if extra is not None:   # files written into the directory before it is renamed into place
    extra(tmp)
  if os.path.isdir(out_dir):
    shutil.rmtree(out_dir)
  os.replace(tmp, out_dir)


def _write_json(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def _logged(path: str, key: str) -> list[float]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [r[key] for r in map(json.loads, f) if key in r]
