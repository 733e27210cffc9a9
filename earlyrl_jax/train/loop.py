"""The pretraining loop: data -> sharded step -> metrics, checkpoints, resume.

Never blocks the device on the hot path: step N is dispatched before step N-1's
scalars are fetched. Those scalars are checked every step; a NaN or inf loss (or
gradient norm) stops the run naming the step, and no checkpoint is ever written
from a state that has not been checked, so the newest checkpoint is always good.
SIGTERM (preemption) saves a checkpoint and exits cleanly.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from typing import Any

import jax
import numpy as np

from earlyrl_jax import configs
from earlyrl_jax.data import pipeline, tokenizer as tok_lib
from earlyrl_jax.parallel import mesh as mesh_lib
from earlyrl_jax.train import metrics as metrics_lib
from earlyrl_jax.train import state as state_lib
from earlyrl_jax.train import steps as steps_lib
from earlyrl_jax.train.checkpoint import Checkpointer


class NonFiniteLossError(FloatingPointError):
  """Training produced NaN/inf; the message names the step and the last good checkpoint."""


def _is_main() -> bool:
  return jax.process_index() == 0


def _log(msg: str) -> None:
  if _is_main():
    print(msg, flush=True)


def resolve_corpus(cfg, workdir: str) -> tuple[str, str]:
  """(train globs, eval globs) for `data.corpus`; generates the synthetic world if needed."""
  d = cfg.data
  if d.corpus == "files":
    return d.train_files, d.eval_files
  from earlyrl_jax.data import world
  world_dir = os.path.join(workdir, "world")
  if _is_main() and not os.path.exists(os.path.join(world_dir, world.MANIFEST)):
    t0 = time.time()
    manifest = world.write_world(cfg.world, world_dir)
    _log(f"wrote the synthetic world to {world_dir}: {manifest['num_train_documents']} train "
         f"documents in {time.time() - t0:.1f}s")
  _sync("world")
  return (d.train_files or os.path.join(world_dir, world.TRAIN_GLOB),
          d.eval_files or os.path.join(world_dir, world.EVAL_DOCS))


def resolve_tokenizer(cfg, workdir: str, train_files: str) -> tok_lib.Tokenizer:
  """Loads `data.tokenizer`; trains a SentencePiece model into WORKDIR when no path is given."""
  d = cfg.data
  if d.tokenizer != "sentencepiece" or d.tokenizer_path:
    return tok_lib.load_tokenizer(d.tokenizer, d.tokenizer_path, vocab_size=cfg.model.vocab_size)
  path = os.path.join(workdir, "tokenizer.model")
  if _is_main() and not os.path.exists(path):
    from earlyrl_jax.data import sources
    t0 = time.time()
    src = sources.make_source(d.format, train_files, text_field=d.text_field, text_split=d.text_split)
    opts = sources.ParseOptions(text_field=d.text_field, on_error="skip")
    tmp = os.path.join(workdir, "tokenizer.tmp")
    tok_lib.train_sentencepiece(tok_lib.iter_texts(src, src.kind, opts, limit=20_000), tmp,
                                d.tokenizer_vocab_size)
    os.replace(tmp + ".model", path)
    os.replace(tmp + ".vocab", os.path.join(workdir, "tokenizer.vocab"))
    _log(f"trained a {d.tokenizer_vocab_size}-piece SentencePiece tokenizer -> {path} "
         f"({time.time() - t0:.1f}s)")
  _sync("tokenizer")
  return tok_lib.SentencePieceTokenizer(path)


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between steps."""

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. some notebook runners)
      self._old = None
    return self

  def _handle(self, *_):
    self.requested = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def _check_finite(step: int, scalars: dict[str, float], ckpt: Checkpointer) -> None:
  bad = {k: v for k, v in scalars.items() if k in ("loss", "grad_norm") and not math.isfinite(v)}
  if bad:
    ckpt.wait()
    last = ckpt.latest_step()
    where = f"step {last} in {ckpt.directory}" if last is not None else "none written yet"
    raise NonFiniteLossError(
        f"non-finite values at step {step}: {bad}. Training stopped; last good checkpoint: "
        f"{where}. Lower opt.learning_rate, enable opt.grad_clip, or inspect the data near "
        "this step.")


def evaluate(eval_step, params, eval_ds, *, num_batches: int, mesh) -> dict[str, float]:
  """Mean held-out NLL per token over the first `num_batches` packed batches of `eval_ds`."""
  total, count = 0.0, 0.0
  it = iter(eval_ds)  # a fresh iterator: every evaluation sees the same batches
  for _ in range(num_batches):
    batch = next(it)
    batch.pop("stats")
    s, c = jax.device_get(eval_step(params, mesh_lib.shard_batch(batch, mesh)))
    total, count = total + float(s), count + float(c)
  loss = total / max(count, 1.0)
  return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 50.0))}


def train(cfg, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) `mode='pretrain'`. Returns the final state and last metrics."""
  configs.validate(cfg)
  os.makedirs(workdir, exist_ok=True)
  if _is_main():
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(cfg.to_json_best_effort(indent=2))

  mesh = mesh_lib.mesh_from_config(cfg.mesh)
  train_files, eval_files = resolve_corpus(cfg, workdir)
  tokenizer = resolve_tokenizer(cfg, workdir, train_files)
  model_cfg = configs.model_config(cfg)
  if tokenizer.vocab_size > model_cfg.vocab_size:
    raise configs.ConfigError(
        f"model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's vocabulary "
        f"({tokenizer.vocab_size})")

  d = cfg.data
  seq_len, global_batch = d.seq_len, d.batch_size
  host_batch = global_batch // jax.process_count()
  tx = state_lib.make_optimizer(cfg.opt, cfg.num_steps)
  schedule = state_lib.lr_schedule(cfg.opt, cfg.num_steps)
  graphdef, abs_state, shardings = state_lib.abstract_train_state(model_cfg, tx, mesh)

  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.checkpoint.keep,
                      every_steps=cfg.checkpoint.every_steps, async_save=cfg.checkpoint.async_save)
  train_ds = pipeline.make_lm_dataset(d, tokenizer, seq_len=seq_len, host_batch_size=host_batch,
                                      seed=cfg.seed, process_index=jax.process_index(),
                                      process_count=jax.process_count(), files=train_files)
  data_iter = iter(train_ds)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if ckpt.latest_step() is not None:
    t0 = time.time()
    state, start = ckpt.restore(abs_state, data_iter)
    if _is_main():
      moved = metrics_lib.roll_back_jsonl(metrics_path, start)
      _log(f"resumed from step {start} ({time.time() - t0:.1f}s)"
           + (f"; {moved} metric records past it moved to metrics.rolled_back.jsonl" if moved else ""))
  else:
    _, state, _ = state_lib.init_train_state(model_cfg, tx, mesh, cfg.seed)
    start = 0
  n_params = model_cfg.num_params()
  _log(f"model: {n_params / 1e6:.2f}M params | mesh {dict(mesh.shape)} | batch {global_batch} x "
       f"{seq_len} tokens | vocab {tokenizer.vocab_size}")

  batch_spec = {"tokens": (global_batch, seq_len), "targets": (global_batch, seq_len),
                "segment_ids": (global_batch, seq_len), "positions": (global_batch, seq_len),
                "loss_mask": (global_batch, seq_len)}
  step_fn = steps_lib.make_train_step(graphdef, tx, schedule, mesh, shardings, batch_spec,
                                      grad_accum_steps=cfg.opt.grad_accum_steps, z_loss=cfg.opt.z_loss)
  dtypes = {"loss_mask": np.float32}
  abs_batch = {k: jax.ShapeDtypeStruct(s, dtypes.get(k, np.int32)) for k, s in batch_spec.items()}
  t0 = time.time()
  with jax.set_mesh(mesh):
    compiled = step_fn.lower(abs_state, abs_batch).compile()
  mem = _memory_summary(compiled)
  _log(f"compiled train step in {time.time() - t0:.1f}s{mem}")
  eval_step = eval_ds = None
  if cfg.eval_every_steps and eval_files:
    eval_step = steps_lib.make_eval_step(graphdef, mesh, shardings.params, batch_spec)
    eval_ds = pipeline.make_lm_dataset(d, tokenizer, seq_len=seq_len, host_batch_size=host_batch,
                                       seed=0, process_index=jax.process_index(),
                                       process_count=jax.process_count(), files=eval_files,
                                       field="data.eval_files", shuffle=False)

  logger = metrics_lib.MetricsLogger(workdir, is_main=_is_main(), num_steps=cfg.num_steps,
                                     every_steps=cfg.log_every_steps)
  progress = metrics_lib.Progress(cfg.num_steps, start)
  pending = None  # (step, device metrics, data stats) awaiting the finite check
  last: dict[str, float] = {}

  def settle(item):
    """Fetches a finished step's scalars, checks them, logs at the log interval."""
    nonlocal last
    step, dev_metrics, stats = item
    scalars = {k: float(v) for k, v in jax.device_get(dev_metrics).items()}
    _check_finite(step, scalars, ckpt)
    progress.add_tokens(scalars["tokens"])
    last = scalars
    if step % cfg.log_every_steps == 0 or step == cfg.num_steps:
      out = dict(scalars)
      out.update({f"data/{k}": float(v) for k, v in stats.items()})
      out.update(progress.report(step, scalars) if _is_main() else {})
      logger.write(step, out)

  try:
    with _Preemption() as preempt, jax.set_mesh(mesh):
      for step in range(start, cfg.num_steps):
        batch = next(data_iter)
        stats = batch.pop("stats")
        state, dev_metrics = compiled(state, mesh_lib.shard_batch(batch, mesh))
        if pending is not None:
          settle(pending)
        pending = (step + 1, dev_metrics, stats)
        logger.tick(step + 1)
        done = step + 1 == cfg.num_steps
        if (step + 1) % cfg.checkpoint.every_steps == 0 or done or preempt.requested:
          settle(pending)
          pending = None
          ckpt.save(step + 1, state, data_iter, force=True)
        if eval_step is not None and ((step + 1) % cfg.eval_every_steps == 0 or done):
          ev = evaluate(eval_step, state.params, eval_ds, num_batches=cfg.eval_batches, mesh=mesh)
          logger.write(step + 1, ev)
          _log(f"step {step + 1}: eval loss {ev['eval/loss']:.4f} "
               f"(perplexity {ev['eval/perplexity']:.2f})")
          last.update(ev)
        if preempt.requested:
          _log(f"SIGTERM: saved step {step + 1}, exiting")
          break
      if pending is not None:
        settle(pending)
      if d.corpus == "world" and cfg.eval_world_prompts and int(state.step) == cfg.num_steps:
        last.update(_world_eval(cfg, workdir, graphdef, state.params, tokenizer, mesh, logger))
  finally:
    ckpt.close()
    logger.close()
  return {"state": state, "graphdef": graphdef, "metrics": last, "tokenizer": tokenizer,
          "model_config": model_cfg, "mesh": mesh}


def _world_eval(cfg, workdir, graphdef, params, tokenizer, mesh, logger) -> dict[str, float]:
  """Samples continuations of held-out world prompts and scores them with the oracles."""
  from flax import nnx
  from earlyrl_jax.eval.evaluate import world_eval
  t0 = time.time()
  res = world_eval(nnx.merge(graphdef, params), tokenizer, os.path.join(workdir, "world"),
                   num_prompts=cfg.eval_world_prompts, key=jax.random.key(cfg.seed), mesh=mesh)
  example = res.pop("example")
  logger.write(cfg.num_steps, res)
  _log(f"world eval ({time.time() - t0:.1f}s): " + ", ".join(f"{k[6:]} {v:.3f}" for k, v in res.items()))
  if example:
    _log(f"  prefix: ...{example['prefix'][-120:]!r}\n  model:  {example['continuation'][:200]!r}")
  return res


def _memory_summary(compiled) -> str:
  try:
    m = compiled.memory_analysis()
    if m is None:
      return ""
    total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)
    return f" (memory per device: {total / 2**20:.1f} MiB, temp {m.temp_size_in_bytes / 2**20:.1f} MiB)"
  except Exception:  # not every backend implements it
    return ""


def load_params(workdir: str, mesh=None, step: int | None = None):
  """(graphdef, params, ModelConfig) of a pretraining checkpoint, shape from WORKDIR/config.json."""
  import ml_collections
  with open(os.path.join(workdir, "config.json")) as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  model_cfg = configs.model_config(cfg)
  mesh = mesh or mesh_lib.single_device_mesh()
  tx = state_lib.make_optimizer(cfg.opt, cfg.num_steps)
  graphdef, abs_state, _ = state_lib.abstract_train_state(model_cfg, tx, mesh)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    state, _ = ckpt.restore(abs_state, step=step)
  finally:
    ckpt.close()
  return graphdef, state.params, model_cfg
